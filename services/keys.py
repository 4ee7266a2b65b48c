"""Every Redis key the framework uses, in one place. Nothing else spells a key.

Layout (``<p>`` is ``SVC_KEY_PREFIX``, default ``svc``):

- ``<p>:<name>``          hash: running, paused, failures, retry_at, last_* times, stop_reason...
- ``<p>:<name>:lease``    sorted set: run token -> lease expiry (ms); at most
  ``max_concurrent_runs`` members, the key itself expires with its newest lease
- ``<p>:<name>:history``  list, newest first: one JSON object per finished run
- ``<p>:<name>:audit``    list, newest first: one JSON object per operator action
- ``<p>:_services``       hash: name -> JSON of the service's settings, written by workers
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

    def index(self) -> str:
        return f"{self.prefix}:_services"

    def for_service(self, name: str) -> tuple[str, str, str]:
        """state, lease and history: the keys every run script takes."""
        return self.state(name), self.lease(name), self.history(name)

    def outbox_stream(self, stream: str) -> str:
        return f"{self.prefix}:outbox:{stream}"

    def outbox_delivered(self, stream: str) -> str:
        return f"{self.prefix}:outbox:{stream}:delivered"

    def pattern(self) -> str:
        """A SCAN pattern for every key under this prefix."""
        return f"{self.prefix}:*"
