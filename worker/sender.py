"""A Celery app that only sends tasks, for ``svc trigger``.

``worker.celery_app`` builds its app from the process-wide settings at import time and
discovers every service; the CLI instead sends with the settings it was given at its edge,
so it needs an app of its own. ``message_settings`` is what both apps share: the broker's key
prefix, JSON as the only format and TLS that verifies, so the two cannot drift apart.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from celery import Celery

from services.settings import Settings


def message_settings(settings: Settings) -> dict[str, Any]:
    """Celery settings every app of ours uses to talk to the broker: JSON only (pickle is
    refused), the broker's keys under ``SVC_BROKER_PREFIX``, and a ``rediss://`` broker's
    certificate verified (``broker_tls``)."""
    return {
        **broker_tls(settings.effective_broker_url),
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "broker_transport_options": (
            {"global_keyprefix": settings.broker_prefix} if settings.broker_prefix else {}),
    }


def broker_tls(url: str) -> dict[str, Any]:
    """``broker_use_ssl`` that verifies the server's certificate when a ``rediss://`` URL does
    not say otherwise.

    Given a bare ``rediss://`` URL, kombu logs a warning and connects with ``CERT_NONE``,
    while redis-py (the state connection) verifies by default: the worker would say ready
    and every run fail, or, with a server that presents any certificate, the broker would
    trust it. So both verify unless the URL's ``ssl_cert_reqs=none|optional|required``, which
    kombu and redis-py both read, says otherwise. A URL with ``ssl_*`` parameters is read by
    kombu itself and wins over these options; they are copied here all the same so the
    settings show what the connection does.
    """
    urls = [part for part in url.split(";") if urlsplit(part).scheme == "rediss"]
    queries = [dict(parse_qsl(urlsplit(part).query)) for part in urls]
    if not urls or all("ssl_cert_reqs" in query for query in queries):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        found = next((query[key] for query in queries if key in query), None)
        if found is not None:
            options[key] = found
    return {"broker_use_ssl": options}


def make_sender(settings: Settings) -> Celery:
    """A sending-only app for ``settings``' broker; close it after use."""
    app = Celery("svc", broker=settings.effective_broker_url, set_as_current=False)
    app.conf.update(
        **message_settings(settings),
        # An operator's command should fail fast when the broker is away, not retry for long.
        broker_connection_timeout=5,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 1},
    )
    return app
