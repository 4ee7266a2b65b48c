"""A service's numbers and name (class attribute < constructor argument < environment), their
validation, and the registry that discovers SVC_*.py modules and survives bad ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from services.config import resolve_config, snake_case
from services.errors import ServiceConfigError, UnknownServiceError
from services.keys import Keys, validate_name
from services.registry import Registry
from services.schedule import from_registration
from services.settings import get_settings, service_env_var, service_overrides
from services.state import StateStore
from tests.fixtures.services import Recorder

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

BAD_VALUES = [
    ("interval_seconds", 0),
    ("interval_seconds", -1),
    ("interval_seconds", -0.5),
    ("interval_seconds", float("nan")),
    ("max_failures", 0),
    ("max_failures", -3),
    ("max_failures", 1.5),
    ("max_failures", True),
    ("retry_delay_seconds", -0.1),
    ("retry_delay_seconds", -30),
]
BAD_ENV_VALUES = [
    ("interval_seconds", "0"),
    ("interval_seconds", "-2"),
    ("interval_seconds", "abc"),
    ("interval_seconds", ""),
    ("max_failures", "0"),
    ("max_failures", "two"),
    ("max_failures", "1.5"),
    ("retry_delay_seconds", "-1"),
    ("retry_delay_seconds", "soon"),
]


def error_text(info: pytest.ExceptionInfo[BaseException]) -> str:
    return str(info.value)


# -- numbers: every bad value, from every source ------------------------------------------------


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_class_attribute_names_service_and_field(field: str, value: object,
                                                     store: StateStore) -> None:
    cls = type("BadAttr", (Recorder,), {"name": "bad_attr", field: value})
    with pytest.raises(ServiceConfigError) as info:
        cls(state=store)
    message = error_text(info)
    assert "'bad_attr'" in message and field in message
    assert f"BadAttr.{field}" in message, "says where the value came from"


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_constructor_argument_names_service_and_field(field: str, value: object,
                                                          store: StateStore) -> None:
    with pytest.raises(ServiceConfigError) as info:
        Recorder(state=store, name="bad_arg", **{field: value})
    message = error_text(info)
    assert "'bad_arg'" in message and field in message and "argument" in message


@pytest.mark.parametrize(("field", "value"), BAD_ENV_VALUES)
def test_bad_environment_override_names_service_field_and_variable(
        field: str, value: str, store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    var = f"SVC_BAD_ENV_{field.upper()}"
    with pytest.raises(ServiceConfigError) as info:
        Recorder(state=store, name="bad_env", environ={var: value})
    message = error_text(info)
    assert "'bad_env'" in message and field in message and var in message
    # the process environment is read when no environ is given
    monkeypatch.setenv(var, value)
    with pytest.raises(ServiceConfigError, match=var):
        Recorder(state=store, name="bad_env")


def test_environment_overrides_argument_overrides_class(store: StateStore) -> None:
    assert Recorder(state=store, name="layers").interval_seconds == Recorder.interval_seconds
    assert Recorder(state=store, name="layers", interval_seconds=4).interval_seconds == 4
    env = {"SVC_LAYERS_INTERVAL_SECONDS": "2.5", "SVC_LAYERS_MAX_FAILURES": "9",
           "SVC_LAYERS_RETRY_DELAY_SECONDS": "0"}
    service = Recorder(state=store, name="layers", interval_seconds=4, max_failures=2,
                       environ=env)
    assert (service.interval_seconds, service.max_failures, service.retry_delay_seconds) == (
        2.5, 9, 0.0)
    assert isinstance(service.max_failures, int)
    # overrides for another service do not leak
    other = Recorder(state=store, name="layers2", environ=env)
    assert other.interval_seconds == Recorder.interval_seconds


def test_edge_values_that_are_allowed(store: StateStore) -> None:
    service = Recorder(state=store, name="edges", interval_seconds=0.1, max_failures=1,
                       retry_delay_seconds=0)
    assert (service.interval_seconds, service.max_failures, service.retry_delay_seconds) == (
        0.1, 1, 0)


def test_override_variable_names() -> None:
    assert service_env_var("report_mailer", "interval_seconds") == (
        "SVC_REPORT_MAILER_INTERVAL_SECONDS")
    assert service_env_var("custom.name-1", "max_failures") == "SVC_CUSTOM_NAME_1_MAX_FAILURES"


# -- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "0", "report_mailer", "x.y-z_1", "9lives"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


def test_empty_name_is_invalid_and_means_unset_in_the_constructor(store: StateStore) -> None:
    with pytest.raises(ValueError, match="pattern"):
        validate_name("")
    assert Recorder(state=store, name="").name == "recorder"


@pytest.mark.parametrize("name", [
    "A", "Outbox", "_x", "-x", ".x", "a b", "a:b", "a*", "x/y", "ä", "abc\n", "a\nb",
    "{a}", "a}"])
def test_invalid_names_are_refused_everywhere(name: str, store: StateStore) -> None:
    with pytest.raises(ValueError, match="pattern"):
        validate_name(name)
    with pytest.raises(ServiceConfigError) as info:
        Recorder(state=store, name=name)
    assert repr(name) in error_text(info) and "name" in error_text(info)
    cls = type("Named", (Recorder,), {"name": name})
    with pytest.raises(ServiceConfigError) as info:
        resolve_config(cls)
    assert repr(name) in error_text(info)


def test_a_bad_name_cannot_reach_other_keys(store: StateStore) -> None:
    with pytest.raises(ValueError):
        store.control("x:lease", "pause", who="test")
    with pytest.raises(ValueError):
        store.control("_services", "pause", who="test")
    assert not store.client.keys(f"{store.keys.prefix}*")


def test_keys_live_under_the_prefix() -> None:
    keys = Keys("p")
    assert keys.for_service("svc1") == ("p:svc1", "p:svc1:lease", "p:svc1:history",
                                         "p:svc1:inflight", "p:svc1:audit", "p:_epoch")
    assert keys.audit("svc1") == "p:svc1:audit"
    assert keys.index() == "p:_services"


@pytest.mark.parametrize(("camel", "snake"), [
    ("OutboxDispatcher", "outbox_dispatcher"), ("ReportMailer", "report_mailer"),
    ("HTTPPoller", "http_poller"),
    ("Example", "example"), ("Sync2Db", "sync2_db"), ("ABC", "abc")])
def test_snake_case(camel: str, snake: str) -> None:
    assert snake_case(camel) == snake


# -- the registry -------------------------------------------------------------------------------


def test_discovers_svc_modules_and_names_them(store: StateStore) -> None:
    registry = Registry.discover(packages=["tests.fixtures.svc_good"], environ={}, only=[])
    assert registry.errors == []
    assert registry.names() == ["custom.name-1", "http_poller", "report_mailer"]
    mailer = registry.get("report_mailer")
    assert mailer.cls.__name__ == "ReportMailer"
    assert mailer.source.startswith(str(FIXTURES / "svc_good" / "SVC_ReportMailer.py"))
    assert (mailer.config.interval_seconds, mailer.config.max_failures,
            mailer.config.retry_delay_seconds) == (5.0, 4, 2.0)
    assert registry.configs()["http_poller"]["interval_seconds"] == 1.5
    service = registry.build("report_mailer", state=store)
    assert service.name == "report_mailer"
    assert service.configured is True
    assert service.interval_seconds == 5.0


def test_environment_overrides_reach_specs_and_built_services(store: StateStore) -> None:
    env = {"SVC_REPORT_MAILER_INTERVAL_SECONDS": "0.5",
           "SVC_REPORT_MAILER_MAX_FAILURES": "9",
           "SVC_CUSTOM_NAME_1_RETRY_DELAY_SECONDS": "7"}
    registry = Registry.discover(packages=["tests.fixtures.svc_good"], environ=env, only=[])
    assert registry.errors == []
    assert registry.get("report_mailer").config.interval_seconds == 0.5
    assert registry.get("report_mailer").config.max_failures == 9
    assert registry.get("custom.name-1").config.retry_delay_seconds == 7
    built = registry.build("report_mailer", state=store)
    assert (built.interval_seconds, built.max_failures) == (0.5, 9), (
        "a built service has the settings its spec was discovered with")


def test_broken_modules_are_reported_and_the_others_load(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry.discover(packages=["tests.fixtures.svc_broken"], environ={}, only=[])
    assert registry.names() == ["fine"]
    errors = registry.errors

    def error_for(file: str) -> str:
        path = str(FIXTURES / "svc_broken" / file)
        found = [e for e in errors if path in e]
        assert len(found) == 1, f"expected one error naming {path}, got {errors}"
        return found[0]

    assert "RuntimeError: SVC_Bad is broken on purpose" in error_for("SVC_Bad.py")
    missing = error_for("SVC_MissingDependency.py")
    assert "ModuleNotFoundError" in missing and "no_such_module_for_svc_tests" in missing
    zero = error_for("SVC_ZeroInterval.py")
    assert "'zero_interval'" in zero and "interval_seconds" in zero
    bad_name = error_for("SVC_BadName.py")
    assert "'Bad Name:*'" in bad_name and "name" in bad_name
    assert len(errors) == 4, errors
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert all(any(e in line for line in logged) for e in errors), "every error is logged"


@pytest.mark.parametrize(("var", "value", "field"), [
    ("SVC_FINE_INTERVAL_SECONDS", "0", "interval_seconds"),
    ("SVC_FINE_INTERVAL_SECONDS", "-1", "interval_seconds"),
    ("SVC_FINE_INTERVAL_SECONDS", "fast", "interval_seconds"),
    ("SVC_FINE_MAX_FAILURES", "0", "max_failures"),
    ("SVC_FINE_RETRY_DELAY_SECONDS", "-1", "retry_delay_seconds"),
])
def test_bad_override_in_discovery_leaves_out_only_that_service(var: str, value: str,
                                                                field: str) -> None:
    registry = Registry.discover(packages=["tests.fixtures.svc_good",
                                           "tests.fixtures.svc_broken"],
                                 environ={var: value}, only=[])
    assert "fine" not in registry.names()
    assert {"report_mailer", "http_poller", "custom.name-1"} <= set(registry.names())
    [error] = [e for e in registry.errors if "SVC_Fine.py" in e]
    assert "'fine'" in error and field in error and var in error and repr(value) in error


def test_two_services_with_one_name(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry.discover(packages=["tests.fixtures.svc_dupes"], environ={}, only=[])
    assert registry.names() == ["other"], "the others still load"
    [error] = registry.errors
    assert "'dup'" in error
    assert str(FIXTURES / "svc_dupes" / "SVC_First.py") in error
    assert str(FIXTURES / "svc_dupes" / "SVC_Second.py") in error
    with pytest.raises(UnknownServiceError):
        registry.get("dup")


def test_duplicates_across_packages() -> None:
    registry = Registry.discover(
        packages=["tests.fixtures.svc_broken", "tests.fixtures.svc_good",
                  "tests.fixtures.svc_broken"], environ={}, only=[])
    assert "fine" not in registry.names(), "the same file found twice is one name twice"
    assert "report_mailer" in registry.names()


def test_missing_package_is_reported() -> None:
    registry = Registry.discover(packages=["tests.fixtures.no_such_pkg",
                                           "tests.fixtures.svc_good"], environ={}, only=[])
    assert "report_mailer" in registry.names()
    assert any("tests.fixtures.no_such_pkg" in e for e in registry.errors)


def test_default_packages_include_services_and_svc_packages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVC_PACKAGES", "tests.fixtures.svc_good")
    monkeypatch.delenv("SVC_SERVICES", raising=False)
    get_settings.cache_clear()
    try:
        registry = Registry.discover(environ={})
    finally:
        get_settings.cache_clear()
    assert {"example", "report_mailer"} <= set(registry.names())
    assert registry.get("example").cls.__module__ == "services.SVC_Example"


def test_only_keeps_named_services_and_reports_unknown_ones() -> None:
    registry = Registry.discover(packages=["tests.fixtures.svc_good"], environ={},
                                 only=["http_poller", "report_mailr"])
    assert registry.names() == ["http_poller"]
    [error] = registry.errors
    assert "report_mailr" in error and "report_mailer" in error


def test_unknown_service_suggests_close_names() -> None:
    registry = Registry.discover(packages=["tests.fixtures.svc_good"], environ={}, only=[])
    with pytest.raises(UnknownServiceError) as info:
        registry.get("http_poler")
    assert isinstance(info.value, KeyError)
    assert "http_poller" in str(info.value)
    assert info.value.suggestions == ["http_poller"]


# -- the schedule: cron, time zone, jitter and catch-up ----------------------------------------


def nightly_class(**attributes: object) -> type:
    return type("Nightly", (Recorder,), {"name": "nightly", "cron": "0 3 * * *",
                                         "timezone": "Europe/Berlin", **attributes})


def test_an_interval_service_has_the_default_schedule_fields() -> None:
    config = resolve_config(Recorder, environ={}, name="plain")
    assert (config.cron, config.timezone, config.jitter_seconds, config.catchup,
            config.catchup_window_seconds) == (None, "UTC", 0.0, "latest", 3600.0)
    schedule = config.schedule
    assert (schedule.every_seconds, schedule.cron, schedule.source) == (
        Recorder.interval_seconds, None, "code")


def test_a_class_cron_in_its_time_zone_and_what_beat_reads_back() -> None:
    config = resolve_config(nightly_class(jitter_seconds=30, catchup="skip",
                                          catchup_window_seconds=0), environ={})
    schedule = config.schedule
    assert (schedule.every_seconds, schedule.cron, schedule.timezone) == (
        None, "0 3 * * *", "Europe/Berlin")
    assert (schedule.jitter_seconds, schedule.catchup, schedule.catchup_window_seconds) == (
        30.0, "skip", 0.0)
    # What a worker registers is what Beat schedules from.
    registration = json.loads(json.dumps(config.as_dict()))
    assert from_registration(registration) == schedule


def test_each_schedule_field_is_overridden_by_the_environment() -> None:
    env = {"SVC_NIGHTLY_CRON": "15 4 * * 1", "SVC_NIGHTLY_TIMEZONE": "America/New_York",
           "SVC_NIGHTLY_JITTER_SECONDS": "30", "SVC_NIGHTLY_CATCHUP": "all",
           "SVC_NIGHTLY_CATCHUP_WINDOW_SECONDS": "600"}
    schedule = resolve_config(nightly_class(), environ=env).schedule
    assert (schedule.cron, schedule.timezone, schedule.jitter_seconds, schedule.catchup,
            schedule.catchup_window_seconds) == ("15 4 * * 1", "America/New_York", 30.0,
                                                 "all", 600.0)
    # Another service's variables do not leak into this one.
    other = resolve_config(nightly_class(name="nightly2"), environ=env).schedule
    assert (other.cron, other.timezone, other.catchup) == ("0 3 * * *", "Europe/Berlin",
                                                           "latest")


@pytest.mark.parametrize("variable", ["SVC_NIGHTLY_CRON", "SVC_NIGHTLY_TIMEZONE",
                                      "SVC_NIGHTLY_CATCHUP"])
def test_schedule_text_from_the_environment_is_stripped(variable: str) -> None:
    value = {"SVC_NIGHTLY_CRON": "30 2 * * *", "SVC_NIGHTLY_TIMEZONE": "Asia/Tokyo",
             "SVC_NIGHTLY_CATCHUP": "skip"}[variable]
    config = resolve_config(nightly_class(), environ={variable: f"  {value}\n"})
    assert value in (config.cron, config.timezone, config.catchup)


def test_an_interval_in_the_environment_replaces_a_class_cron() -> None:
    config = resolve_config(nightly_class(), environ={"SVC_NIGHTLY_INTERVAL_SECONDS": "90"})
    assert config.cron is None
    schedule = config.schedule
    assert (schedule.every_seconds, schedule.cron) == (90.0, None)


def test_a_cron_in_the_environment_replaces_a_class_interval() -> None:
    config = resolve_config(Recorder, environ={"SVC_PLAIN_CRON": "*/5 * * * *"}, name="plain")
    assert (config.schedule.every_seconds, config.schedule.cron) == (None, "*/5 * * * *")


@pytest.mark.parametrize(("variable", "value"), [
    ("SVC_NIGHTLY_CRON", "61 * * * *"),
    ("SVC_NIGHTLY_CRON", "every night"),
    ("SVC_NIGHTLY_TIMEZONE", "Mars/Olympus"),
    ("SVC_NIGHTLY_JITTER_SECONDS", "-1"),
    ("SVC_NIGHTLY_JITTER_SECONDS", "abc"),
    ("SVC_NIGHTLY_JITTER_SECONDS", "100000"),
    ("SVC_NIGHTLY_CATCHUP", "sometimes"),
    ("SVC_NIGHTLY_CATCHUP_WINDOW_SECONDS", "-5"),
    ("SVC_NIGHTLY_CATCHUP_WINDOW_SECONDS", "soon"),
    ("SVC_NIGHTLY_CATCHUP_WINDOW_SECONDS", "nan"),
])
def test_bad_schedule_values_in_the_environment_name_the_service_and_value(
        variable: str, value: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        resolve_config(nightly_class(), environ={variable: value})
    message = error_text(info)
    assert "'nightly'" in message
    assert value in message or str(float(value)) in message, message


@pytest.mark.parametrize(("variable", "value"), [
    ("SVC_NIGHTLY_CRON", "61 * * * *"),
    ("SVC_NIGHTLY_TIMEZONE", "Mars/Olympus"),
    ("SVC_NIGHTLY_CATCHUP", "sometimes"),
    ("SVC_NIGHTLY_JITTER_SECONDS", "100000"),
])
def test_bad_schedule_text_in_the_environment_names_the_variable(variable: str,
                                                                 value: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        resolve_config(nightly_class(), environ={variable: value})
    assert variable in error_text(info)


@pytest.mark.parametrize(("attributes", "named"), [
    ({"cron": "0 25 * * *"}, "'0 25 * * *'"),
    ({"timezone": "Europe/Atlantis"}, "'Europe/Atlantis'"),
    ({"timezone": 5}, "timezone"),
    ({"cron": 300}, "cron"),
    ({"catchup": "never"}, "'never'"),
    ({"jitter_seconds": -2}, "jitter_seconds"),
    ({"catchup_window_seconds": float("inf")}, "catchup_window_seconds"),
])
def test_bad_schedule_class_attributes_name_the_service(attributes: dict[str, object],
                                                        named: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        resolve_config(nightly_class(**attributes), environ={})
    assert "'nightly'" in error_text(info) and named in error_text(info)


def test_the_schedule_variables_are_named_like_the_others() -> None:
    assert service_env_var("nightly", "catchup_window_seconds") == (
        "SVC_NIGHTLY_CATCHUP_WINDOW_SECONDS")
    assert service_overrides("nightly", {"SVC_NIGHTLY_TIMEZONE": "UTC",
                                         "SVC_NIGHTLY_CRON": "* * * * *"}) == {
        "cron": ("SVC_NIGHTLY_CRON", "* * * * *"),
        "timezone": ("SVC_NIGHTLY_TIMEZONE", "UTC")}
