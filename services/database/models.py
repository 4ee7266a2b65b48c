"""The framework's own tables (SQLAlchemy 2.0 typed models), managed by the Alembic
migrations in ``services/database/migrations``.

Table names start with ``svc_`` and the migrations keep their version in
``svc_alembic_version``, so they live beside an application's own tables and migrations in
the same database without touching them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PENDING, SENT, DEAD = "pending", "sent", "dead"
OUTBOX_STATUSES = (PENDING, SENT, DEAD)


def status_is(column: Any, status: str) -> Any:
    """``column = '<status>'`` with the value written into the SQL, not bound: PostgreSQL can
    use a partial index (``WHERE status = 'pending'``) only when the query states its
    predicate literally; a generic plan for a prepared statement with a parameter cannot."""
    if status not in OUTBOX_STATUSES:
        raise ValueError(f"unknown outbox status {status!r}")
    return column == literal_column(f"'{status}'")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_message_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# SQLite only makes an INTEGER PRIMARY KEY an alias of its rowid (auto-increment).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class OutboxMessage(Base):
    """A message written in the same transaction as the change it announces (the
    transactional outbox), delivered later by ``SVC_OutboxDispatcher``.

    Life of a row: ``pending`` -> claimed by a run (``claimed_by``, ``attempts + 1``, and
    ``available_at`` pushed to the end of the claim, so an abandoned claim lapses by itself)
    -> ``sent``; or, after a failed delivery, ``pending`` again with ``available_at`` backed
    off; after ``SVC_OUTBOX_MAX_ATTEMPTS`` failures, ``dead``.
    """

    __tablename__ = "svc_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(64), unique=True, default=new_message_id)
    """Stable across retries: consumers and the Redis dedupe set key on it."""
    topic: Mapped[str] = mapped_column(String(255))
    payload: Mapped[Any] = mapped_column(JSON().with_variant(JSONB(), "postgresql"))
    status: Mapped[str] = mapped_column(String(16), default=PENDING,
                                        server_default=text(f"'{PENDING}'"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    available_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP"))
    """Not before: the end of a backoff, or of the current claim."""
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    """The claim that holds (or last held) the row; settling a batch is fenced on it."""
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP"))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(f"status IN ('{PENDING}', '{SENT}', '{DEAD}')", name="status"),
        # Claims walk pending rows in available_at order and stop at LIMIT; without this
        # partial index every claim walks past every row already sent (see docs/database.md).
        Index("ix_svc_outbox_pending", "available_at", "id",
              postgresql_where=text(f"status = '{PENDING}'"),
              sqlite_where=text(f"status = '{PENDING}'")),
        # The cleanup deletes sent rows oldest first, in small batches.
        Index("ix_svc_outbox_sent", "sent_at",
              postgresql_where=text(f"status = '{SENT}'"),
              sqlite_where=text(f"status = '{SENT}'")),
    )

    def __repr__(self) -> str:
        return (f"OutboxMessage(id={self.id!r}, message_id={self.message_id!r}, "
                f"topic={self.topic!r}, status={self.status!r}, attempts={self.attempts!r})")
