"""Settings from the environment: working defaults, errors that name the variable, and URLs
shown with their passwords hidden."""

from __future__ import annotations

import pytest

from services.errors import ServiceConfigError, StateUnavailableError
from services.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    Settings,
    get_settings,
    load_settings,
    redact_url,
)
from services.state import StateStore, connect_redis

VARIABLES = ("REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL", "SVC_KEY_PREFIX",
             "SVC_LEASE_SECONDS", "SVC_HISTORY_LENGTH", "SVC_PACKAGES", "SVC_SERVICES")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> pytest.MonkeyPatch:
    """No framework variable set, and no .env file in the working directory."""
    for var in VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_defaults_work_with_nothing_set(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.redis_url == DEFAULT_REDIS_URL == "redis://127.0.0.1:6379/0"
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.database_url.startswith("sqlite:///var/")
    assert settings.key_prefix == "svc"
    assert settings.effective_broker_url == settings.redis_url
    assert settings.lease_seconds > 0
    assert settings.package_list == [] and settings.service_allowlist == []


def test_environment_sets_every_documented_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "redis://redis.example:6380/2")
    clean_env.setenv("DATABASE_URL", "postgresql+psycopg://db.example/app")
    clean_env.setenv("SVC_KEY_PREFIX", "myapp")
    clean_env.setenv("SVC_LEASE_SECONDS", "12.5")
    clean_env.setenv("SVC_PACKAGES", "pkg.one, pkg.two ,")
    clean_env.setenv("SVC_SERVICES", "a,b")
    settings = load_settings()
    assert settings.redis_url == "redis://redis.example:6380/2"
    assert settings.database_url == "postgresql+psycopg://db.example/app"
    assert settings.key_prefix == "myapp"
    assert settings.lease_seconds == 12.5
    assert settings.package_list == ["pkg.one", "pkg.two"]
    assert settings.service_allowlist == ["a", "b"]
    assert get_settings().key_prefix == "myapp"


def test_dotenv_file_in_working_directory_is_read(clean_env: pytest.MonkeyPatch,
                                                  tmp_path) -> None:
    (tmp_path / ".env").write_text("SVC_KEY_PREFIX=fromfile\n")
    assert load_settings().key_prefix == "fromfile"


@pytest.mark.parametrize(("var", "value"), [
    ("SVC_LEASE_SECONDS", "abc"),
    ("SVC_LEASE_SECONDS", "0"),
    ("SVC_LEASE_SECONDS", "-5"),
    ("SVC_HISTORY_LENGTH", "many"),
    ("SVC_HISTORY_LENGTH", "0"),
    ("SVC_KEY_PREFIX", "has space"),
    ("SVC_KEY_PREFIX", ":leading"),
    ("SVC_LOG_JSON", "perhaps"),
])
def test_bad_setting_names_the_variable(var: str, value: str,
                                        clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(var, value)
    with pytest.raises(ServiceConfigError) as info:
        load_settings()
    message = str(info.value)
    assert var in message and repr(value) in message
    with pytest.raises(ServiceConfigError, match=var):
        get_settings()


def test_explicit_overrides_are_applied(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings(redis_url="redis://elsewhere:1/0", key_prefix="given")
    assert settings.redis_url == "redis://elsewhere:1/0"
    assert settings.key_prefix == "given"
    assert isinstance(settings, Settings)


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://user:secret@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
    ("redis://:secret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("rediss://user:p%40ss:word@host:6380/1", "rediss://user:***@host:6380/1"),
    ("postgresql+psycopg://app:secret@db:5432/app", "postgresql+psycopg://app:***@db:5432/app"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://user@127.0.0.1:6379/0", "redis://user@127.0.0.1:6379/0"),
    ("sqlite:///var/services.db", "sqlite:///var/services.db"),
])
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0?password=secret",
    "redis://u:secret@h:1/0?password=secret&db=1",
])
def test_redact_url_hides_passwords_given_as_query_parameters(url: str) -> None:
    shown = redact_url(url)
    assert "secret" not in shown
    assert "password=" in shown


def test_redact_url_of_garbage_does_not_echo_it() -> None:
    assert "secret" not in redact_url("http://[::1:secret@bad")


def test_not_a_redis_url_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(StateUnavailableError) as info:
        connect_redis("http://user:secret@example.invalid/0")
    assert "secret" not in str(info.value)
    assert "user:***@example.invalid" in str(info.value)


def test_store_from_settings_reports_the_redacted_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "redis://svc:topsecret@127.0.0.1:1/0")
    store = StateStore.from_settings(load_settings())
    with pytest.raises(StateUnavailableError) as info:
        store.ping()
    assert "topsecret" not in str(info.value)
    assert "redis://svc:***@127.0.0.1:1/0" in str(info.value)


def test_an_example_services_own_settings_name_their_variable(monkeypatch) -> None:
    """The outbox's and the cleanup's settings are classes of their own (SVC_OUTBOX_*,
    SVC_CLEANUP_*), with the same one-line errors as the framework's."""
    from services.database.outbox import OutboxOptions
    from services.examples.SVC_ExpiredRowsCleanup import CleanupSettings
    from services.settings import load

    monkeypatch.setenv("SVC_OUTBOX_BATCH_SIZE", "7")
    monkeypatch.setenv("SVC_OUTBOX_DISPATCHER_INTERVAL_SECONDS", "0.5")  # the service's own
    assert load(OutboxOptions).batch_size == 7
    monkeypatch.setenv("SVC_CLEANUP_BATCH_SIZE", "lots")
    expected = r"^invalid setting: SVC_CLEANUP_BATCH_SIZE='lots'"
    with pytest.raises(ServiceConfigError, match=expected):
        load(CleanupSettings)
