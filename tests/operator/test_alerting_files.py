"""The shipped alerting files: ``docs/prometheus/alerts.yml`` passes ``promtool check rules``
and its unit tests (``docs/prometheus/alerts.test.yml``), and every metric the rules and the
Grafana dashboard (``docs/grafana/services.json``) use is in a real ``svc metrics`` scrape,
so that renaming a metric cannot silently blank a panel or mute an alert."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.registry import Registry
from services.state import StateStore
from tests.cluster import REPO
from tests.operator.conftest import Svc

RULES = REPO / "docs" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "docs" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "docs" / "grafana" / "services.json"
ALERTING_DOC = REPO / "docs" / "alerting.md"
# The alerts the issue asks for; the file may have more.
REQUIRED_ALERTS = {"ServiceStopped", "ServiceOverdue", "ServiceFailing", "ServiceNoWorker",
                   "NoBeatLeader", "NoWorkersAlive", "MetricsCannotReadRedis",
                   "ServiceMetricsAbsent"}
# Alerts about the cluster or the exporter, without a service label.
CLUSTER_ALERTS = {"NoBeatLeader", "NoWorkersAlive", "ServiceStateLost", "MetricsCannotReadRedis",
                  "ServiceMetricsAbsent"}

# -- PromQL: which metric names an expression reads -----------------------------------------

# Words that stand where a metric name could but are not one (functions and aggregations are
# recognised by the parenthesis that follows them instead).
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on",
                      "ignoring", "group_left", "group_right", "inf", "nan", "atan2"})
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGE = re.compile(r"\[[^\[\]]*\]")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not inside a number or duration (1e3, 5m) and not part of a longer name.
IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: not functions, keywords, label names in
    matchers or ``by (...)`` clauses, strings, durations, numbers or Grafana variables."""
    text = GRAFANA_VARIABLE.sub("", expr)
    text = STRING.sub('""', text)
    text = MATCHERS.sub("", text)
    text = RANGE.sub("", text)
    text = GROUPING.sub("", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        word = match.group(1)
        follows = text[match.end():].lstrip()[:1]
        if word.lower() in KEYWORDS or follows == "(":
            continue
        names.add(word)
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: each panel's targets (panels inside rows
    too) and each query variable (``label_values(metric, label)``)."""
    found = [target["expr"] for panel in _panels(dashboard.get("panels", []))
             for target in panel.get("targets", []) if target.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        if variable.get("type") == "query" and query:
            inner = LABEL_VALUES.match(query)
            found.append(inner.group(1) if inner else query)
    return found


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def rule_exprs(rules: dict[str, Any]) -> dict[str, str]:
    """alert (or recorded series) -> expression, for every rule of every group."""
    return {rule.get("alert") or rule["record"]: rule["expr"]
            for group in rules["groups"] for rule in group["rules"]}


def exposed_names(text: str) -> set[str]:
    """Every series name a scrape holds or declares: the samples present, and for each
    declared family the names its type makes (a gauge with no sample right now, such as
    svc_tick_lateness_seconds without Beat stats, still exists)."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("", "_sum", "_count"), "info": ("_info",)}
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def unknown_metrics(exprs: list[str], exposed: set[str]) -> dict[str, set[str]]:
    """expression -> the metric names it uses that the scrape does not have."""
    return {expr: missing for expr in exprs if (missing := metric_names(expr) - exposed)}


# -- a real scrape ------------------------------------------------------------------------------


@pytest.fixture
def scrape(svc: Svc, store: StateStore) -> set[str]:
    """Series names of ``svc metrics --once`` against this test's prefix, with ticker
    registered in Redis as a worker registers it."""
    registry = Registry.discover(packages=["tests.svc_celery"], only=["ticker"])
    store.register_services(registry.configs())
    result = svc("metrics", "--once")
    assert result.exit_code == 0, result.output
    names = exposed_names(result.stdout)
    assert "svc_redis_up" in names and 'svc_healthy{service="ticker"}' in result.stdout
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (service, le) (rate(svc_run_duration_seconds_bucket'
            '{service=~"$service", le!="+Inf"}[$__rate_interval] offset 5m)))'
            ' / on(service) group_left(outcome) svc_up:ratio5m and bool 1e3'
            ' or vector(0) unless count without (job) (svc_healthy == 0)')
    assert metric_names(expr) == {"svc_run_duration_seconds_bucket", "svc_up:ratio5m",
                                  "svc_healthy"}
    assert metric_names('absent(svc_redis_up)') == {"svc_redis_up"}
    assert metric_names('{__name__="x"} and time() > 5') == set()


def test_dashboard_uses_only_metrics_that_exist(scrape: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dashboard)
    used = set().union(*map(metric_names, exprs))
    # What the issue asks the dashboard to show.
    assert {"svc_healthy", "svc_overdue_seconds", "svc_failures", "svc_runs_total",
            "svc_run_duration_seconds_bucket", "svc_workers_alive", "svc_beat_leader_up",
            "svc_tick_lateness_seconds"} <= used
    assert unknown_metrics(exprs, scrape) == {}


def test_alert_rules_use_only_metrics_that_exist(scrape: set[str]) -> None:
    exprs = list(rule_exprs(yaml.safe_load(RULES.read_text())).values())
    assert unknown_metrics(exprs, scrape) == {}


def test_checker_catches_a_made_up_metric(scrape: set[str]) -> None:
    bad = {"panels": [
        {"type": "row", "panels": [{"targets": [
            {"expr": 'sum by (service) (rate(svc_runs_totl{service=~"$service"}[5m]))'}]}]},
        {"targets": [{"expr": "svc_healthy == 0"}, {"expr": "svc_run_duration_seconds"}]}],
        "templating": {"list": [{"type": "query",
                                 "query": {"query": "label_values(svc_servics, service)"}}]}}
    # A typo, a histogram without its _bucket suffix, and a variable over a made-up metric.
    assert unknown_metrics(dashboard_exprs(bad), scrape) == {
        'sum by (service) (rate(svc_runs_totl{service=~"$service"}[5m]))': {"svc_runs_totl"},
        "svc_run_duration_seconds": {"svc_run_duration_seconds"},
        "svc_servics": {"svc_servics"}}


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = list(_panels(dashboard["panels"]))
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert panel["targets"], f"{panel['title']} has no query"


def test_rules_name_severity_and_say_what_to_do() -> None:
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"]
             for rule in group["rules"]]
    alerts = {rule["alert"]: rule for rule in rules}
    assert set(alerts) >= REQUIRED_ALERTS
    doc = ALERTING_DOC.read_text()
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert "svc " in rule["annotations"]["description"], f"{name}: no svc command to run"
        if name not in CLUSTER_ALERTS:  # the alert names its service
            assert "{{ $labels.service }}" in rule["annotations"]["summary"], name
        assert f"### {name}" in doc, f"docs/alerting.md has no runbook entry for {name}"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (tests/ensure_promtool.sh installs Debian's "
                    "prometheus package for it; make test runs that): alert rules not checked")
    return subprocess.run([binary, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=False)


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
