"""The Celery side: ``celery -A worker worker|beat|flower``, and the ``svc`` command.

``app`` is made on first access so that ``svc`` commands that only read Redis start fast.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from worker.celery_app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
