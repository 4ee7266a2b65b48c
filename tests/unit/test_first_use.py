"""A service is built on its first task in a process: a _configure_service() that raises
fails that task with the service named, and the next task builds it again."""

from __future__ import annotations

import logging

import pytest

from services.errors import ServiceConfigError
from services.fields import Kind
from services.registry import Registry
from services.state import StateStore
from worker.runtime import ProcessRuntime


def test_a_failed_build_names_the_service_and_is_tried_again(
        store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry.discover(packages=["tests.fixtures.svc_flaky"], environ={}, only=[])
    runtime = ProcessRuntime(registry, store)
    try:
        with caplog.at_level(logging.ERROR, logger="worker.runtime"), \
                pytest.raises(ServiceConfigError, match=r"^service flaky_config: "
                              r"_configure_service\(\) failed: RuntimeError: the config"):
            runtime.run("flaky_config", Kind.TRIGGER)
        assert "the next task for flaky_config builds it again" in caplog.text
        assert "flaky_config" not in runtime.instances
        assert runtime.run("flaky_config", Kind.TRIGGER).summary().startswith("ran ")
    finally:
        runtime.shutdown()
