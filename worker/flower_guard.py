"""Flower never serves without a login on an address other machines can reach.

Flower's UI shows every task's arguments and can shut down workers, and by default it listens
on every interface with no login. ``celery -A worker flower`` imports our Celery app before
Flower reads its options, so ``refuse_open_flower()`` (called by ``worker.celery_app``) reads
them first, the way Flower will: ``FLOWER_*`` environment variables, then the config file
(``--conf``, default ``flowerconfig.py``), then the command line, later ones winning. When the
address is not loopback (no ``--address`` means every interface) and neither
``--basic-auth``/``FLOWER_BASIC_AUTH`` nor ``--auth`` (OAuth) is set, the process exits with
one line before anything listens. A Unix socket (``--unix-socket``) counts as local.

Only the ``flower`` sub-command of ``celery`` is looked at; a worker or Beat never is.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# celery's global options that take a value: the word after them is not the sub-command.
_CELERY_VALUE_OPTIONS = frozenset(
    {"-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config", "--workdir"})
_DEFAULT_CONF = "flowerconfig.py"  # Flower's own default for --conf
EXIT_REFUSED = 2


@dataclass(frozen=True)
class FlowerAccess:
    """Where Flower will listen, and whether it asks for a login."""

    address: str  # "" means every interface, as Flower's default
    port: int
    unix_socket: str
    basic_auth: tuple[str, ...]
    auth: str

    @property
    def has_login(self) -> bool:
        return any(self.basic_auth) or bool(self.auth)

    @property
    def is_local(self) -> bool:
        return bool(self.unix_socket) or is_loopback(self.address)

    def where(self) -> str:
        if not self.address:
            return f"every interface, port {self.port}"
        return f"{self.address}:{self.port}"


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # "" (every interface) or a host name: reachable from elsewhere


def flower_args(argv: Sequence[str]) -> list[str] | None:
    """The arguments after ``flower`` when ``argv`` is ``celery [options] flower ...``
    (or ``python -m celery ...``); ``None`` for anything else."""
    if not argv or "celery" not in (Path(argv[0]).name, Path(argv[0]).parent.name):
        return None
    index = 1
    while index < len(argv):
        arg = argv[index]
        if arg in _CELERY_VALUE_OPTIONS:
            index += 2
        elif arg.startswith("-"):
            index += 1
        else:
            return list(argv[index + 1:]) if arg == "flower" else None
    return None


def read_access(args: Sequence[str], environ: Mapping[str, str]) -> FlowerAccess | None:
    """Flower's address and login options from ``args`` (what follows ``flower``), the
    environment and the config file, in Flower's order; ``None`` when Flower would refuse
    them itself (a malformed option)."""
    from tornado.options import Error, OptionParser

    # A parser of our own: Flower's global one must stay untouched until Flower parses.
    parser = OptionParser()
    parser.define("address", default="", type=str)
    parser.define("port", default=5555, type=int)
    parser.define("unix_socket", default="", type=str)
    parser.define("auth", default="", type=str)
    parser.define("basic_auth", default=None, type=str, multiple=True)
    parser.define("conf", default=_DEFAULT_CONF, type=str)
    ours = [arg for arg in args
            if arg.lstrip("-").partition("=")[0].replace("_", "-") in parser._options]
    try:
        for name in ("address", "port", "unix_socket", "auth", "basic_auth", "conf"):
            value = environ.get(f"FLOWER_{name.upper()}")
            if value is not None:
                parser._options[name.replace("_", "-")].parse(value)
        parser.parse_command_line(["flower", *ours], final=False)
        conf = os.path.abspath(parser.conf)
        if Path(conf).is_file():
            # Flower executes this file too; it is the operator's own configuration.
            parser.parse_config_file(conf, final=False)
            parser.parse_command_line(["flower", *ours], final=False)
    except (Error, ValueError):
        return None
    return FlowerAccess(address=parser.address, port=parser.port,
                        unix_socket=parser.unix_socket,
                        basic_auth=tuple(parser.basic_auth or ()), auth=parser.auth)


def refusal(access: FlowerAccess) -> str | None:
    """The one-line reason Flower must not start with ``access``, or ``None``."""
    if access.is_local or access.has_login:
        return None
    return (f"refusing to start Flower on {access.where()} without a login: set "
            "FLOWER_BASIC_AUTH=user:password (or --auth for OAuth), or listen on loopback "
            "with --address=127.0.0.1")


def refuse_open_flower(argv: Sequence[str] | None = None,
                       environ: Mapping[str, str] | None = None) -> None:
    """Exit (code 2, one line on stderr) when this process is ``celery ... flower`` about to
    serve a non-loopback address without a login; otherwise do nothing."""
    args = flower_args(sys.argv if argv is None else argv)
    if args is None:
        return
    access = read_access(args, os.environ if environ is None else environ)
    reason = refusal(access) if access is not None else None
    if reason is not None:
        print(f"flower: {reason}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_REFUSED)
