"""``svc web``: serve the services page (:mod:`worker.web`) until Ctrl-C or SIGTERM.

Like Flower, it never listens on an address other than loopback without a login
(SVC_WEB_BASIC_AUTH): that is refused in one line, exit 2, before anything listens. While it
runs it also takes its turn at watching health (:mod:`worker.watch`), so notifications keep
coming when every worker is gone.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import typer

from services.settings import redact_url
from worker import cli_render as render
from worker import extras
from worker.cli_edge import EXIT_USAGE, edge, fail
from worker.flower_guard import is_loopback
from worker.ops import Operator
from worker.watch import BackgroundWatch


@edge
def web(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="Port (default SVC_WEB_PORT; 0: any free port).")] = None,
    address: Annotated[str | None, typer.Option(
        help="Address (default SVC_WEB_ADDRESS); other than loopback only with "
             "SVC_WEB_BASIC_AUTH.")] = None,
) -> None:
    """Serve the services page: every service's state, health, schedule, runs, lease and
    the live workers, refreshed in place, with pause/resume/stop/start/reset/trigger."""
    if missing := extras.needs("svc web", "web", "tornado"):
        raise fail(missing, EXIT_USAGE)
    from worker.web import Site, serve

    op: Operator = ctx.obj
    settings = op.settings
    address = address or settings.web_address
    port = settings.web_port if port is None else port
    if not settings.web_logins and not is_loopback(address):
        raise fail(f"refusing to serve the services page on {address}:{port} without a "
                   "login: set SVC_WEB_BASIC_AUTH=user:password, or --address 127.0.0.1",
                   EXIT_USAGE)
    def ready(host: str, bound: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        render.console().print(f"serving the services page on http://{shown}:{bound}/ "
                               f"(Redis {redact_url(settings.redis_url)}); Ctrl-C stops",
                               markup=False, soft_wrap=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(Site(op, settings.web_logins), address, port, ready, stop)

    with BackgroundWatch(settings, "web"):
        asyncio.run(run())
