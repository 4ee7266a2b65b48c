"""Prometheus metrics for every service, read from Redis at scrape time.

A custom collector rather than counters kept in this process: the state lives in Redis and is
written by every worker, so one ``svc metrics`` anywhere sees the whole cluster, and a
restart of it loses nothing.

Counters and the run-duration histogram come from fields that ``finish_run.lua`` increments in
each service's hash as it records a run (one ``HINCRBY`` per field, in the same script, so a
run is counted exactly once and in the same step as its outcome):

- ``runs_<outcome>`` (outcome ``ok`` | ``error`` | ``timeout`` | ``interrupted`` | ``lost``):
  runs finished so far (``lost`` is counted by the guard that finds a dead worker's run);
- ``duration_ms_sum``: their total duration in milliseconds;
- ``duration_le_<ms>`` / ``duration_le_inf``: how many runs took at most ``<ms>`` and more
  than the previous bound (one bucket per run; summed here into Prometheus' cumulative ones).

They cannot be derived from the history list: it is capped (``SVC_HISTORY_LENGTH``), so
counts taken from it would stop rising or even fall, which a counter must never do.

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

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import redis
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from services.errors import ServiceError
from services.fields import (
    DURATION_SUM_MS,
    Outcome,
    ServiceState,
    duration_field,
    parse_count,
    runs_field,
)
from services.heartbeat import Liveness
from worker.metrics_health import health_families, liveness_families
from worker.ops_schedule import BeatView, read_beat

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from worker.ops import Operator
    from worker.ops_status import ServiceStatus

logger = logging.getLogger("svc.metrics")

PREFIX = "svc"
# Upper bounds of the duration buckets, in ms. finish_run.lua holds the same list: a run's
# duration lands in the first bucket whose bound it does not exceed, else in "inf".
DURATION_BUCKETS_MS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                       300000, 900000, 3600000)


class ServiceCollector(Collector):
    """Every known service's state, one pipeline per scrape."""

    def __init__(self, op: Operator) -> None:
        self.op = op

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_redis_up",
                               "1 when the last scrape could read service state from Redis.")
        try:
            self.op.refresh()  # workers may have registered services since the last scrape
            # One round trip for every service's state and health and who is alive; the
            # leader's lateness stats are a second, small one.
            _, statuses, liveness = self.op.snapshot(self.op.known())
            beat = read_beat(self.op.store)
        except (ServiceError, redis.RedisError) as exc:
            # Scrapes go on reporting that Redis is away rather than failing with a 500.
            logger.warning("metrics scrape could not read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._families(statuses)
        yield from health_families(statuses)
        yield from liveness_families(statuses, liveness)
        yield from self._beat(beat, liveness)

    def _families(self, statuses: list[ServiceStatus]) -> Iterator[Metric]:
        labels = ["service"]
        gauges = {
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
        families = {key: GaugeMetricFamily(f"{PREFIX}_{key}", doc, labels=labels)
                    for key, doc in gauges.items()}
        last_success = GaugeMetricFamily(
            f"{PREFIX}_last_success_timestamp_seconds",
            "When the last successful run finished (Unix time).", labels=labels)
        last_finished = GaugeMetricFamily(
            f"{PREFIX}_last_run_timestamp_seconds",
            "When the last run finished, whatever its outcome (Unix time).", labels=labels)
        started = CounterMetricFamily(
            f"{PREFIX}_runs_started", "Runs the guard let start.", labels=labels)
        runs = CounterMetricFamily(
            f"{PREFIX}_runs",
            "Finished runs by outcome (ok, error, timeout, interrupted, lost).",
            labels=[*labels, "outcome"])
        duration = HistogramMetricFamily(
            f"{PREFIX}_run_duration_seconds", "How long update() runs took.", labels=labels)
        next_tick = GaugeMetricFamily(
            f"{PREFIX}_next_tick_timestamp_seconds",
            "When the leader Beat sends the service's next tick (Unix time, from the due set).",
            labels=labels)
        for status in statuses:
            state: ServiceState = status.state
            name = [status.name]
            values = {
                "running": state.running, "paused": state.paused,
                "backing_off": status.condition == "backoff", "failures": state.failures,
                "runs_in_progress": len(status.leases),
                "state_corrupt_fields": len(state.corrupt),
                "held": status.held,
            }
            if status.config is not None:
                values["max_failures"] = status.config.max_failures
                values["interval_seconds"] = status.config.interval_seconds
            for key, value in values.items():
                families[key].add_metric(name, float(value))
            if state.last_success_at is not None:
                last_success.add_metric(name, state.last_success_at)
            if state.last_finished_at is not None:
                last_finished.add_metric(name, state.last_finished_at)
            started.add_metric(name, state.runs)
            raw = status.raw
            for outcome in Outcome:
                runs.add_metric([status.name, outcome], parse_count(raw.get(runs_field(outcome))))
            buckets, total_ms = duration_buckets(raw)
            duration.add_metric(name, buckets, total_ms / 1000)
            if status.next_tick_at is not None:
                next_tick.add_metric(name, status.next_tick_at)
        yield from families.values()
        yield from (last_success, last_finished, started, runs, duration, next_tick)
        loss = next((s.loss for s in statuses if s.loss is not None), None)
        if loss is not None:
            lost = GaugeMetricFamily(
                f"{PREFIX}_state_lost_timestamp_seconds",
                "When a worker found that Redis had lost the framework's data (Unix time).")
            lost.add_metric([], loss.lost_at)
            yield lost

    def _beat(self, beat: BeatView, liveness: Liveness) -> Iterator[Metric]:
        leader = GaugeMetricFamily(f"{PREFIX}_beat_leader",
                                   "1 while a Beat holds the leader lease (sends the ticks).")
        # The lease as the snapshot read it, the same reading as svc_beat_leader_up and the
        # services' no_beat problem (read_beat reads it again a moment later).
        leader.add_metric([], 1.0 if liveness.beat_leader is not None else 0.0)
        yield leader
        lateness = GaugeMetricFamily(
            f"{PREFIX}_tick_lateness_seconds",
            "How late the leader Beat sent ticks over the last minute (due time to send), by "
            "quantile; 1 is the maximum.", labels=["quantile"])
        if not beat.stale:
            for quantile, key in (("0.5", "p50"), ("0.99", "p99"), ("1", "max")):
                seconds = beat.lateness()[key]
                if seconds is not None:
                    lateness.add_metric([quantile], seconds)
        yield lateness


def duration_buckets(raw: dict[str, str]) -> tuple[list[tuple[str, float]], float]:
    """Prometheus' cumulative ``(le, count)`` buckets (seconds) and the sum in ms, from the
    per-bucket counts finish_run.lua keeps."""
    cumulative = 0
    buckets = []
    for bound in DURATION_BUCKETS_MS:
        cumulative += parse_count(raw.get(duration_field(bound)))
        buckets.append((f"{bound / 1000:g}", cumulative))
    cumulative += parse_count(raw.get(duration_field(None)))
    buckets.append(("+Inf", cumulative))
    return buckets, float(parse_count(raw.get(DURATION_SUM_MS)))


def registry_for(op: Operator) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(op))
    return registry


def exposition(op: Operator) -> str:
    """One scrape, as the text Prometheus reads."""
    return generate_latest(registry_for(op)).decode()


def serve(op: Operator, address: str, port: int) -> WSGIServer:
    """Serve ``/metrics`` from a background thread; the caller shuts the server down."""
    server, _thread = start_http_server(port, address, registry=registry_for(op))
    return server
