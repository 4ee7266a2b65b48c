"""The metrics for alerting: each service's health and the workers and Beats alive, from the
same snapshot as the rest of a scrape (``Operator.snapshot``); and the few lines that write
Prometheus' text format for both modules (:class:`Family`).

Health is :func:`services.health.assess`, the one definition ``svc health``, ``svc list`` and
the notifications use too, so an alert and ``svc health`` never disagree about a service.
The rules in ``docs/prometheus/alerts.yml`` and the dashboard in ``docs/grafana/services.json``
are written against these names; ``tests/operator/test_alerting_files.py`` checks that every
metric they use is in a real scrape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client.utils import floatToGoString

from services.heartbeat import BEAT, WORKER, Liveness

if TYPE_CHECKING:
    from worker.ops_status import ServiceStatus

PREFIX = "svc"


# -- the text format -----------------------------------------------------------------------


def number(value: float) -> str:
    """A sample's value as Prometheus' text format (and prometheus_client) writes it."""
    kind = type(value)  # most samples are flags, counts and whole numbers: said directly
    if kind is bool:
        return "1.0" if value else "0.0"
    if (kind is int or (kind is float and value.is_integer())) and -1e15 < value < 1e6:
        return f"{int(value)}.0"
    return str(floatToGoString(value))


def label(text: str) -> str:
    """A label value, escaped as the text format wants (a service name never needs it)."""
    if "\\" in text or '"' in text or "\n" in text:
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return text


class Family:
    """One metric family's lines: HELP, TYPE, then its samples as added."""

    def __init__(self, name: str, kind: str, doc: str) -> None:
        self.name = name
        self.lines = [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        """A sample; labels are written sorted by name, as prometheus_client writes them."""
        if labels:
            pairs = ",".join(f'{key}="{label(labels[key])}"' for key in sorted(labels))
            self.lines.append(f"{self.name}{suffix}{{{pairs}}} {number(value)}")
        else:
            self.lines.append(f"{self.name}{suffix} {number(value)}")

    def per_service(self, service: str, value: float, suffix: str = "") -> None:
        """The common sample (only a ``service`` label), without the general path's sort."""
        self.lines.append(f'{self.name}{suffix}{{service="{label(service)}"}} {number(value)}')

    def series(self, labels: list[str], values: list[Any], suffix: str = "") -> Family:
        """One sample per service: ``labels`` from :func:`service_labels`, ``values`` in the
        same order (None: no sample for that service)."""
        name = f"{self.name}{suffix}"
        self.lines += [f"{name}{labels_} {number(value)}"
                       for labels_, value in zip(labels, values, strict=True)
                       if value is not None]
        return self


def service_labels(statuses: list[ServiceStatus]) -> list[str]:
    """``{service="<name>"}`` of each service, escaped once for every family."""
    return [f'{{service="{label(status.name)}"}}' for status in statuses]


def gauge(name: str, doc: str) -> Family:
    return Family(f"{PREFIX}_{name}", "gauge", doc)


# -- health and liveness -------------------------------------------------------------------




def health_families(statuses: list[ServiceStatus]) -> list[Family]:
    """``svc_healthy``, ``svc_health_problem``, ``svc_overdue_seconds`` per service."""
    healthy = gauge(
        "healthy",
        "1 when the service is healthy (ok, or paused), 0 when it has a health problem "
        "(svc_health_problem says which; svc health NAME says why).")
    problem = gauge(
        "health_problem",
        "1 for each health problem the service has now (state_lost, corrupt, stopped, "
        "no_beat, no_worker, stuck, overdue, failing); no sample for a problem it does not "
        "have.")
    overdue = gauge(
        "overdue_seconds",
        "How far past its deadline for a successful run (overdue_after_seconds: by default "
        "three intervals, on cron the timeout plus a minute after a slot) the service is; 0 "
        "when it is not overdue.")
    labels = service_labels(statuses)
    healthy.series(labels, [1.0 if status.health.ok else 0.0 for status in statuses])
    for status in statuses:
        # Only problems it has: 8 zero series per service would say nothing an absent one
        # does not, and the rules compare with == 1 either way.
        for code in dict.fromkeys(status.health.codes):
            problem.add(1.0, problem=code, service=status.name)
    overdue.series(labels, [status.health.overdue_seconds for status in statuses])
    return [healthy, problem, overdue]


def liveness_families(statuses: list[ServiceStatus], liveness: Liveness) -> list[Family]:
    """Who is alive: per service the workers that would run its ticks, and the cluster's
    workers, Beats and Beat leader."""
    serving = gauge(
        "service_workers",
        "Live workers that have the service's task and consume its queue (0: its ticks are "
        "not run).")
    serving.series(service_labels(statuses), [
        float(len(liveness.serving(status.name, status.config.queue if status.config else None)))
        for status in statuses])
    workers = gauge("workers_alive", "Workers whose heartbeat is current (svc workers lists "
                    "them).")
    workers.add(float(len(liveness.alive(WORKER))))
    beats = gauge("beats_alive",
                  "Beat processes whose heartbeat is current, the leader and any standbys.")
    beats.add(float(len(liveness.alive(BEAT))))
    leader = gauge("beat_leader_up",
                   "1 when a Beat holds the leader lease, so ticks are sent; 0 when none does.")
    leader.add(1.0 if liveness.beat_leader is not None else 0.0)
    return [serving, workers, beats, leader]
