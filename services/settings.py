"""Every setting, read from the environment once, at the edge (worker start, CLI start).

The defaults are the one-machine setup: Redis on localhost, a SQLite file under ``var/``.
Per-service overrides (``SVC_<NAME>_INTERVAL_SECONDS`` and friends) are named here too, so
that no other module spells an environment variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.errors import ServiceConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "sqlite:///var/services.db"
SERVICE_OVERRIDE_FIELDS = (
    "interval_seconds",
    "max_failures",
    "retry_delay_seconds",
    "max_concurrent_runs",
    "timeout_seconds",
    "stop_cooldown_seconds",
    "cron",
    "timezone",
    "jitter_seconds",
    "catchup",
    "catchup_window_seconds",
    "overdue_after_seconds",
    "duration_histogram",
)
_QUERY_PASSWORD = re.compile(r"(?i)((?:^|&)password=)[^&]*")
# No ':' in a prefix: keys are "<prefix>:<name>..." and names hold no ':', so a prefix ends at
# the first ':' and no two prefixes can reach each other's keys ("svc" vs "svc:x").
_KEY_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.{}-]*\Z")
# A host name or IP address; nothing a shell or an argument parser could read as more.
_HOST = re.compile(r"^[A-Za-z0-9.:\[\]-]+\Z")
_HOOK = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")
SettingsT = TypeVar("SettingsT", bound=BaseSettings)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
MIN_LEASE_SECONDS = 1.0


class Settings(BaseSettings):
    """The framework's settings. Field docs name the environment variable that sets each."""

    model_config = SettingsConfigDict(env_prefix="SVC_", env_file=".env", extra="ignore")

    redis_url: str = Field(DEFAULT_REDIS_URL, validation_alias="REDIS_URL")
    """REDIS_URL: where service state lives (and the broker, unless CELERY_BROKER_URL)."""
    broker_url: str | None = Field(None, validation_alias="CELERY_BROKER_URL")
    """CELERY_BROKER_URL: the Celery broker; defaults to REDIS_URL."""
    database_url: str = Field(DEFAULT_DATABASE_URL, validation_alias="DATABASE_URL")
    """DATABASE_URL: the SQLAlchemy URL behind ``AbstractService.db``."""
    key_prefix: str = "svc"
    """SVC_KEY_PREFIX: first part of every state key (``<prefix>:<name>``)."""
    broker_prefix: str = ""
    """SVC_BROKER_PREFIX: kombu ``global_keyprefix`` for the broker's own keys."""
    packages: str = ""
    """SVC_PACKAGES: comma-separated extra packages searched for ``SVC_*.py`` modules."""
    services: str = ""
    """SVC_SERVICES: comma-separated names to run here; empty runs every discovered service."""
    lease_seconds: float = Field(30.0, ge=MIN_LEASE_SECONDS, le=86400)
    """SVC_LEASE_SECONDS: lease time; a crashed run frees its service within this. At least
    1 s: the lease is renewed every third of it, and a renewal must have time to arrive."""
    beat_lease_seconds: float = Field(10.0, ge=MIN_LEASE_SECONDS, le=3600)
    """SVC_BEAT_LEASE_SECONDS: the leader Beat's lease; a standby takes over at most this
    long (plus one poll) after the leader died or froze, and within one poll of a graceful
    stop."""
    hard_limit_grace_seconds: float = Field(10.0, gt=0, le=3600)
    """SVC_HARD_LIMIT_GRACE_SECONDS: how long after a run's ``timeout_seconds`` (the soft
    limit, which cancels ``update()``) the hard limit replaces a process whose run does not
    yield."""
    worker_max_memory_mb: int = Field(1024, ge=0)
    """SVC_WORKER_MAX_MEMORY_MB: a pool process whose resident memory passes this after a run
    is replaced (Celery's ``worker_max_memory_per_child``); 0 turns the cap off."""
    history_length: int = Field(100, ge=1)
    """SVC_HISTORY_LENGTH: runs kept in ``<prefix>:<name>:history``."""
    history_max_bytes: int = Field(32768, ge=1024)
    """SVC_HISTORY_MAX_BYTES: bytes of run entries kept in the history, whatever their count
    (the newest run always stays): a run's entry is ~300 bytes, a failure's up to ~2.3 KB
    with its error, so this bounds what a failing service holds in Redis."""
    audit_length: int = Field(200, ge=1)
    """SVC_AUDIT_LENGTH: operator actions kept in ``<prefix>:<name>:audit``."""
    log_json: bool = False
    """SVC_LOG_JSON: log one JSON object per line."""
    log_level: str = "INFO"
    """SVC_LOG_LEVEL: the root log level."""
    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    flower_basic_auth: str | None = Field(None, validation_alias="FLOWER_BASIC_AUTH")
    """FLOWER_BASIC_AUTH: ``user:password[,user2:password2]`` for Flower."""
    metrics_port: int = 9808
    """SVC_METRICS_PORT: where ``svc metrics`` serves Prometheus metrics."""
    metrics_address: str = "127.0.0.1"
    """SVC_METRICS_ADDRESS: the address ``svc metrics`` listens on (0.0.0.0 for a remote
    Prometheus)."""
    heartbeat_seconds: float = Field(5.0, ge=0.1, le=300)
    """SVC_HEARTBEAT_SECONDS: how often each worker and Beat writes its heartbeat; a process
    silent for three of these is gone (``svc workers``, health ``no worker``)."""
    health_watch_seconds: float = Field(15.0, ge=0.1, le=3600)
    """SVC_HEALTH_WATCH_SECONDS: how often one process of the cluster (a worker, ``svc web``
    or ``svc metrics``) evaluates every service's health and notifies transitions."""
    alert_after_seconds: float = Field(30.0, ge=0, le=86400)
    """SVC_ALERT_AFTER_SECONDS: how long an unhealthy status (overdue, stuck, no worker, no
    beat) must last before it is notified; stopped and state lost are notified at once."""
    alert_webhook_url: str | None = None
    """SVC_ALERT_WEBHOOK_URL: POST each health transition here as JSON a Slack incoming
    webhook accepts (``text``, plus the fields of the change)."""
    alert_webhook_timeout_seconds: float = Field(5.0, gt=0, le=120)
    """SVC_ALERT_WEBHOOK_TIMEOUT_SECONDS: one webhook attempt gives up after this."""
    alert_webhook_attempts: int = Field(4, ge=1, le=20)
    """SVC_ALERT_WEBHOOK_ATTEMPTS: tries per notification (backoff 1, 2, 4... s between)."""
    on_health_change: str = ""
    """SVC_ON_HEALTH_CHANGE: ``package.module:function`` called with each health transition
    (a :class:`services.health.HealthChange`), in the process that won it."""
    web_address: str = "127.0.0.1"
    """SVC_WEB_ADDRESS: where ``svc web`` listens; any address other than loopback needs
    SVC_WEB_BASIC_AUTH."""
    web_port: int = Field(5556, ge=0, le=65535)
    """SVC_WEB_PORT: the services page's port (Flower's is 5555)."""
    web_basic_auth: str | None = None
    """SVC_WEB_BASIC_AUTH: ``user:password[,user2:password2]`` for the services page."""
    wait_timeout_seconds: float = Field(60.0, gt=0)
    """SVC_WAIT_TIMEOUT_SECONDS: how long ``svc pause|stop --wait`` waits by default."""
    db_pool_size: int = Field(5, ge=1)
    """SVC_DB_POOL_SIZE: connections each worker process keeps open (not SQLite)."""
    db_max_overflow: int = Field(5, ge=0)
    db_pool_recycle_seconds: int = 1800
    db_ping_after_idle_seconds: float = Field(5.0, ge=0)
    """SVC_DB_PING_AFTER_IDLE_SECONDS: a pooled connection idle longer than this is checked
    (one round trip) before use; 0 checks every time (SQLAlchemy's pre-ping)."""
    db_connect_timeout_seconds: int = Field(10, ge=1)
    """SVC_DB_CONNECT_TIMEOUT_SECONDS: a database that does not answer fails after this."""
    db_sqlite_busy_timeout_ms: int = Field(30000, ge=0)
    """SVC_DB_SQLITE_BUSY_TIMEOUT_MS: how long a SQLite writer queues for the write lock."""

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _KEY_PREFIX.match(value):
            raise ValueError(
                "expected letters, digits, '_', '.', '-', '{' or '}', starting with a letter or "
                "digit, and no ':' (a prefix holding ':' could reach another prefix's keys)")
        return value

    @field_validator("on_health_change")
    @classmethod
    def _check_hook(cls, value: str) -> str:
        if value and not _HOOK.match(value):
            raise ValueError("expected 'package.module:function'")
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _check_webhook(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("expected an http:// or https:// URL")
        return value or None

    @field_validator("web_basic_auth")
    @classmethod
    def _check_logins(cls, value: str | None) -> str | None:
        if value and not all(":" in pair and all(pair.split(":", 1))
                             for pair in value.split(",")):
            raise ValueError("expected user:password[,user2:password2], each password "
                             "non-empty")
        return value or None

    @field_validator("flower_address", "metrics_address", "web_address")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not _HOST.match(value):
            raise ValueError("expected a host name or an IP address (letters, digits, '.', ':', "
                             "'-', '[', ']')")
        return value

    @model_validator(mode="after")
    def _check_broker_prefix(self) -> Settings:
        if self.broker_prefix.startswith(f"{self.key_prefix}:"):
            raise ValueError(
                f"SVC_BROKER_PREFIX={self.broker_prefix!r} starts with SVC_KEY_PREFIX "
                f"{self.key_prefix!r} + ':', so the broker's keys could collide with service "
                "state: use another prefix")
        return self

    @property
    def flower_is_local(self) -> bool:
        return self.flower_address in LOOPBACK_HOSTS

    @property
    def heartbeat_ttl_seconds(self) -> float:
        """A process whose last heartbeat is older than this is gone."""
        return self.heartbeat_seconds * 3

    @property
    def web_logins(self) -> dict[str, str]:
        """SVC_WEB_BASIC_AUTH as user -> password."""
        pairs = (pair.split(":", 1) for pair in (self.web_basic_auth or "").split(",") if pair)
        return {user: password for user, password in pairs}

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def package_list(self) -> list[str]:
        return _csv(self.packages)

    @property
    def service_allowlist(self) -> list[str]:
        return _csv(self.services)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


class ComponentSettings(BaseSettings):
    """The base of a toolkit part's or an example service's own settings (the outbox's
    ``SVC_OUTBOX_*``, the cleanup's ``SVC_CLEANUP_*``): read from the environment and ``.env``
    like the framework's, with the prefix the subclass gives; built with ``load``."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)


def load(kind: type[SettingsT], **overrides: Any) -> SettingsT:
    """Build ``kind`` from the environment, turning pydantic's error into one that names the
    environment variable and what was expected. ``overrides``: field values, any type, as
    pydantic validates them."""
    try:
        return kind(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            if not err["loc"]:  # a check across fields: its message names the variables
                problems.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{_env_name(kind, field)}={err.get('input')!r}: {message}")
        raise ServiceConfigError("invalid setting: " + "; ".join(problems)) from None


def load_settings(**overrides: object) -> Settings:
    """The framework's settings from the environment (see ``load``)."""
    return load(Settings, **overrides)


def _env_name(kind: type[BaseSettings], field: str) -> str:
    info = kind.model_fields.get(field)
    alias = info.validation_alias if info else None
    prefix = kind.model_config.get("env_prefix") or ""
    return alias if isinstance(alias, str) else f"{prefix}{field}".upper()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, built once."""
    return load_settings()


def service_env_var(service_name: str, field: str) -> str:
    """``SVC_<NAME>_<FIELD>``: the variable that overrides one numeric field of one service."""
    token = re.sub(r"[^A-Za-z0-9]", "_", service_name).upper()
    return f"SVC_{token}_{field.upper()}"


def service_overrides(
    service_name: str, environ: Mapping[str, str] | None = None
) -> dict[str, tuple[str, str]]:
    """The overrides set for one service: ``{field: (variable, raw value)}``."""
    env = os.environ if environ is None else environ
    found = {}
    for field in SERVICE_OVERRIDE_FIELDS:
        var = service_env_var(service_name, field)
        if var in env:
            found[field] = (var, env[var])
    return found


def redact_url(url: str) -> str:
    """The URL with its password (in the netloc or a ``password=`` query parameter, which
    redis-py also reads) replaced by ``***``, for error messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
    if password is None and query == parts.query:
        return url
    return urlunsplit(parts._replace(query=query))
