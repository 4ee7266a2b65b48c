"""Health notifications: once per transition, cluster-wide, off the run path.

:meth:`Notifier.observe` records a service's health with ``health_note.lua``, a
compare-and-set in ``<p>:_health``: of all the processes that see the same transition, only
the one whose call wins it notifies. The notification then goes out from a background
thread, so a slow or dead endpoint never holds up the caller: to the project's hook
(``SVC_ON_HEALTH_CHANGE=package.module:function``, called with a
:class:`services.health.HealthChange`) and to the webhook (``SVC_ALERT_WEBHOOK_URL``: a JSON
POST a Slack incoming webhook accepts), each attempt bounded by
``SVC_ALERT_WEBHOOK_TIMEOUT_SECONDS``, retried with backoff up to
``SVC_ALERT_WEBHOOK_ATTEMPTS`` times.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from services import logs
from services.errors import ServiceConfigError
from services.health import IMMEDIATE, Health, HealthChange
from services.settings import Settings, redact_url
from services.state import StateStore

logger = logging.getLogger(__name__)

Hook = Callable[[HealthChange], object]
# Transitions waiting for the sender thread; past this, new ones are logged and dropped
# (an endpoint down for hours must not grow the process without bound).
MAX_PENDING = 1000
MAX_BACKOFF_SECONDS = 30.0
DETAIL_LENGTH = 500


def load_hook(spec: str) -> Hook | None:
    """``package.module:function`` (SVC_ON_HEALTH_CHANGE) as a callable; None when unset.
    Raises :class:`ServiceConfigError` naming the variable when it cannot be loaded."""
    if not spec:
        return None
    module_name, _, attribute = spec.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:
        raise ServiceConfigError(
            f"SVC_ON_HEALTH_CHANGE={spec!r} cannot be loaded ({type(exc).__name__}: {exc}); "
            "expected 'package.module:function'") from None
    if not callable(hook):
        raise ServiceConfigError(f"SVC_ON_HEALTH_CHANGE={spec!r} is not callable; expected "
                                 "'package.module:function'")
    # Callable is as much as can be checked of a user's function before it is called.
    checked: Hook = hook
    return checked


class Notifier:
    def __init__(self, store: StateStore, settings: Settings, hook: Hook | None = None) -> None:
        self.store = store
        self.hook = hook if hook is not None else load_hook(settings.on_health_change)
        self.url = settings.alert_webhook_url
        self.timeout = settings.alert_webhook_timeout_seconds
        self.attempts = settings.alert_webhook_attempts
        self.hold_ms = int(settings.alert_after_seconds * 1000)
        self._pending: queue.Queue[HealthChange | None] = queue.Queue(MAX_PENDING)
        self._sender: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def observe(self, name: str, health: Health) -> HealthChange | None:
        """Record ``name``'s health; returns the transition when this call won it (it is then
        being notified)."""
        return self.observe_all({name: health}).get(name)

    def observe_all(self, healths: Mapping[str, Health]) -> dict[str, HealthChange]:
        """:meth:`observe` for many services in one round trip; the transitions this call won."""
        with self.store.reaching(), self.store.client.pipeline(transaction=False) as pipe:
            for name, health in healths.items():
                hold = 0 if health.status in IMMEDIATE else self.hold_ms
                self.store.scripts.health_note(
                    keys=[self.store.keys.health()], client=pipe,
                    args=[name, health.status, health.summary()[:DETAIL_LENGTH],
                          health.alert_class, hold])
            replies = pipe.execute()
        won = {}
        for (name, health), (sent, previous, since_ms, now_ms) in zip(
                healths.items(), replies, strict=True):
            if sent:
                won[name] = self._announce(HealthChange(
                    name, "ok" if health.ok else health.status, str(previous), health,
                    float(now_ms) / 1000, float(since_ms) / 1000))
        return won

    def _announce(self, change: HealthChange) -> HealthChange:
        with logs.bound(change.service):
            (logger.info if change.recovered else logger.warning)("health: %s", change.text())
        self._enqueue(change)
        return change

    @property
    def has_destination(self) -> bool:
        """A hook or a webhook to send to: a process without either must not decide
        transitions, or they would be marked notified and sent nowhere."""
        return self.hook is not None or self.url is not None

    def close(self, timeout: float = 5.0) -> None:
        """Send what is pending for up to ``timeout`` (no more backoff waits: a process
        stopping has little time), then give up on the rest, saying how much."""
        sender = self._sender
        if sender is None:
            return
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._pending.put_nowait(None)
        sender.join(timeout)
        if sender.is_alive():  # a daemon thread: it ends with the process
            logger.error("shutting down with health notifications unsent: one being sent "
                         "and about %d more waiting", max(self._pending.qsize() - 1, 0))

    def _enqueue(self, change: HealthChange) -> None:
        if self.hook is None and self.url is None:
            return
        with self._lock:
            if self._sender is None or not self._sender.is_alive():
                self._sender = threading.Thread(target=self._send_all, name="svc-notify",
                                                daemon=True)
                self._sender.start()
        try:
            self._pending.put_nowait(change)
        except queue.Full:
            with logs.bound(change.service):
                logger.error("health notification dropped: %d are already waiting to be sent",
                             MAX_PENDING)

    def _send_all(self) -> None:
        while (change := self._pending.get()) is not None:
            with logs.bound(change.service):
                self._call_hook(change)
                if self.url is not None:
                    self._post(change)

    def _call_hook(self, change: HealthChange) -> None:
        if self.hook is None:
            return
        try:
            self.hook(change)
        except Exception:
            logger.exception("SVC_ON_HEALTH_CHANGE hook failed for %s", change.text())

    def _post(self, change: HealthChange) -> None:
        assert self.url is not None
        body = json.dumps(change.as_json()).encode()
        delay = 1.0
        for attempt in range(1, self.attempts + 1):
            error = self._post_once(body)
            if error is None:
                return
            if attempt == self.attempts or self._stopping.wait(delay):
                logger.error("health webhook %s failed %d times, giving up on: %s (%s)",
                             redact_url(self.url), attempt, change.text(), error)
                return
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _post_once(self, body: bytes) -> str | None:
        """One POST; the error as text, or None when the endpoint took it (2xx)."""
        assert self.url is not None
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in settings
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "svc-health"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:  # noqa: S310
                reply.read(1024)
            return None
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response's socket
            return f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # refused, timed out, unreachable, bad reply
            return f"{type(exc).__name__}: {exc}"
