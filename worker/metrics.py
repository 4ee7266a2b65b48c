"""Prometheus metrics for every service, read from Redis at scrape time.

A custom collector rather than counters kept in this process: the state lives in Redis and is
written by every worker, so one ``svc metrics`` anywhere sees the whole cluster, and a
restart of it loses nothing.

Counters and run durations come from fields that ``finish_run.lua`` increments in each
service's hash as it records a run (read and written back with the run's other fields, in the
same script, so a run is counted exactly once and in the same step as its outcome; a value
that is not a number starts again from this run):

- ``runs_<outcome>`` (outcome ``ok`` | ``error`` | ``timeout`` | ``interrupted`` | ``lost``):
  runs finished so far (``lost`` is counted by the guard that finds a dead worker's run);
- ``duration_ms_sum``: their total duration in milliseconds;
- ``duration_le_<ms>`` / ``duration_le_inf``: how many runs took at most ``<ms>`` and more
  than the previous bound (one bucket per run; summed here into Prometheus' cumulative ones).

They cannot be derived from the history list: it is capped (``SVC_HISTORY_LENGTH``), so
counts taken from it would stop rising or even fall, which a counter must never do.

Every service exports its runs by outcome and ``svc_run_seconds`` (a ``_sum``/``_count``
pair: mean duration); only a service with ``duration_histogram`` set exports the
``svc_run_duration_seconds`` histogram's buckets: 17 series per service, which made a scrape
of 10,000 services 155,000 series of mostly empty buckets.

The text is written here, not by prometheus_client's generate_latest, which spends some
microseconds on each of hundreds of thousands of samples (seconds per scrape at 10,000
services); the format is the same (text 0.0.4, labels sorted, values as Go prints them).

The schedule's numbers come from what the leader Beat keeps in Redis: each service's next
tick from the due set, the leader's lease, and its tick lateness over the last minute from
its stats hash (left out when those stats are stale: a number nobody updates would read as
a healthy Beat).

Health and liveness (``svc_healthy``, ``svc_health_problem``, ``svc_overdue_seconds``,
``svc_service_workers``, ``svc_workers_alive``, ``svc_beats_alive``, ``svc_beat_leader_up``)
come from :mod:`worker.metrics_health`, read in the same round trip as the state
(``Operator.snapshot``), so a scrape never shows a service healthy by one reading and its
workers gone by another.
"""

from __future__ import annotations

import gzip
import logging
import socket
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client.exposition import ThreadingWSGIServer, gzip_accepted

from services.errors import ServiceError
from services.fields import (
    DURATION_SUM_MS,
    Outcome,
    duration_field,
    parse_count,
    runs_field,
)
from services.heartbeat import Liveness
from worker.metrics_health import (
    PREFIX,
    Family,
    gauge,
    health_families,
    label,
    liveness_families,
    number,
    service_labels,
)
from worker.ops_schedule import BeatView, read_beat
from worker.ops_status import collector_paused

if TYPE_CHECKING:
    from worker.ops import Operator
    from worker.ops_status import ServiceStatus

logger = logging.getLogger("svc.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Upper bounds of the duration buckets, in ms. finish_run.lua holds the same list: a run's
# duration lands in the first bucket whose bound it does not exceed, else in "inf".
DURATION_BUCKETS_MS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                       300000, 900000, 3600000)
_BOUNDS = tuple(f"{bound / 1000:g}" for bound in DURATION_BUCKETS_MS)
_BUCKET_FIELDS = tuple(duration_field(bound) for bound in (*DURATION_BUCKETS_MS, None))
_RUNS_FIELDS = tuple((str(outcome), runs_field(outcome)) for outcome in Outcome)


def exposition(op: Operator) -> str:
    """One scrape, as the text Prometheus reads: every known service's state, one pipeline
    per scrape (the leader's lateness stats are a second, small one)."""
    up = gauge("redis_up", "1 when the last scrape could read service state from Redis.")
    with collector_paused():
        try:
            op.refresh()  # workers may have registered services since the last scrape
            _, statuses, liveness = op.snapshot(op.known())
            beat = read_beat(op.store)
        except (ServiceError, redis.RedisError) as exc:
            # Scrapes go on reporting that Redis is away rather than failing with a 500.
            logger.warning("metrics scrape could not read Redis: %s", exc)
            up.add(0)
            return "\n".join(up.lines) + "\n"
        up.add(1)
        # As the workers registered it (as health is read): the cluster's setting, not this
        # machine's environment.
        buckets = {status.name for status in statuses
                   if (config := op.registered_config(status.name) or status.config)
                   is not None and config.duration_histogram}
        families = [up, *service_families(statuses, buckets), *health_families(statuses),
                    *liveness_families(statuses, liveness), *beat_families(beat, liveness)]
        return "\n".join(line for family in families for line in family.lines) + "\n"


GAUGES = {
    "running": "1 unless the service is stopped (by an operator or max_failures).",
    "paused": "1 while the service is paused.",
    "backing_off": "1 while the service waits out retry_delay_seconds after a failure.",
    "failures": "Consecutive failures (the service stops at max_failures).",
    "max_failures": "Consecutive failures that stop the service.",
    "interval_seconds": "How often Beat sends the service a tick.",
    "runs_in_progress": "Runs holding a lease right now.",
    "state_corrupt_fields": "Fields of the service's hash that are unreadable.",
    "held": "1 while Redis lost its data and nobody restored or confirmed the service.",
}


def service_families(statuses: list[ServiceStatus], buckets: set[str]) -> list[Family]:
    """The state, run counts and durations of every service, a family at a time (each one
    column over all services: the per-sample work is a format string); the duration
    histogram's buckets for the services named in ``buckets``."""
    labels = service_labels(statuses)
    states = [status.state for status in statuses]
    configs = [status.config for status in statuses]
    columns: dict[str, list[Any]] = {
        "running": [state.running for state in states],
        "paused": [state.paused for state in states],
        "backing_off": [status.condition == "backoff" for status in statuses],
        "failures": [state.failures for state in states],
        "max_failures": [c.max_failures if c is not None else None for c in configs],
        "interval_seconds": [c.interval_seconds if c is not None else None for c in configs],
        "runs_in_progress": [len(status.leases) for status in statuses],
        "state_corrupt_fields": [len(state.corrupt) for state in states],
        "held": [status.held for status in statuses],
    }
    found = [gauge(key, doc).series(labels, columns[key]) for key, doc in GAUGES.items()]
    found.append(gauge("last_success_timestamp_seconds", "When the last successful run "
                       "finished (Unix time).").series(
        labels, [state.last_success_at for state in states]))
    found.append(gauge("last_run_timestamp_seconds", "When the last run finished, whatever "
                       "its outcome (Unix time).").series(
        labels, [state.last_finished_at for state in states]))
    found.append(Family(f"{PREFIX}_runs_started_total", "counter",
                        "Runs the guard let start.").series(labels, [s.runs for s in states]))
    found.append(runs_family(statuses))
    found.extend(duration_families(statuses, labels, buckets))
    found.append(gauge("next_tick_timestamp_seconds", "When the leader Beat sends the "
                       "service's next tick (Unix time, from the due set).").series(
        labels, [status.next_tick_at for status in statuses]))
    loss = next((s.loss for s in statuses if s.loss is not None), None)
    if loss is not None:
        lost = gauge("state_lost_timestamp_seconds",
                     "When a worker found that Redis had lost the framework's data (Unix time).")
        lost.add(loss.lost_at)
        found.append(lost)
    return found


def runs_family(statuses: list[ServiceStatus]) -> Family:
    runs = Family(f"{PREFIX}_runs_total", "counter",
                  "Finished runs by outcome (ok, error, timeout, interrupted, lost).")
    for status in statuses:
        name = label(status.name)
        runs.lines += [f'{runs.name}{{outcome="{outcome}",service="{name}"}} '
                       f'{number(parse_count(status.raw.get(key)))}'
                       for outcome, key in _RUNS_FIELDS]
    return runs


def duration_families(statuses: list[ServiceStatus], labels: list[str],
                      buckets: set[str]) -> list[Family]:
    """``svc_run_seconds`` (sum and count) for every service; the histogram's buckets only
    for those with ``duration_histogram``."""
    seconds = Family(f"{PREFIX}_run_seconds", "summary",
                     "Time spent in update() runs, and how many were timed: the mean duration "
                     "of every service (svc_run_duration_seconds has buckets for services with "
                     "duration_histogram).")
    histogram = Family(f"{PREFIX}_run_duration_seconds", "histogram",
                       "How long update() runs took (services with duration_histogram only).")
    sums, totals = [], []
    for status in statuses:
        counts = [parse_count(status.raw.get(key)) for key in _BUCKET_FIELDS]
        sums.append(parse_count(status.raw.get(DURATION_SUM_MS)) / 1000)
        totals.append(sum(counts))
        if status.name in buckets:
            histogram_samples(histogram, status.name, counts, sums[-1])
    seconds.series(labels, sums, "_sum").series(labels, totals, "_count")
    return [seconds, histogram]


def histogram_samples(family: Family, name: str, counts: list[int], total_s: float) -> None:
    """Prometheus' cumulative buckets from the per-bucket counts finish_run.lua keeps."""
    cumulative = 0
    for bound, count in zip((*_BOUNDS, "+Inf"), counts, strict=True):
        cumulative += count
        family.add(cumulative, "_bucket", le=bound, service=name)
    family.per_service(name, cumulative, "_count")
    family.per_service(name, total_s, "_sum")


def duration_buckets(raw: dict[str, str]) -> tuple[list[tuple[str, int]], float]:
    """Prometheus' cumulative ``(le, count)`` buckets (seconds) and the sum in ms."""
    cumulative, buckets = 0, []
    for bound, key in zip((*_BOUNDS, "+Inf"), _BUCKET_FIELDS, strict=True):
        cumulative += parse_count(raw.get(key))
        buckets.append((bound, cumulative))
    return buckets, float(parse_count(raw.get(DURATION_SUM_MS)))


def beat_families(beat: BeatView, liveness: Liveness) -> list[Family]:
    leader = gauge("beat_leader", "1 while a Beat holds the leader lease (sends the ticks).")
    # The lease as the snapshot read it, the same reading as svc_beat_leader_up and the
    # services' no_beat problem (read_beat reads it again a moment later).
    leader.add(1.0 if liveness.beat_leader is not None else 0.0)
    lateness = gauge("tick_lateness_seconds",
                     "How late the leader Beat sent ticks over the last minute (due time to "
                     "send), by quantile; 1 is the maximum.")
    if not beat.stale:
        for quantile, key in (("0.5", "p50"), ("0.99", "p99"), ("1", "max")):
            seconds = beat.lateness()[key]
            if seconds is not None:
                lateness.add(seconds, quantile=quantile)
    return [leader, lateness]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the base's name
        """Scrapes are not worth a log line each."""


def serve(op: Operator, address: str, port: int) -> WSGIServer:
    """Serve ``/metrics`` from a background thread; the caller shuts the server down. One
    scrape at a time: a scrape reads every service, and the operator is not shared."""
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics\n"]
        with lock:
            body = exposition(op).encode()
        headers = [("Content-Type", CONTENT_TYPE)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):  # as Prometheus asks
            # The fastest level: 15 MB of 10,000 services' text become 0.75 MB in 20 ms.
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [body]

    # IPv4 or IPv6, as the address says ("::" listens on both where the system allows).
    family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    server: WSGIServer = make_server(address, port, app, server_class, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True, name="svc-metrics").start()
    return server
