"""What one service costs in Redis memory, with the history capped in bytes and without.

    .venv/bin/python bench/redis_cost.py [--services 200] [--runs 100]

On a fresh redis-server of its own per measurement (the allocator's history of an earlier arm
moved the figures by 10%), for each arm it registers ``--services``
services and records ``--runs`` runs of each through the real scripts (``RunLedger.begin`` and
``finish``), then reads ``used_memory`` and divides the growth by the services. Two workloads:
every run ``ok``, and every run failing with a 1,500-character error (a traceback-sized
message). Arms: the history capped at ``SVC_HISTORY_MAX_BYTES`` (32 KiB, the default) and the
same with the byte cap out of reach (entries only, as before the cap). Prints bytes per service
and the capped / uncapped ratio, with the load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from services.config import ServiceConfig  # noqa: E402
from services.fields import Kind  # noqa: E402
from services.keys import Keys  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.state import StateStore  # noqa: E402
from tests.servers import OwnRedis  # noqa: E402

SYSTEM_REDIS = "/usr/bin/redis-server"
ERROR = "RuntimeError: " + "traceback line\n" * 100  # 1,514 characters


def per_service(services: int, runs: int, history_bytes: int, error: str | None) -> float:
    """Bytes of ``used_memory`` per service after the runs, on a redis-server of its own."""
    server = OwnRedis()
    if os.access(SYSTEM_REDIS, os.X_OK):
        server.executable = SYSTEM_REDIS
    server.start()
    try:
        return _measure(server.url, services, runs, history_bytes, error)
    finally:
        server.stop()


def _measure(url: str, services: int, runs: int, history_bytes: int,
             error: str | None) -> float:
    prefix = "svc"
    client = redis.Redis.from_url(url, decode_responses=True)
    store = StateStore(client, Keys(prefix), history_bytes=history_bytes, redis_url=url)
    names = [f"svc{i:05d}" for i in range(services)]
    before = int(client.info("memory")["used_memory"])
    store.register_services({
        name: ServiceConfig(name=name, interval_seconds=60.0, max_failures=3,
                            retry_delay_seconds=30.0).as_dict() for name in names})
    for name in names:
        for _ in range(runs):
            decision = store.runs.begin(name, kind=Kind.TRIGGER, max_runs=1,
                                        tick_gap_seconds=0)
            assert decision.ticket is not None, decision
            store.runs.finish(decision.ticket, error=error, max_failures=10**9,
                              retry_delay_seconds=0)
            if error is not None:
                client.hdel(store.keys.state(name), "retry_at")
    after = int(client.info("memory")["used_memory"])
    client.close()
    return (after - before) / services


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    cap = Settings().history_max_bytes
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.services} services x {args.runs} runs, history cap {cap} bytes; "
          f"load {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for label, error in (("ok runs", None), ("failing runs", ERROR)):
        capped = per_service(args.services, args.runs, cap, error)
        uncapped = per_service(args.services, args.runs, 10**12, error)
        print(f"{label:>13}: {capped / 1024:7.1f} KiB per service capped, "
              f"{uncapped / 1024:7.1f} KiB uncapped: ratio {capped / uncapped:.2f}; "
              f"at 5,000 services {capped * 5000 / 2**20:.0f} MiB "
              f"(uncapped {uncapped * 5000 / 2**20:.0f} MiB)")
    print(f"# load {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
