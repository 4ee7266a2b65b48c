"""A Celery app that only sends tasks, for ``svc trigger``.

``worker.celery_app`` builds its app from the process-wide settings at import time and
discovers every service; the CLI instead sends with the settings it was given at its edge,
so it needs an app of its own. ``message_settings`` is what both apps share: the broker's key
prefix and JSON as the only format, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from services.settings import Settings


def message_settings(settings: Settings) -> dict[str, Any]:
    """Celery settings every app of ours uses to talk to the broker: JSON only (pickle is
    refused), and the broker's keys under ``SVC_BROKER_PREFIX``."""
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "broker_transport_options": (
            {"global_keyprefix": settings.broker_prefix} if settings.broker_prefix else {}),
    }


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
