"""MySQL/MariaDB only: microsecond times, and a pending index that leads with the status.

Revision ID: 0002_mysql_outbox
Revises: 0001_outbox
Create Date: 2026-12-03

PostgreSQL and SQLite are left as they are; on them this revision does nothing.

- ``DateTime`` is ``DATETIME`` on MySQL/MariaDB, which keeps whole seconds (MariaDB drops the
  fraction, MySQL rounds it). A claim then lapses up to a second early (at once, for a claim
  timeout under a second), and a backoff shorter than a second is no backoff. ``DATETIME(6)``
  keeps the microseconds PostgreSQL and SQLite keep. ``CURRENT_TIMESTAMP(6)``: MySQL 8
  refuses a default whose precision differs from the column's.
- Neither has partial indexes, so 0001 built ``ix_svc_outbox_pending`` there as a plain
  index on ``(available_at, id)``. Sent rows stay in it, with ``available_at`` in the past,
  so a claim (``status = 'pending' AND available_at <= now ORDER BY available_at, id``)
  walks every sent row before the first pending one. With ``status`` first, the claim reads
  only pending rows, in the same order. ``ix_svc_outbox_sent`` stays plain: the cleanup's
  ``sent_at < cutoff`` range holds sent rows only (the others have no ``sent_at``).
"""

from __future__ import annotations

from alembic import op

revision = "0002_mysql_outbox"
down_revision = "0001_outbox"
branch_labels = None
depends_on = None


def _is_mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def upgrade() -> None:
    if not _is_mysql():
        return
    # One ALTER: MySQL rebuilds the table once, not once per column.
    op.execute(
        "ALTER TABLE svc_outbox "
        "MODIFY available_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
        "MODIFY claimed_at DATETIME(6) NULL, "
        "MODIFY created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
        "MODIFY sent_at DATETIME(6) NULL, "
        "DROP INDEX ix_svc_outbox_pending, "
        "ADD INDEX ix_svc_outbox_pending (status, available_at, id)")


def downgrade() -> None:
    if not _is_mysql():
        return
    op.execute(
        "ALTER TABLE svc_outbox "
        "MODIFY available_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, "
        "MODIFY claimed_at DATETIME NULL, "
        "MODIFY created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, "
        "MODIFY sent_at DATETIME NULL, "
        "DROP INDEX ix_svc_outbox_pending, "
        "ADD INDEX ix_svc_outbox_pending (available_at, id)")
