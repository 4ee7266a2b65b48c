"""Keys test services write to so that a test can see what happened inside a worker process.

They live under the test's key prefix (``<prefix>:_test:...``; no service name starts with
``_``, so they never collide with a service's keys) and are deleted with it.
"""

from __future__ import annotations


def probe_key(prefix: str, service: str, what: str) -> str:
    return f"{prefix}:_test:{service}:{what}"
