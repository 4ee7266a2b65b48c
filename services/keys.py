"""Every Redis key the framework uses, in one place. Nothing else spells a key.

Layout (``<p>`` is ``SVC_KEY_PREFIX``, default ``svc``):

- ``<p>:<name>``          hash: running, paused, failures, retry_at, last_* times, stop_reason...
- ``<p>:<name>:lease``    sorted set: run token -> lease expiry (ms); at most
  ``max_concurrent_runs`` members, the key itself expires with its newest lease
- ``<p>:<name>:inflight`` hash: run token -> start (ms) of every run in progress, so that a run
  whose worker died is found (and recorded as ``lost``) after its lease lapsed
- ``<p>:<name>:history``  list, newest first: one JSON object per finished run
- ``<p>:<name>:audit``    list, newest first: one JSON object per operator action
- ``<p>:_services``       hash: name -> JSON of the service's settings, written by workers
- ``<p>:_epoch``          hash: ``id`` of this store's life, ``created_at``; after Redis lost
  its data also ``lost_at``, ``lost_epoch``, ``detected_by`` (see services/durability.py)
- ``<p>:_schedules``      hash: name -> JSON of a live schedule override (``svc schedule``)
- ``<p>:_schedules:version`` counter: bumped by every override and every registration, so
  that Beat reloads within one poll
- ``<p>:_due``            sorted set: name -> next due time (ms) of each scheduled service
- ``<p>:_due:signature``  hash: name -> the schedule that due time was computed from
- ``<p>:_beat:leader``    string ``<fence> <host:pid:nonce>``, expiring: the leader Beat's lease
- ``<p>:_beat:fence``     counter: the fencing token of the newest leader
- ``<p>:_beat:stats``     hash: the leader's numbers (ticks sent, lateness p50/p99/max, when)
- ``<p>:_process:<id>``   hash, expiring: one worker's or Beat's heartbeat (who, where, which
  services and queues, when); gone ``SVC_HEARTBEAT_SECONDS`` x 3 after its last beat
- ``<p>:_processes``      sorted set: process id -> last heartbeat (ms), so that a process that
  is gone is still listed (``svc workers``) for a day
- ``<p>:_health``         hash: name -> JSON of the service's last recorded health and the
  last one notified, changed only by compare-and-set (services/lua/health_note.lua)
- ``<p>:_health:watch``   string, expiring: the process that evaluates every service's health
  this round (one per ``SVC_HEALTH_WATCH_SECONDS`` cluster-wide)
- ``<p>:outbox:<stream>`` stream: messages the outbox dispatcher delivered
- ``<p>:outbox:<stream>:delivered`` sorted set: message id -> delivery time (ms), so that a
  message is added to the stream at most once (trimmed after ``SVC_OUTBOX_DEDUPE_SECONDS``)

Service names match ``[a-z0-9][a-z0-9_.-]*``, so no name can reach another service's keys
or the ``_services`` index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# \Z, not $: $ also matches before a trailing newline, which would let "name\n" through.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*\Z")


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"service name {name!r} is invalid: expected lowercase letters, digits, '_', '.' "
            "or '-', starting with a letter or digit (pattern [a-z0-9][a-z0-9_.-]*)"
        )
    return name


@dataclass(frozen=True)
class Keys:
    prefix: str = "svc"

    def state(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def lease(self, name: str) -> str:
        return f"{self.prefix}:{name}:lease"

    def history(self, name: str) -> str:
        return f"{self.prefix}:{name}:history"

    def audit(self, name: str) -> str:
        return f"{self.prefix}:{name}:audit"

    def inflight(self, name: str) -> str:
        return f"{self.prefix}:{name}:inflight"

    def index(self) -> str:
        return f"{self.prefix}:_services"

    def epoch(self) -> str:
        return f"{self.prefix}:_epoch"

    def schedules(self) -> str:
        return f"{self.prefix}:_schedules"

    def schedule_version(self) -> str:
        return f"{self.prefix}:_schedules:version"

    def due(self) -> str:
        return f"{self.prefix}:_due"

    def due_signature(self) -> str:
        return f"{self.prefix}:_due:signature"

    def beat_leader(self) -> str:
        return f"{self.prefix}:_beat:leader"

    def beat_fence(self) -> str:
        return f"{self.prefix}:_beat:fence"

    def beat_stats(self) -> str:
        return f"{self.prefix}:_beat:stats"

    def process(self, process_id: str) -> str:
        return f"{self.prefix}:_process:{process_id}"

    def processes(self) -> str:
        return f"{self.prefix}:_processes"

    def health(self) -> str:
        return f"{self.prefix}:_health"

    def health_watch(self) -> str:
        return f"{self.prefix}:_health:watch"

    def for_service(self, name: str) -> tuple[str, str, str, str, str, str]:
        """state, lease, history, inflight, audit and epoch: the keys both run scripts take,
        in the order their headers give."""
        return (self.state(name), self.lease(name), self.history(name), self.inflight(name),
                self.audit(name), self.epoch())

    def outbox_stream(self, stream: str) -> str:
        return f"{self.prefix}:outbox:{stream}"

    def outbox_delivered(self, stream: str) -> str:
        return f"{self.prefix}:outbox:{stream}:delivered"

    def pattern(self) -> str:
        """A SCAN pattern for every key under this prefix."""
        return f"{self.prefix}:*"
