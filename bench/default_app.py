"""A plain Celery app on its defaults, the third arm of ``bench/overhead.py``.

    BENCH_BROKER_URL=redis://... BENCH_BROKER_PREFIX=bench-...-broker: \\
        celery -A bench.default_app worker -P prefork -c 2

Nothing of the project is imported or configured: no ``worker.celery_app`` settings, no
signal handlers, no custom task or consumer class. The only things set are the broker (the
bench's, with the bench's broker prefix as kombu's ``global_keyprefix`` so that this worker
never touches another app's queues on a shared Redis) and ``ignore_result=True`` on the one
task, which has no result backend to write to anyway. Celery's defaults already serialize
with JSON. The task's only work is counting itself done (``bench.counters``), exactly what
the raw task of ``bench.raw_tasks`` and the no-op service's ``update()`` do, in a counter
field of its own.

So ``raw / default`` in the bench is what the project's Celery settings cost a task before
any wrapper, and ``wrapped / default`` what a service costs against a stock Celery task.
"""

from __future__ import annotations

import os

from celery import Celery

from bench import counters

_url = os.environ.get("BENCH_BROKER_URL")
_prefix = os.environ.get("BENCH_BROKER_PREFIX")
if not _url or not _prefix:
    # Without a prefix this worker would consume the shared Redis's own "celery" queue.
    raise SystemExit("bench.default_app: set BENCH_BROKER_URL and BENCH_BROKER_PREFIX")

app = Celery("default", broker=_url, broker_transport_options={"global_keyprefix": _prefix})


@app.task(ignore_result=True)
def noop() -> None:
    counters.bump(counters.DEFAULT)


assert noop.name == counters.DEFAULT_TASK, noop.name
