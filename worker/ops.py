"""What ``svc`` knows and does, apart from how it prints: which services exist, each one's
status as one snapshot of Redis, and the operator actions (control, trigger, wait).

Every Redis key comes from :class:`services.keys.Keys` (through the store). Settings are
given once, at the edge (the CLI's callback), never read here.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from services.config import ServiceConfig
from services.errors import UnknownServiceError
from services.fields import LAST_TICK_AT, ServiceState, parse_number
from services.health import Health, assess
from services.heartbeat import Liveness
from services.heartbeat import queue_reads as liveness_reads
from services.keys import NAME_PATTERN
from services.registry import SHIPPED_PACKAGES, Registry, suggest
from services.settings import Settings
from services.state import StateStore
from worker.ops_keys import (
    Index,
    IndexEntryError,
    WrongTypeError,
    code_adds_names,
    config_from_entry,
    json_object,
    naming,
    read_index,
    service_keys,
    wrong_types,
)
from worker.ops_schedule import (
    ResolvedCache,
    ScheduleInfo,
    queue_reads,
    schedule_infos,
    schedule_keys,
)
from worker.ops_status import Lease, ServiceStatus, StoreLoss, collector_paused

ACTIONS = ("pause", "resume", "stop", "start", "reset")
WAIT_POLL_SECONDS = 0.2
# A reason is read in a table cell and kept in every audit entry (SVC_AUDIT_LENGTH of them per
# service): a paragraph is plenty, and a pasted log file is a mistake.
MAX_REASON_LENGTH = 500


class InvalidArgumentError(ValueError):
    """An argument the command cannot take: the command was wrong, nothing was changed."""


class InvalidNameError(InvalidArgumentError):
    """A name that no service could have (the key pattern forbids it)."""


class NotRegisteredError(InvalidArgumentError):
    """A service known from this machine's code that no worker registered: no worker would
    take its task (Celery drops it as an unregistered task)."""


def check_reason(reason: str) -> str:
    """``reason`` if it can be recorded as it is; raises :class:`InvalidArgumentError`."""
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidArgumentError(
            f"--reason is {len(reason)} characters long; expected at most {MAX_REASON_LENGTH}")
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:  # bytes the terminal's locale could not decode
        raise InvalidArgumentError("--reason is not valid UTF-8 text") from None
    return reason


def actor() -> str:
    """``user@host``: who made a change, as the audit record shows it."""
    import getpass  # here, not for every read: it loads termios

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


@dataclass
class Operator:
    """What every command needs, made once per invocation from settings given at the edge.
    The store and the registry are made on first use, so ``svc --help`` touches neither.

    Names and settings come from the index workers write at start (one HGETALL), not from
    importing every ``SVC_*.py`` here: the cluster's view, and cheap at 10,000 services. This
    machine's code (:attr:`registry`) is imported only where it is needed: a name the index
    does not hold, the detail of one service (:meth:`load_code`), or an index no worker ever
    wrote (:attr:`listed_from`), when the code is all there is to list."""

    settings: Settings
    _closed: bool = field(default=False, repr=False)
    _configs: dict[str, ServiceConfig | None] = field(default_factory=dict, repr=False)
    """Each service's settings as shown, parsed once per invocation (or scrape)."""
    _entries: dict[str, tuple[str, ServiceConfig | None, str | None]] = field(
        default_factory=dict, repr=False)
    """Each service's settings as a worker registered them (and why they cannot be used),
    with the entry's text they were parsed from: kept across :meth:`refresh` while the text
    stays the same."""
    _previous: Index | None = field(default=None, repr=False)
    _resolved: ResolvedCache = field(default_factory=dict, repr=False)
    """Each registered schedule as resolved, kept while its entry and override stay."""

    @cached_property
    def store(self) -> StateStore:
        return StateStore.from_settings(self.settings)

    @cached_property
    def registry(self) -> Registry:
        # Discovery follows these settings, not the process-wide cached ones, so that a test
        # (or a caller) with another environment sees its own services.
        self._configs.clear()  # this machine's settings win from now on
        return Registry.discover(packages=[*SHIPPED_PACKAGES, *self.settings.package_list],
                                 only=self.settings.service_allowlist)

    @cached_property
    def index(self) -> Index:
        """What workers wrote at start: the cluster's view, which may hold services this
        machine's code does not have."""
        return read_index(self.store, self._previous)

    @property
    def code_loaded(self) -> bool:
        """This machine's ``SVC_*.py`` were imported (:attr:`registry` was used)."""
        return "registry" in self.__dict__

    @cached_property
    def code_adds_names(self) -> bool:
        """This machine's code visibly holds a service the index lacks (see
        :func:`worker.ops_keys.code_adds_names`), so listing the index alone would hide it."""
        return code_adds_names([*SHIPPED_PACKAGES, *self.settings.package_list],
                               self.settings.service_allowlist, set(self.registered))

    @property
    def listed_from(self) -> str:
        """Where :meth:`known` found the names: ``index`` (what workers registered) or
        ``code`` (no worker ever registered: this machine's ``SVC_*.py``)."""
        return "index" if self.index.entries else "code"

    def load_code(self) -> Registry:
        """Import this machine's services (``svc status NAME`` says whether it has them)."""
        return self.registry

    @property
    def registered(self) -> dict[str, dict[str, Any] | None]:
        """name -> settings a worker registered (None when that entry is unreadable)."""
        return self.index.entries

    @property
    def registry_errors(self) -> list[str]:
        """Service files that did not load here; none when they were not imported."""
        return self.registry.errors if self.code_loaded else []

    @property
    def index_errors(self) -> list[str]:
        """Entries of the index that cannot be used, and why (shown as warnings). Settings
        found in this machine's registry win, so their entries do not matter here."""
        problems = list(self.index.errors)
        local = self.registry.specs if self.code_loaded else {}
        for name in self.registered:
            problem = None if name in local else self._entry(name)[2]
            if problem:
                problems.append(f"{self.store.keys.index()} entry {problem}; its settings are "
                                "ignored")
        return problems

    def refresh(self) -> None:
        """Forget what workers registered, for a long-running reader (svc metrics)."""
        self._previous = self.__dict__.pop("index", None) or self._previous
        self.__dict__.pop("code_adds_names", None)
        self._configs.clear()

    def close(self) -> None:
        if "store" in self.__dict__ and not self._closed:
            self.store.client.close()
        self._closed = True

    # -- names ------------------------------------------------------------------------------

    def known(self) -> list[str]:
        """The index's names; with this machine's code too once it is imported (or when no
        worker ever registered anything, and the code is all there is)."""
        if self.listed_from == "code" or self.code_loaded or self.code_adds_names:
            return sorted(set(self.registry.names()) | set(self.registered))
        return sorted(self.registered)

    def config(self, name: str) -> ServiceConfig | None:
        if name not in self._configs:
            local = self.registry.specs.get(name) if self.code_loaded else None
            # Written by a newer or older worker, or by hand: show the service anyway.
            self._configs[name] = local.config if local is not None else \
                self.registered_config(name)
        return self._configs[name]

    def registered_config(self, name: str) -> ServiceConfig | None:
        """The settings a worker registered, when readable (None otherwise)."""
        return self._entry(name)[1]

    def _entry(self, name: str) -> tuple[str, ServiceConfig | None, str | None]:
        """The index entry's text, its settings and why they cannot be used, parsed once."""
        text = self.index.texts.get(name, "")
        cached = self._entries.get(name)
        if cached is None or cached[0] != text:
            cached = self._entries[name] = (
                text, *config_from_entry(name, self.registered.get(name)))
        return cached

    def resolve(self, names: list[str], every: bool = False) -> list[str]:
        """The services named (or all with ``every``); unknown or malformed names raise with
        the closest known names. A name the index does not hold is looked for in this
        machine's code."""
        known = self.known()
        if every:
            return known
        if not self.code_loaded and not set(names) <= set(known):
            self.load_code()
            known = self.known()
        resolved: list[str] = []
        for name in names:
            if not NAME_PATTERN.match(name):
                close = suggest(name.lower(), known)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise InvalidNameError(
                    f"service name {name!r} is invalid: expected lowercase letters, digits, "
                    f"'_', '.' or '-', starting with a letter or digit{hint}")
            if name not in known:
                raise UnknownServiceError(name, known, suggest(name, known))
            if name not in resolved:
                resolved.append(name)
        return resolved

    # -- reads ------------------------------------------------------------------------------

    def statuses(self, names: list[str]) -> tuple[float, list[ServiceStatus]]:
        """Every named service's status from one pipeline: one round trip whatever the count."""
        now, found, _ = self.snapshot(names)
        return now, found

    def snapshot(self, names: list[str]) -> tuple[float, list[ServiceStatus], Liveness]:
        """:meth:`statuses`, and the workers and Beats alive, from the same round trip."""
        with collector_paused():
            return self._snapshot(names)

    def _snapshot(self, names: list[str]) -> tuple[float, list[ServiceStatus], Liveness]:
        keys = self.store.keys
        read = {key: kind for name in names for key, kind in service_keys(
            keys, name, "state", "lease", "history", "inflight").items()}
        read.update({keys.epoch(): "epoch", keys.processes(): "processes",
                     keys.beat_leader(): "beat_leader", **schedule_keys(keys)})
        # The store's own guard, so a failure reads like every other: URL, password hidden.
        with naming(self.store, read), self.store.reaching(), \
                self.store.client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hgetall(keys.epoch())
            queue_reads(pipe, keys)
            liveness_reads(pipe, self.store)
            for name in names:
                pipe.hgetall(keys.state(name))
                pipe.zrange(keys.lease(name), 0, -1, withscores=True)
                pipe.lindex(keys.history(name), 0)
                pipe.hgetall(keys.inflight(name))
            replies = pipe.execute()
        seconds, micros = replies[0]
        now = seconds + micros / 1_000_000
        loss = StoreLoss.from_epoch(replies[1])
        schedules = schedule_infos(names, self.registered, self.config, replies[2:5], keys,
                                   cache=self._resolved)
        liveness = Liveness.from_replies(*replies[5:7])
        found = []
        for i, name in enumerate(names):
            raw, leases, last, inflight = replies[7 + 4 * i: 11 + 4 * i]
            status = self._status(name, now, raw, leases, last, loss=loss,
                                  schedule=schedules[name])
            # Its health needs the status it completes. Set on the object just made, before
            # anyone else sees it: dataclasses.replace, a second copy, cost 5% at 10,000.
            object.__setattr__(status, "health", self._health(status, liveness, inflight))
            found.append(status)
        return now, found, liveness

    def _health(self, status: ServiceStatus, liveness: Liveness,
                inflight: dict[str, str]) -> Health:
        starts = {token: value / 1000 for token, text in inflight.items()
                  if (value := parse_number(text)) is not None}
        schedule = status.schedule.schedule if status.schedule is not None else None
        # What the workers registered, when readable: health must not depend on the
        # environment of whoever evaluates it (svc web, an operator's shell).
        config = self.registered_config(status.name)
        outcome = (status.last_run or {}).get("outcome")
        return assess(status.state, config=config or status.config, schedule=schedule,
                      liveness=liveness, now=status.now, inflight=starts, held=status.held,
                      hard_limit_grace=self.settings.hard_limit_grace_seconds,
                      last_outcome=outcome if isinstance(outcome, str) else None)

    def _status(self, name: str, now: float, raw: dict[str, str],
                leases: list[tuple[str, float]], last: str | None, *,
                loss: StoreLoss | None = None,
                schedule: ScheduleInfo | None = None) -> ServiceStatus:
        last_run = json_object(last) if last else None
        tick = parse_number(raw.get(LAST_TICK_AT))
        return ServiceStatus(
            name=name, config=self.config(name), state=ServiceState.from_hash(name, raw),
            now=now, last_tick_at=tick / 1000 if tick is not None else None,
            # Members past their expiry belong to crashed runs; the guard ignores them too.
            leases=tuple(Lease(token, score / 1000) for token, score in leases
                         if score / 1000 > now),
            last_run=last_run,
            # Unknown (None) unless this machine's code was imported.
            in_registry=name in self.registry.specs if self.code_loaded else None,
            seen_by_worker=name in self.registered, raw=raw, loss=loss, schedule=schedule)

    def history(self, name: str, rows: int) -> list[Any]:
        """The last ``rows`` runs as stored (JSON values, normally objects), newest first."""
        with naming(self.store, service_keys(self.store.keys, name, "history")):
            return self.store.history(name, rows)

    def audit(self, name: str, rows: int) -> list[Any]:
        """The last ``rows`` changes as stored (JSON values, normally objects), newest first."""
        with naming(self.store, service_keys(self.store.keys, name, "audit")):
            return self.store.audit(name, rows)

    # -- actions ----------------------------------------------------------------------------

    def control(self, names: list[str], action: str, reason: str,
                who: str | None = None) -> list[dict[str, Any]]:
        """Apply ``action`` to each service; each change lands in its audit list as made by
        ``who`` (default :func:`actor`; the services page names its login). When a key of
        any of them has the wrong type, none is changed (the script checks again, for a key
        replaced in between)."""
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
        check_reason(reason)
        written = {name: service_keys(self.store.keys, name, "state", "audit") for name in names}
        problems = wrong_types(self.store, {k: v for keys in written.values()
                                            for k, v in keys.items()})
        if problems:
            raise WrongTypeError("; ".join(problems) + "; nothing was changed")
        who = who if who is not None else actor()
        changes = []
        for name in names:
            with naming(self.store, written[name], changing=True):
                entry = self.store.control(name, action, who=who, reason=reason)
            changes.append({"service": name, **entry})
        return changes

    def wait_idle(self, names: list[str], timeout: float) -> dict[str, list[Lease]]:
        """Wait until no run of ``names`` is in progress; returns what is still running when
        ``timeout`` passes (empty when everything went idle)."""
        deadline = time.monotonic() + timeout
        leases = {key: kind for name in names
                  for key, kind in service_keys(self.store.keys, name, "lease").items()}
        while True:
            with naming(self.store, leases):
                busy = {name: [Lease(t, e) for t, e in self.store.lease_holders(name)]
                        for name in names}
            busy = {name: leases for name, leases in busy.items() if leases}
            if not busy or time.monotonic() >= deadline:
                return busy
            time.sleep(WAIT_POLL_SECONDS)

    def trigger(self, names: list[str]) -> dict[str, str]:
        """Send one ``svc.<name>`` task per name now, marked ``trigger`` so that it skips the
        duplicate-tick window but still passes the guard (paused, stopped, backoff, lease).
        Returns the task id of each."""
        from beat_schedule import task_name, tick_options
        from worker.sender import make_sender

        missing = ", ".join(repr(name) for name in names if name not in self.registered)
        if missing:  # Celery would drop the task as unregistered: say so here, send nothing
            raise NotRegisteredError(
                f"cannot trigger {missing}: no worker has registered it (not in "
                f"{self.store.keys.index()}), so no worker would run the tick; start a worker "
                "that runs it; nothing was sent")
        configs = {}
        for name in names:
            config = self.config(name)
            if config is None:  # known only from a worker entry nobody can read
                raise IndexEntryError(
                    f"cannot trigger {name!r}: its settings in {self.store.keys.index()} "
                    "cannot be read here (no code for it here either); nothing was sent")
            configs[name] = config
        app = make_sender(self.settings)
        try:
            return {name: str(app.send_task(task_name(name), kwargs={"kind": "trigger"},
                                            **tick_options(config)).id)
                    for name, config in configs.items()}
        finally:
            app.close()

