"""The Lua scripts behind every state change, loaded from ``services/lua/*.lua``.

Each script file opens with its KEYS/ARGV contract. redis-py's ``Script`` sends EVALSHA and
falls back to loading the script when Redis does not know it yet; ``ScriptChannel`` does the
same for the per-run scripts on a connection of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import hiredis
import redis
from redis import Redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

logger = logging.getLogger(__name__)


def load(client: Redis, name: str) -> Script:
    """``services/lua/<name>.lua`` registered on ``client`` (for a script only one part uses,
    such as the outbox's ``deliver_once``; the state's scripts are ``Scripts``)."""
    return client.register_script(_source(name))


def _source(name: str) -> str:
    """A script's text, after the libraries its header names (``-- include: history``)."""
    text = resources.files("services").joinpath("lua", f"{name}.lua").read_text()
    libraries = [line.removeprefix(INCLUDE).strip() for line in text.splitlines()
                 if line.startswith(INCLUDE)]
    return "".join(_source(library) for library in libraries) + text


INCLUDE = "-- include: "


@dataclass(frozen=True)
class Scripts:
    begin_run: Script
    finish_run: Script
    renew_lease: Script
    control: Script
    restore_state: Script
    beat_lease: Script
    beat_poll: Script
    beat_advance: Script
    heartbeat: Script
    processes: Script
    health_note: Script

    @classmethod
    def register(cls, client: Redis) -> Scripts:
        return cls(
            begin_run=client.register_script(_source("begin_run")),
            finish_run=client.register_script(_source("finish_run")),
            renew_lease=client.register_script(_source("renew_lease")),
            control=client.register_script(_source("control")),
            restore_state=client.register_script(_source("restore_state")),
            beat_lease=client.register_script(_source("beat_lease")),
            beat_poll=client.register_script(_source("beat_poll")),
            beat_advance=client.register_script(_source("beat_advance")),
            heartbeat=client.register_script(_source("heartbeat")),
            processes=client.register_script(_source("processes")),
            health_note=client.register_script(_source("health_note")),
        )


LateReplyHandler = Callable[[Any, Any, BaseException | None], None]


class ScriptChannel:
    """This process's own connection for the scripts every run sends (guard, finish, renew).

    EVALSHA goes straight onto one pinned connection: no pool checkout, no retry wrapper, no
    per-command bookkeeping, which is most of what redis-py adds to a round trip. A script
    may also be *sent* without waiting for its reply (``send``): the reply is read, and
    handed to ``on_late_reply``, before the next command on this connection, so the worker
    goes on to its next task while Redis runs the script. Thread-safe (one lock).
    """

    def __init__(self, client: Redis, on_late_reply: LateReplyHandler) -> None:
        self.conn = client.connection_pool.get_connection()
        self.on_late_reply = on_late_reply
        self.lock = threading.Lock()
        self._pending: tuple[Script, Sequence[Any], Sequence[Any], Any] | None = None

    def call(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script and return its reply."""
        with self.lock:
            self._drain()
            try:
                self._send(script, keys, args)
                return self._read(script, keys, args)
            except BaseException:
                # Anything that cut in between send and read (a soft time limit, a signal)
                # would leave a reply unread and every later call a reply behind: drop the
                # connection instead; the next call opens a fresh one.
                self.conn.disconnect()
                raise

    def send(self, script: Script, keys: Sequence[Any], args: Sequence[Any],
             context: Any) -> None:
        """Send the script; its reply reaches ``on_late_reply(reply, context, error)`` later."""
        with self.lock:
            self._drain()
            self._pending = (script, keys, args, context)
            try:
                self._send(script, keys, args)
            except BaseException:
                self._pending = None
                self.conn.disconnect()
                raise

    def flush(self) -> None:
        """Read a reply still owed (before the process exits)."""
        with self.lock:
            self._drain()

    def _send(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> None:
        # Packed by hiredis, as redis-py's own packer does (the same bytes), without that
        # packer's copy of the arguments first (it turns bytearrays and memoryviews, which no
        # script argument is, into bytes): a generator step per argument, 26 for a guard.
        packed = [hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))]
        try:
            self.conn.send_packed_command(packed)
        except (redis.ConnectionError, redis.TimeoutError):
            # The connection had dropped (Redis restarted): nothing whole reached Redis, so
            # one more try on a fresh connection cannot run the script twice.
            self.conn.disconnect()
            self.conn.send_packed_command(packed)

    def _read(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return self.conn.read_response()
        except NoScriptError:  # a restarted or flushed Redis: load it, then run it
            self.conn.send_command("SCRIPT", "LOAD", script.script)
            self.conn.read_response()
            self._send(script, keys, args)
            return self.conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            self.conn.disconnect()
            raise

    def _drain(self) -> None:
        if self._pending is None:
            return
        script, keys, args, context = self._pending
        self._pending = None
        reply, error = None, None
        try:
            reply = self._read(script, keys, args)
        except redis.RedisError as exc:
            error = exc
        except BaseException:
            self.conn.disconnect()
            raise
        try:
            self.on_late_reply(reply, context, error)
        except Exception:  # the next command, maybe another service's, must not pay for it
            logger.exception("handling a late script reply failed")
