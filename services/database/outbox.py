"""The transactional outbox: applications write messages in their own transaction
(:func:`enqueue`); ``SVC_OutboxDispatcher`` claims, delivers and settles them
(:class:`OutboxDispatch`), on as many workers at once as ``max_concurrent_runs`` allows.

Delivery guarantees (see docs/database.md):

- a claimed row belongs to one claim until it is settled or the claim lapses
  (``SVC_OUTBOX_CLAIM_TIMEOUT_SECONDS``), so each message is delivered at most once per claim;
- a run that dies after delivering but before settling leaves its rows claimed; the claim
  lapses and another run takes them: nothing is lost;
- the Redis stream sink adds a message id at most once (``lua/deliver_once.lua``), so that
  re-delivery never duplicates an entry. An HTTP endpoint gets the same ``Idempotency-Key``
  header on every attempt and must deduplicate on it itself.
"""

from __future__ import annotations

import json
import logging
import random
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, Protocol
from urllib.parse import urlsplit

import redis
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from sqlalchemy import Row, bindparam, update
from sqlalchemy.orm import Session

from services import scripts
from services.database.locking import Claim
from services.database.models import (
    DEAD,
    PENDING,
    SENT,
    Base,
    OutboxMessage,
    new_message_id,
    status_is,
    utcnow,
)
from services.database.sessions import rowcount
from services.errors import ServiceConfigError
from services.keys import Keys
from services.settings import ComponentSettings, redact_url

logger = logging.getLogger(__name__)

# The table: the metadata's entry, which SQLAlchemy types as a Table (OutboxMessage.__table__,
# the same object, is typed as any FromClause).
OUTBOX = Base.metadata.tables[OutboxMessage.__tablename__]


class OutboxOptions(ComponentSettings):
    """The outbox's settings, ``SVC_OUTBOX_<FIELD>`` (see docs/database.md); build them with
    ``services.settings.load(OutboxOptions)`` for one-line errors, or pass fields directly."""

    model_config = SettingsConfigDict(env_prefix="SVC_OUTBOX_")

    batch_size: int = Field(100, ge=1, le=10000)
    """Rows claimed per transaction."""
    claim_timeout_seconds: float = Field(60.0, gt=0)
    """A claimed row no run settled is claimable again after this (a worker died mid-batch);
    keep it well above the time one batch takes."""
    max_attempts: int = Field(10, ge=1)
    """After this many failed deliveries a message is ``dead``."""
    retry_base_seconds: float = Field(2.0, ge=0)
    retry_max_seconds: float = Field(600.0, ge=0)
    run_budget_seconds: float = Field(20.0, gt=0)
    """One run drains batches for at most about this long."""
    stream: str = Field("outbox", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    """Messages go to the Redis stream ``<prefix>:outbox:<stream>``."""
    stream_maxlen: int = Field(0, ge=0)
    """Approximate cap of the stream; 0 keeps every entry."""
    dedupe_seconds: float = Field(7 * 86400.0, gt=0)
    """How long a delivered message id is remembered, so that a re-claimed message is never
    added to the stream twice."""
    http_url: str | None = None
    """POST each message here instead of the Redis stream."""
    http_timeout_seconds: float = Field(10.0, gt=0)
    retention_seconds: float = Field(7 * 86400.0, ge=0)
    """Sent messages older than this are deleted by ``expired_rows_cleanup``."""

    def backoff_seconds(self, attempts: int) -> float:
        """Exponential backoff after the ``attempts``-th failure, capped, with jitter so that
        messages that failed together do not all come back together."""
        delay = min(self.retry_max_seconds, self.retry_base_seconds * 2.0 ** max(attempts - 1, 0))
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


def enqueue(
    session: Session,
    topic: str,
    payload: Any,
    *,
    message_id: str | None = None,
    available_at: datetime | None = None,
) -> OutboxMessage:
    """Add a message to the outbox in ``session``'s transaction: it is delivered if and only
    if that transaction commits. Nothing is committed here."""
    message = OutboxMessage(topic=topic, payload=payload,
                            message_id=message_id or new_message_id(),
                            available_at=available_at or utcnow())
    session.add(message)
    return message


class Sink(Protocol):
    def deliver(self, rows: Sequence[Row[Any]]) -> dict[int, str | None]:
        """Deliver every row; return ``{row id: None if delivered, else the error}``."""


def _as_utc(value: datetime | None) -> str:
    if value is None:
        return ""
    # SQLite hands back naive datetimes; every time the framework stores is UTC.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


class RedisStreamSink:
    """XADD each message to ``<prefix>:outbox:<stream>``, at most once per message id; one
    pipelined round trip per batch."""

    def __init__(self, client: redis.Redis, keys: Keys, options: OutboxOptions) -> None:
        self.client = client
        self.stream_key = keys.outbox_stream(options.stream)
        self.delivered_key = keys.outbox_delivered(options.stream)
        self.dedupe_ms = int(options.dedupe_seconds * 1000)
        self.maxlen = options.stream_maxlen
        self.script = scripts.load(client, "deliver_once")
        self.duplicates = 0
        """Messages found already delivered (a lapsed claim taken over): added once anyway."""

    def deliver(self, rows: Sequence[Row[Any]]) -> dict[int, str | None]:
        pipe = self.client.pipeline(transaction=False)
        for row in rows:
            self.script(keys=[self.stream_key, self.delivered_key], args=[
                row.message_id, self.dedupe_ms, self.maxlen,
                "message_id", row.message_id, "topic", row.topic,
                "payload", json.dumps(row.payload, separators=(",", ":"), sort_keys=True),
                "created_at", _as_utc(row.created_at),
            ], client=pipe)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            # Some entries may have been added before the connection broke; the dedupe set
            # makes the retry of those a no-op.
            return {row.id: f"Redis: {type(exc).__name__}: {exc}" for row in rows}
        outcome: dict[int, str | None] = {}
        for row, reply in zip(rows, replies, strict=True):
            if isinstance(reply, Exception):
                outcome[row.id] = f"Redis: {type(reply).__name__}: {reply}"
                continue
            if not int(reply[0]):
                self.duplicates += 1
            outcome[row.id] = None
        return outcome


class HttpSink:
    """POST each message as JSON to one URL, with ``Idempotency-Key: <message_id>``; any 2xx
    answer means delivered."""

    def __init__(self, url: str, timeout_seconds: float) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ServiceConfigError(
                f"SVC_OUTBOX_HTTP_URL {redact_url(url)!r} must be an http:// or https:// URL")
        self.url = url
        self.timeout = timeout_seconds

    def deliver(self, rows: Sequence[Row[Any]]) -> dict[int, str | None]:
        return {row.id: self._post(row) for row in rows}

    def _post(self, row: Row[Any]) -> str | None:
        body = json.dumps({"message_id": row.message_id, "topic": row.topic,
                           "payload": row.payload, "created_at": _as_utc(row.created_at)})
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            self.url, data=body.encode(), method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": row.message_id})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                response.read()
            return None
        except urllib.error.HTTPError as exc:
            detail = exc.read(200).decode(errors="replace").strip()
            return f"HTTP {exc.code} from {redact_url(self.url)}: {detail}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"cannot reach {redact_url(self.url)}: {reason}"


@dataclass
class BatchResult:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    dead: int = 0
    lost_claims: int = 0
    """Rows this claim no longer held when it settled (its claim lapsed and another run took
    them over): that run settles them."""
    errors: list[str] = field(default_factory=list)


class OutboxDispatch:
    """Claim, deliver and settle outbox batches. Each step commits its own short transaction:
    no row lock is held while a message is on its way."""

    def __init__(self, options: OutboxOptions) -> None:
        self.options = options
        c = OUTBOX.c
        self.claim = Claim(
            OUTBOX,
            where=status_is(c.status, PENDING) & (c.available_at <= bindparam("now")),
            # Pushing available_at to the claim's end makes an abandoned claim lapse by itself
            # and keeps claimed rows out of the partial index's range the next claim scans.
            values={"attempts": c.attempts + 1, "available_at": bindparam("until"),
                    "claimed_by": bindparam("token"), "claimed_at": bindparam("now")},
            order_by=(c.available_at, c.id),
            returning=(c.id, c.message_id, c.topic, c.payload, c.attempts, c.created_at),
        )
        # The id is the first column returned; by position, because a Row's attribute
        # lookup (row.id) made sorting a batch of 100 cost ~25 us, 5% of the claim's CPU.
        self._by_id = itemgetter(0)

    @staticmethod
    def new_token(run_id: str | None) -> str:
        return f"{run_id or 'manual'}:{uuid.uuid4().hex[:12]}"

    def claim_batch(self, session: Session, token: str) -> list[Row[Any]]:
        now = utcnow()
        rows = self.claim(session, self.options.batch_size, now=now, token=token,
                          until=now + timedelta(seconds=self.options.claim_timeout_seconds))
        session.commit()
        # RETURNING follows no ORDER BY: deliver each batch oldest first. Across concurrent
        # runs there is no global order; consumers that need one order by created_at.
        rows.sort(key=self._by_id)
        return rows

    def settle(self, session: Session, token: str, rows: Sequence[Row[Any]],
               outcome: dict[int, str | None]) -> BatchResult:
        """Mark delivered rows sent and back off (or bury) failed ones, only where this claim
        still holds the row."""
        result = BatchResult(claimed=len(rows))
        now = utcnow()
        mine = (OUTBOX.c.claimed_by == token) & (OUTBOX.c.status == PENDING)
        sent_ids = [row.id for row in rows if outcome.get(row.id, "not delivered") is None]
        if sent_ids:
            done = session.execute(
                update(OUTBOX).where(OUTBOX.c.id.in_(sent_ids) & mine)
                .values(status=SENT, sent_at=now, last_error=None))
            result.sent = rowcount(done)
            result.lost_claims += len(sent_ids) - result.sent
        for row in rows:
            error = outcome.get(row.id, "not delivered")
            if error is None:
                continue
            result.errors.append(f"{row.message_id}: {error}")
            if row.attempts >= self.options.max_attempts:
                values: dict[str, Any] = {"status": DEAD, "last_error": error[:2000]}
            else:
                retry_at = now + timedelta(seconds=self.options.backoff_seconds(row.attempts))
                values = {"available_at": retry_at, "last_error": error[:2000]}
            changed = session.execute(
                update(OUTBOX).where((OUTBOX.c.id == row.id) & mine).values(values))
            if not rowcount(changed):
                result.lost_claims += 1
            elif values.get("status") == DEAD:
                result.dead += 1
            else:
                result.retried += 1
        session.commit()
        return result
