"""Which Beat sends: a lease in Redis with a fencing token (``services/lua/beat_lease.lua``).

Every Beat polls; the one that claims the lease is the leader and renews it every third of
``SVC_BEAT_LEASE_SECONDS``. The lease's value carries a token no other claim ever had, and
the script that advances due times (the send path) checks it, so a leader that was frozen or
cut off past its lease cannot send once it is back: it learns it was deposed and stands by.
Losing the lease is an ordinary event here, logged once, never a crash.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from services.state import StateStore

logger = logging.getLogger(__name__)


class BeatLease:
    """This Beat's view of the lease. Not thread-safe: Beat's one loop uses it."""

    def __init__(self, state: StateStore, lease_seconds: float) -> None:
        self.state = state
        self.lease_ms = int(lease_seconds * 1000)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.value = ""
        """The lease's value while this Beat leads ('<fence> <holder>'), else ''."""
        self.renewed_at = 0.0
        self.seen_leader = ""

    @property
    def leading(self) -> bool:
        return bool(self.value)

    @property
    def fence(self) -> str:
        return self.value.split(" ", 1)[0] if self.value else ""

    def _call(self, op: str, holder: str) -> tuple[bool, str]:
        keys = self.state.keys
        with self.state.reaching():
            held, value = self.state.scripts.beat_lease(
                keys=[keys.beat_leader(), keys.beat_fence()], args=[op, holder, self.lease_ms])
        return bool(int(held)), str(value)

    def try_claim(self) -> bool:
        """Claim the lease if nobody holds it; True when this Beat became the leader."""
        held, value = self._call("claim", self.holder)
        if held:
            self.value, self.renewed_at = value, time.monotonic()
            logger.info("beat: leader now (fencing token %s, lease %.1fs)", self.fence,
                        self.lease_ms / 1000)
            return True
        if value != self.seen_leader:
            logger.info("beat: standing by; the leader is %s", value or "(none)")
            self.seen_leader = value
        return False

    def renew_if_due(self) -> bool:
        """Renew every third of the lease; False (and standing by) when it was lost."""
        if time.monotonic() - self.renewed_at < self.lease_ms / 3000:
            return True
        held, value = self._call("renew", self.value)
        if held:
            self.renewed_at = time.monotonic()
            return True
        self.deposed(value)
        return False

    def expired_locally(self) -> bool:
        """The lease has run out by this process's clock (renewals failed for a whole lease):
        stop sending even before Redis can say so."""
        return time.monotonic() - self.renewed_at >= self.lease_ms / 1000

    def deposed(self, leader: str) -> None:
        """The send path or a renewal found another lease value: stand by."""
        if self.value:
            logger.warning("beat: lost the leader lease (token %s); the leader is now %s; "
                           "standing by", self.fence, leader or "(none)")
        self.value, self.seen_leader = "", leader

    def release(self) -> None:
        """Give the lease up (a graceful stop), so a standby takes over at its next poll."""
        if not self.value:
            return
        self._call("release", self.value)
        logger.info("beat: released the leader lease (token %s)", self.fence)
        self.value = ""
