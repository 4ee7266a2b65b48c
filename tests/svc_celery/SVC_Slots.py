"""Record the slot of every run: the Beat tick's due time (ms) the guard accepted for it,
appended to the Redis list ``<prefix>:_test:<name>:slots`` (oldest first). For the schedule
tests: which slots ran, each how often, and in what order.

Three services, alike but for their names (``slots``, ``slots_b``, ``slots_c``), so that one
Beat outage can test several catch-up policies (``SVC_SLOTS_B_CATCHUP=skip``...) at once; and
``slots_q``, whose ticks go to a queue of their own (a worker started with
``-Q svc-test-slots`` runs it and takes no other service's ticks).
"""

from typing import ClassVar

from services.AbstractService import AbstractService
from services.state import StateStore
from tests.svc_celery.probes import probe_key


class Slots(AbstractService):
    name = "slots"
    interval_seconds = 1.0
    max_failures = 3
    retry_delay_seconds = 0.5

    def _configure_service(self) -> None:
        self.recorded = 0

    async def update(self) -> None:
        # The guard wrote this run's slot before update() began, and no other run of this
        # service (max_concurrent_runs = 1) can start, and write another, until this one ends.
        state = self.state
        slot = state.client.hget(state.keys.state(self.name), "last_slot")
        state.client.rpush(probe_key(state.keys.prefix, self.name, "slots"), slot or "")
        self.recorded += 1


class SlotsB(Slots):
    name = "slots_b"


class SlotsC(Slots):
    name = "slots_c"


class SlotsQueued(Slots):
    name = "slots_q"
    queue: ClassVar[str | None] = "svc-test-slots"


def recorded_slots(state: StateStore, name: str) -> list[int]:
    """The slots the runs of ``name`` recorded, in the order they ran."""
    raw = state.client.lrange(probe_key(state.keys.prefix, name, "slots"), 0, -1)
    return [int(slot) for slot in raw]
