"""The bench's side of the broker for ``bench/beat.py``: empties the queue Beat sends to and
keeps each tick's probe headers (``bench/beat_probe.py``), so memory never piles up and
lateness is read from the messages themselves, the same way for every arm."""

from __future__ import annotations

import json
import threading
import time

import redis

QUEUE = "celery"  # Celery's default queue: where every arm's ticks go (no routes)
EMPTY_WAIT_SECONDS = 0.02


class Drain(threading.Thread):
    """A thread that LRANGEs and DELs the queue in one transaction, every 20 ms when it was
    empty, and notes each message's ``bench_sent_ms`` and ``bench_due_ms``."""

    def __init__(self, url: str, queue: str = QUEUE) -> None:
        super().__init__(name="beat-drain", daemon=True)
        self.client = redis.Redis.from_url(url)
        self.queue = queue
        self.sent_ms: list[float] = []
        self.due_ms: list[float] = []
        self.unreadable = 0
        self.first_at: float | None = None
        """Wall-clock time at which the first tick arrived."""
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            if not self._drain_once():
                self._stopping.wait(EMPTY_WAIT_SECONDS)

    def _drain_once(self) -> int:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.lrange(self.queue, 0, -1)
            pipe.delete(self.queue)
            raw, _ = pipe.execute()
        for item in raw:
            try:
                headers = json.loads(item)["headers"]
                sent, due = float(headers["bench_sent_ms"]), float(headers["bench_due_ms"])
            except (ValueError, KeyError, TypeError):
                self.unreadable += 1
                continue
            self.sent_ms.append(sent)
            self.due_ms.append(due)
        if raw and self.first_at is None:
            self.first_at = time.time()
        return len(raw)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)
        self._drain_once()
        self.client.close()

    def window(self, start_ms: float, end_ms: float) -> tuple[int, list[float]]:
        """Ticks sent in [start, end), and the lateness in seconds of those whose due time
        is known."""
        sent = 0
        lateness = []
        for sent_ms, due_ms in zip(self.sent_ms, self.due_ms, strict=True):
            if start_ms <= sent_ms < end_ms:
                sent += 1
                if due_ms >= 0:
                    lateness.append((sent_ms - due_ms) / 1000)
        return sent, lateness
