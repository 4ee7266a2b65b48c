"""Fixtures for single-process tests: loop threads that are always stopped, and a Redis
whose address is wrong on purpose."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from services.AbstractService import AbstractService
from tests.fixtures.services import LoopThread


@pytest.fixture
def loops(prefix: str) -> Iterator[Callable[[AbstractService], LoopThread]]:
    """``loops(service)`` starts ``service.run_service_loop()`` in a thread; every loop is
    stopped and joined after the test (before the prefix's keys are removed)."""
    started: list[LoopThread] = []

    def start(service: AbstractService) -> LoopThread:
        loop = LoopThread(service).start()
        started.append(loop)
        return loop

    yield start
    for loop in started:
        loop.shutdown()
    stuck = [loop.service.name for loop in started if loop.alive]
    assert not stuck, f"loop threads still running after stop(): {stuck}"


@pytest.fixture
def unreachable_url() -> str:
    """Nothing listens on port 1; the password must never appear in any message."""
    return "redis://svcuser:s3cr3t-pw@127.0.0.1:1/0"
