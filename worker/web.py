"""``svc web``: the services page. Every service's state, health and why, schedule and next
tick, last run and error, failures, lease holder, and the live workers and Beats, refreshed
in place every few seconds; a page per service with its runs and audit, and the operator
actions (pause, resume, stop, start, reset, trigger), audited like ``svc``'s.

Why Tornado: it is already installed (Flower runs on it), so the page costs no new
dependency; its templates escape every ``{{ value }}`` by default (every value here comes
from Redis, which anyone can write); ``xsrf_cookies`` gives the forms CSRF protection; and
one process serves it. No JavaScript build step: a few lines of inline script fetch a
server-rendered fragment (``/fragment/...``) and swap it in.

Protection, as for Flower: basic auth from SVC_WEB_BASIC_AUTH (``svc web`` refuses to listen
on an address other than loopback without it); every change is a POST carrying the form's
CSRF token (and, on Tornado 6.5+, from the page's own origin); a Content-Security-Policy
lets only this page's own inline script and style run (a nonce per response); the page may
not be framed.

Redis is read through the one :class:`worker.ops.Operator` of the process, on one thread
(``Site.executor``), so a slow Redis never blocks the event loop and the Operator is never
used by two threads at once. One snapshot per page (``Operator.snapshot``), plus the leader
Beat's stats.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import logging
import secrets
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import redis
import tornado.web
from kombu.exceptions import OperationalError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from services.errors import (
    ServiceConfigError,
    StateCorruptError,
    StateUnavailableError,
    UnknownServiceError,
)
from services.settings import redact_url
from worker import web_view as view
from worker.ops import (
    ACTIONS,
    MAX_REASON_LENGTH,
    InvalidArgumentError,
    InvalidNameError,
    Operator,
    actor,
    check_reason,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

TEMPLATES = Path(__file__).with_name("web_templates")
REFRESH_MS = 3000
ROWS = 20
"""Runs and audit entries shown on a service's page."""
# A form holds a reason of at most MAX_REASON_LENGTH characters: anything far bigger is not
# one of our forms, and is refused before it is read.
MAX_BODY_BYTES = 64 * 1024
NAME = r"([^/]+)"
CSP = ("default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
       "connect-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


class Refused(tornado.web.HTTPError):
    """A request answered with ``status`` and one line saying why (never a traceback)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, "%s", " ".join(message.split()))


@dataclass
class Site:
    """What every request shares: the Operator, the logins, and the one thread that reads
    and writes Redis."""

    op: Operator
    logins: Mapping[str, str]
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="svc-web-redis"))

    async def call(self, work: Callable[[], T]) -> T:
        """``work()`` on the Redis thread; the errors an operator can meet become
        :class:`Refused` with the status that says what they are."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, work)
        except (UnknownServiceError, InvalidNameError) as exc:
            raise Refused(404, str(exc)) from None
        except (InvalidArgumentError, ServiceConfigError) as exc:
            message = str(exc)
            if "nothing was" not in message:  # trigger's own says "nothing was sent"
                message += "; nothing was changed"
            raise Refused(400, message) from None
        except StateUnavailableError as exc:
            raise Refused(503, str(exc)) from None
        except StateCorruptError as exc:
            raise Refused(500, str(exc)) from None
        except redis.RedisError as exc:
            url = redact_url(self.op.settings.redis_url)
            raise Refused(503, f"Redis at {url} failed: {type(exc).__name__}: {exc}") from None
        except OperationalError as exc:  # kombu: the broker (trigger)
            url = redact_url(self.op.settings.effective_broker_url)
            raise Refused(503, f"cannot reach the broker at {url}: {exc}") from None


def login_of(header: str, logins: Mapping[str, str]) -> str | None:
    """The user a ``Basic`` Authorization header proves, or None. Every login is compared,
    in constant time, so the time taken says nothing about which user (or password) was
    close."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode(
            "utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    found = None
    for known, secret in logins.items():
        # ``&``, not ``and``: both comparisons run whatever the first says.
        if hmac.compare_digest(known.encode(), user.encode()) & hmac.compare_digest(
                secret.encode(), password.encode()):
            found = known
    return found if sep else None


class Page(tornado.web.RequestHandler):
    """Security headers, basic auth, and one-line errors for every handler."""

    live_src: str | None = None
    """The fragment a page refreshes from; an error page (5xx) keeps polling it."""

    def initialize(self, site: Site) -> None:
        self.site = site
        self.login: str | None = None

    @functools.cached_property
    def nonce(self) -> str:
        return secrets.token_urlsafe(18)

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("Content-Security-Policy", CSP.format(nonce=self.nonce))
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    def compute_etag(self) -> None:
        return None  # every answer is fresh (Cache-Control: no-store)

    def authenticate(self) -> None:
        if self.login is not None:
            return
        if not self.site.logins:
            # Without a login the page listens on loopback only; a request naming another
            # host came through DNS rebinding (a page elsewhere resolved to 127.0.0.1), and
            # would otherwise be same-origin for the CSRF check.
            if host_name(self.request.host) not in LOOPBACK_NAMES:
                raise Refused(403, f"Host {self.request.host!r} is not this machine's "
                              "loopback name; open http://127.0.0.1 (or set "
                              "SVC_WEB_BASIC_AUTH)")
            self.login = ""
            return
        user = login_of(self.request.headers.get("Authorization", ""), self.site.logins)
        if user is None:
            raise Refused(401, "a login is needed (SVC_WEB_BASIC_AUTH)")
        self.login = user

    def prepare(self) -> None:
        self.authenticate()

    def check_xsrf_cookie(self) -> None:
        # Tornado checks the token before prepare(): ask for the login first, so that a
        # request without one learns nothing from the answer but that a login is needed.
        self.authenticate()
        try:
            super().check_xsrf_cookie()
        except tornado.web.HTTPError:
            raise Refused(403, "the form's CSRF token is missing or does not match its "
                          "cookie (reload the page and try again); nothing was changed"
                          ) from None

    def who(self) -> str:
        """Who a change is recorded as: the login and where it came from, or (no login
        configured) whoever runs ``svc web``."""
        if self.login:
            return f"web:{self.login}@{self.request.remote_ip}"
        return actor()

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace.update(
            nonce=self.nonce, login=self.login or "", refresh_ms=REFRESH_MS,
            redis=redact_url(self.site.op.settings.redis_url),
            prefix=self.site.op.settings.key_prefix, quote=quote)
        return namespace

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if not isinstance(value, Refused):
            super().log_exception(typ, value, tb)  # a bug: with its traceback
            return
        # A page left open during an outage asks every few seconds, and the health watch
        # already reports the outage once: a refusal is news only when it may be an attack.
        logger.log(logging.WARNING if value.status_code == 403 else logging.INFO,
                   "%d %s %s: %s", value.status_code, self.request.method, self.request.uri,
                   (value.log_message or "") % value.args)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        else:
            message = f"{status_code} {self._reason}"
            if status_code >= 500:
                message = "internal error in svc web (its log has the details)"
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Basic realm="services", charset="UTF-8"')
        message = view.visible(message)
        if self.request.path.startswith("/fragment/"):
            self.render("banner.html", message=message)
        else:
            # Redis away (503) or a key of the wrong type (500): keep asking, so the page
            # recovers by itself once it is fixed.
            live = self.live_src if status_code >= 500 else None
            self.render("error.html", message=message, live_src=live)


class ListPage(Page):
    fragment = False

    async def get(self) -> None:
        self.live_src = "/fragment/services"
        data = await self.site.call(lambda: view.read_list(self.site.op))
        self.render("services_fragment.html" if self.fragment else "services.html", **data)


class ListFragment(ListPage):
    fragment = True


class ServicePage(Page):
    fragment = False

    async def get(self, name: str) -> None:
        self.live_src = f"/fragment/service/{quote(name, safe='')}"
        data = await self.site.call(lambda: view.read_service(self.site.op, name, ROWS))
        if self.fragment:
            self.render("service_fragment.html", **data)
            return
        did = self.get_query_argument("did", "")
        self.render("service.html", **data, did=did if did in (*ACTIONS, "trigger") else "",
                    actions=list(view.ACTION_HELP.items()), max_reason=MAX_REASON_LENGTH)


class ServiceFragment(ServicePage):
    fragment = True


class Control(Page):
    """POST /service/NAME/control (action, reason): ``svc ACTION NAME --reason REASON``."""

    async def post(self, name: str) -> None:
        action = self.get_body_argument("action", "")
        if action not in ACTIONS:
            raise Refused(400, f"action must be one of {', '.join(ACTIONS)}; nothing was "
                          "changed")
        reason = self.get_body_argument("reason", "").strip()
        if not reason:
            raise Refused(400, "a reason is needed (it is kept in the audit record); nothing "
                          "was changed")
        try:
            check_reason(reason)
        except InvalidArgumentError as exc:
            raise Refused(400, str(exc).replace("--reason", "the reason", 1)
                          + "; nothing was changed") from None
        who, op = self.who(), self.site.op

        def change() -> str:
            op.refresh()
            (found,) = op.resolve([name])
            op.control([found], action, reason, who=who)
            return found

        found = await self.site.call(change)
        self.redirect(f"/service/{quote(found, safe='')}?did={action}", status=303)


class Trigger(Page):
    """POST /service/NAME/trigger: ``svc trigger NAME``."""

    async def post(self, name: str) -> None:
        op = self.site.op

        def send() -> str:
            op.refresh()
            (found,) = op.resolve([name])
            op.trigger([found])
            return found

        found = await self.site.call(send)
        self.redirect(f"/service/{quote(found, safe='')}?did=trigger", status=303)


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def host_name(host: str) -> str:
    """``127.0.0.1:5556`` -> ``127.0.0.1``; ``[::1]:5556`` -> ``::1``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class NotFound(Page):
    def prepare(self) -> None:
        super().prepare()
        raise Refused(404, f"no page at {self.request.path}")


# -- serving -------------------------------------------------------------------------------


def make_app(site: Site) -> tornado.web.Application:
    routes: list[Any] = [
        (r"/", ListPage), (r"/fragment/services", ListFragment),
        (rf"/service/{NAME}", ServicePage), (rf"/fragment/service/{NAME}", ServiceFragment),
        (rf"/service/{NAME}/control", Control), (rf"/service/{NAME}/trigger", Trigger)]
    return tornado.web.Application(
        [(pattern, handler, {"site": site}) for pattern, handler in routes],
        template_path=str(TEMPLATES), autoescape="xhtml_escape",
        xsrf_cookies=True, xsrf_cookie_kwargs={"httponly": True, "samesite": "Strict"},
        cross_origin_protection=True,  # Tornado 6.5+: Sec-Fetch-Site / Origin checks too
        default_handler_class=NotFound, default_handler_args={"site": site},
        log_function=log_request)


def log_request(handler: tornado.web.RequestHandler) -> None:
    # A page left open asks every few seconds: each request at DEBUG, and failures, which
    # the health watch and the page's banner already report, at INFO.
    status = handler.get_status()
    logger.log(logging.INFO if status >= 400 else logging.DEBUG, "%d %s %s %.1fms", status,
               handler.request.method, handler.request.uri,
               1000 * handler.request.request_time())


async def serve(site: Site, address: str, port: int, ready: Callable[[str, int], None],
                stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set. ``ready(address, port)`` is called once listening
    (``port`` 0 takes any free port; ``ready`` gets the one taken)."""
    sockets = bind_sockets(port, address)
    server = HTTPServer(make_app(site), max_body_size=MAX_BODY_BYTES)
    server.add_sockets(sockets)
    try:
        ready(address, sockets[0].getsockname()[1])
        await stop.wait()
    finally:
        server.stop()
        await server.close_all_connections()
        site.executor.shutdown(wait=False, cancel_futures=True)
