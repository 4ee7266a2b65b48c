"""A Celery app that only sends tasks, for ``svc trigger``.

``worker.celery_app`` builds its app from the process-wide settings at import time and
discovers every service; the CLI instead sends with the settings it was given at its edge,
so it needs an app of its own. It must reach the same broker, under the same key prefix, in
the same (JSON) format as the workers' app.
"""

from __future__ import annotations

from celery import Celery

from services.settings import Settings


def make_sender(settings: Settings) -> Celery:
    """A sending-only app for ``settings``' broker; close it after use."""
    app = Celery("svc", broker=settings.effective_broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=(
            {"global_keyprefix": settings.broker_prefix} if settings.broker_prefix else {}),
        # An operator's command should fail fast when the broker is away, not retry for long.
        broker_connection_timeout=5,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 1},
    )
    return app
