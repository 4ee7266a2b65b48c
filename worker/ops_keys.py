"""What ``svc`` does with Redis data that is not what the key layout promises: a key of the
wrong type is named with what it should be, and the index of registered services is read
entry by entry, so that one entry nobody can read hides nothing else.

Anyone can write anything into Redis (``redis-cli SET``, another program sharing the
database, a botched restore), so nothing here trusts a value's type or shape.
"""

from __future__ import annotations

import importlib
import json
import math
import pkgutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

from services.config import ServiceConfig, snake_case
from services.errors import StateCorruptError
from services.keys import NAME_PATTERN, Keys
from services.redis_client import text_map
from services.state import StateStore

# What each of a service's keys must be, and what it holds, for the message that names it.
LAYOUT: dict[str, tuple[str, str]] = {
    "state": ("hash", "the service's state"),
    "lease": ("zset", "run token -> lease expiry"),
    "history": ("list", "the service's recent runs"),
    "audit": ("list", "the service's recorded changes"),
    "index": ("hash", "service name -> settings, written by workers"),
    "inflight": ("hash", "run token -> start of each run in progress"),
    "epoch": ("hash", "the store's epoch: id, created_at, lost_at after a data loss"),
    "schedules": ("hash", "service name -> live schedule override"),
    "due": ("zset", "service name -> next due time, kept by the leader Beat"),
    "due_signature": ("hash", "service name -> the schedule its due time was computed from"),
    "beat_leader": ("string", "the leader Beat's lease"),
    "beat_stats": ("hash", "the leader Beat's numbers"),
    "processes": ("zset", "process id -> last heartbeat"),
}


class WrongTypeError(StateCorruptError):
    """A state key holds another Redis type than the layout's; the message names the key."""


class IndexEntryError(StateCorruptError):
    """A service's entry in the index cannot be read, and the command needs its settings."""


def service_keys(keys: Keys, name: str, *kinds: str) -> dict[str, str]:
    """``key -> kind`` for the given kinds of one service's keys."""
    return {getattr(keys, kind)(name): kind for kind in kinds}


def wrong_types(store: StateStore, expected: dict[str, str]) -> list[str]:
    """One line for each key of ``expected`` (key -> kind) whose type is wrong; a missing key
    is fine (it means the defaults)."""
    with store.reaching(), store.client.pipeline(transaction=False) as pipe:
        for key in expected:
            pipe.type(key)
        found = pipe.execute()
    problems = []
    for (key, kind), actual in zip(expected.items(), found, strict=True):
        want, role = LAYOUT[kind]
        if actual not in (want, "none"):
            problems.append(f"Redis key {key!r} is a {actual}, expected a {want} ({role})")
    return problems


@contextmanager
def naming(store: StateStore, expected: dict[str, str], changing: bool = False) -> Iterator[None]:
    """Turn Redis's bare WRONGTYPE, which names no key, into an error that names the key(s)
    of ``expected`` (key -> kind) that are wrong and what they should be. One more round trip,
    only when something is already wrong."""
    try:
        yield
    except WrongTypeError:
        raise
    except StateCorruptError as exc:
        problems = wrong_types(store, expected)
        if not problems:  # not a type (bytes that are not UTF-8, say): its own message stands
            raise
        tail = "; nothing was changed" if changing else ""
        raise WrongTypeError("; ".join(problems) + tail) from exc


@dataclass
class Index:
    """The index of services workers registered: each readable entry, and why others are not."""

    entries: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    """name -> settings as written, or None when the entry is not a JSON object."""
    errors: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    """name -> the entry's text as Redis holds it (a later read parses only what changed)."""


def read_index(store: StateStore, previous: Index | None = None) -> Index:
    """The index, each entry parsed; an entry whose text is as in ``previous`` (a long-running
    reader's last read) is taken from there, not parsed again."""
    key = store.keys.index()
    with naming(store, {key: "index"}), store.reaching():
        raw = text_map(store.client.hgetall(key))
    index = Index(texts=raw)
    known = previous.texts if previous is not None else {}
    for name, text in sorted(raw.items()):
        if (known.get(name) == text and previous is not None
                and previous.entries.get(name) is not None):
            # Unchanged and readable: reused. An unreadable one is parsed again (rare and
            # cheap), so that every read says what is wrong with it.
            index.entries[name] = previous.entries[name]
            continue
        if not NAME_PATTERN.match(name):
            # No worker writes such a name (the registry refuses it), and it could reach
            # other keys: leave it out, but say so.
            index.errors.append(f"{key} holds an entry for {name!r}, which is not a service "
                                "name; ignored")
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            index.errors.append(f"{key} entry {name!r} is not a JSON object of settings "
                                f"(got {text[:60]!r}); a worker rewrites it when it starts")
        index.entries[name] = value if isinstance(value, dict) else None
    return index


# ServiceConfig's fields by annotation (the module uses postponed annotations, so strings).
_NUMBER_FIELDS = tuple(f.name for f in fields(ServiceConfig) if f.type in ("int", "float"))


def config_from_entry(name: str, entry: dict[str, Any] | None) -> tuple[ServiceConfig | None,
                                                                        str | None]:
    """The settings an index entry holds, or None with the reason it cannot be used. An entry
    written by a newer or older worker (other fields) is None without a reason: the service
    is still shown, as before."""
    if entry is None:
        return None, None
    try:
        config = ServiceConfig(**entry)
    except TypeError:
        return None, None
    for key in _NUMBER_FIELDS:
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value):
            return None, f"{name!r} has {key}={value!r}, expected a number"
    return (None, problem) if (problem := _other_problem(name, config)) else (config, None)


def _other_problem(name: str, config: ServiceConfig) -> str | None:
    """What is wrong with an entry's fields other than the plain numbers, if anything."""
    overdue = config.overdue_after_seconds
    if overdue is not None and (isinstance(overdue, bool) or not isinstance(overdue, int | float)
                                or not math.isfinite(overdue) or overdue <= 0):
        return f"{name!r} has overdue_after_seconds={overdue!r}, expected a number > 0"
    if not isinstance(config.duration_histogram, bool):
        return f"{name!r} has duration_histogram={config.duration_histogram!r}, expected true " \
            "or false"
    if not isinstance(config.name, str) or not isinstance(config.queue, str | None):
        return f"{name!r} has a name or queue that is not text"
    return None


def json_object(text: str) -> dict[str, Any] | None:
    """``text`` parsed, when it is a JSON object; None for anything else."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def svc_modules(package: str) -> list[str] | None:
    """The ``SVC_*`` module names in ``package``, without importing them (only the package
    itself); None when the package cannot be imported."""
    try:
        paths = getattr(importlib.import_module(package), "__path__", None)
    except Exception:  # discovery imports it again and reports why
        return None
    if paths is None:
        return None
    return [info.name for info in pkgutil.iter_modules(paths)
            if info.name.startswith("SVC_") and not info.ispkg]


def code_adds_names(packages: list[str], allowlist: list[str], registered: set[str]) -> bool:
    """Whether this machine's code visibly holds a service the index lacks: an
    ``SVC_SERVICES`` name (``allowlist``), or an ``SVC_<Name>.py`` whose name (snake case, as
    :func:`services.config.service_name_for` derives it) no worker registered. Found from the
    file names, without importing them; a package that does not import counts (discovery
    then says why)."""
    if allowlist:
        return not set(allowlist) <= registered
    for package in packages:
        modules = svc_modules(package)
        if modules is None or any(snake_case(module[4:]) not in registered
                                  for module in modules):
            return True
    return False
