"""The metrics for alerting: each service's health and the workers and Beats alive, from the
same snapshot as the rest of a scrape (``Operator.snapshot``).

Health is :func:`services.health.assess`, the one definition ``svc health``, ``svc list`` and
the notifications use too, so an alert and ``svc health`` never disagree about a service.
The rules in ``docs/prometheus/alerts.yml`` and the dashboard in ``docs/grafana/services.json``
are written against these names; ``tests/operator/test_alerting_files.py`` checks that every
metric they use is in a real scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

from services.heartbeat import BEAT, WORKER, Liveness

if TYPE_CHECKING:
    from worker.ops_status import ServiceStatus

PREFIX = "svc"  # as worker.metrics.PREFIX (which imports this module)


def health_families(statuses: list[ServiceStatus]) -> Iterator[Metric]:
    """``svc_healthy``, ``svc_health_problem``, ``svc_overdue_seconds`` per service."""
    labels = ["service"]
    healthy = GaugeMetricFamily(
        f"{PREFIX}_healthy",
        "1 when the service is healthy (ok, or paused), 0 when it has a health problem "
        "(svc_health_problem says which; svc health NAME says why).", labels=labels)
    problem = GaugeMetricFamily(
        f"{PREFIX}_health_problem",
        "1 for each health problem the service has now (state_lost, corrupt, stopped, "
        "no_beat, no_worker, stuck, overdue, failing); no sample for a problem it does not "
        "have.", labels=[*labels, "problem"])
    overdue = GaugeMetricFamily(
        f"{PREFIX}_overdue_seconds",
        "How far past its deadline for a successful run (overdue_after_seconds: by default "
        "three intervals, on cron the timeout plus a minute after a slot) the service is; 0 "
        "when it is not overdue.", labels=labels)
    for status in statuses:
        health = status.health
        healthy.add_metric([status.name], 1.0 if health.ok else 0.0)
        # Only problems it has: 8 zero series per service would say nothing an absent one
        # does not, and the rules compare with == 1 either way.
        for code in dict.fromkeys(health.codes):
            problem.add_metric([status.name, code], 1.0)
        overdue.add_metric([status.name], health.overdue_seconds)
    yield from (healthy, problem, overdue)


def liveness_families(statuses: list[ServiceStatus], liveness: Liveness) -> Iterator[Metric]:
    """Who is alive: per service the workers that would run its ticks, and the cluster's
    workers, Beats and Beat leader."""
    serving = GaugeMetricFamily(
        f"{PREFIX}_service_workers",
        "Live workers that have the service's task and consume its queue (0: its ticks are "
        "not run).", labels=["service"])
    for status in statuses:
        queue = status.config.queue if status.config is not None else None
        serving.add_metric([status.name], float(len(liveness.serving(status.name, queue))))
    yield serving
    workers = GaugeMetricFamily(
        f"{PREFIX}_workers_alive",
        "Workers whose heartbeat is current (svc workers lists them).")
    workers.add_metric([], float(len(liveness.alive(WORKER))))
    beats = GaugeMetricFamily(
        f"{PREFIX}_beats_alive",
        "Beat processes whose heartbeat is current, the leader and any standbys.")
    beats.add_metric([], float(len(liveness.alive(BEAT))))
    leader = GaugeMetricFamily(
        f"{PREFIX}_beat_leader_up",
        "1 when a Beat holds the leader lease, so ticks are sent; 0 when none does.")
    leader.add_metric([], 1.0 if liveness.beat_leader is not None else 0.0)
    yield from (workers, beats, leader)
