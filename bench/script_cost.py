"""What Redis spends on each run's two scripts, against a PING round trip, side by side.

    .venv/bin/python bench/script_cost.py [--runs 5000] [--rounds 5]

On a redis-server of the bench's own (``tests/servers.py`` ``OwnRedis``; Debian's
``/usr/bin/redis-server`` when present), otherwise idle, each round times two arms, in an
order that alternates from round to round:

- ``runs``: ``--runs`` trigger runs of one service through the real run path as a worker
  sends it (``RunLedger.begin``, then ``finish`` of a success sent without waiting);
- ``pings``: as many ``PING`` round trips on a plain client, the least a command costs.

For each arm the server's CPU (``INFO cpu``: user + system, the server serving nobody else)
and, for ``runs``, the scripts' own time (``INFO commandstats``: EVALSHA's ``usec``, which
includes the commands they call) and the commands they call per run. Printed per run or
PING: medians over the rounds, with the load average. The split says how much of what Redis
spends on a run is the scripts themselves (their Lua and the commands they call) and how much
is the rest: reading two requests of 26 arguments, replying, the event loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from bench.health import load, machine  # noqa: E402
from services.fields import Kind  # noqa: E402
from services.keys import Keys  # noqa: E402
from services.state import StateStore  # noqa: E402
from tests.servers import OwnRedis  # noqa: E402

SYSTEM_REDIS = "/usr/bin/redis-server"


def server_cpu_us(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6


def command_stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(row["calls"]), int(row["usec"]))
            for name, row in stats.items()}


def measure(client: redis.Redis, action: Callable[[], None], n: int
            ) -> tuple[float, dict[str, tuple[float, float]]]:
    """Server CPU per action (us), and per command: calls and usec per action."""
    stats_before, cpu_before = command_stats(client), server_cpu_us(client)
    for _ in range(n):
        action()
    cpu_after, stats_after = server_cpu_us(client), command_stats(client)
    commands = {}
    for name, (calls, usec) in stats_after.items():
        calls_before, usec_before = stats_before.get(name, (0, 0))
        if name != "info" and calls > calls_before:
            commands[name] = ((calls - calls_before) / n, (usec - usec_before) / n)
    return (cpu_after - cpu_before) / n, commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5000, help="runs (and PINGs) per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server = OwnRedis()
    if os.access(SYSTEM_REDIS, os.X_OK):
        server.executable = SYSTEM_REDIS
    server.start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        store = StateStore(client, Keys("svc"), redis_url=server.url)
        store.runs.defer_success = True  # as a worker records a short run's success

        def run() -> None:
            decision = store.runs.begin("noop", kind=Kind.TRIGGER, max_runs=1,
                                        tick_gap_seconds=0)
            assert decision.ticket is not None, decision
            store.runs.finish(decision.ticket, error=None, max_failures=3,
                              retry_delay_seconds=1)

        pinger = redis.Redis.from_url(server.url)
        arms: dict[str, Callable[[], None]] = {"runs": run, "pings": pinger.ping}
        for action in arms.values():
            for _ in range(200):  # connections, scripts loaded, the history filled
                action()
        print(f"bench script_cost: {machine()}; load average {load()}")
        cpu: dict[str, list[float]] = {name: [] for name in arms}
        script_us: list[float] = []
        calls: dict[str, float] = {}
        for index in range(args.rounds):
            order = list(arms) if index % 2 == 0 else list(reversed(arms))
            for name in order:
                spent, commands = measure(client, arms[name], args.runs)
                cpu[name].append(spent)
                if name == "runs":
                    store.runs.flush()
                    script_us.append(commands.get("evalsha", (0.0, 0.0))[1])
                    calls = {c: count for c, (count, _) in commands.items() if c != "evalsha"}
        runs_cpu, ping_cpu = statistics.median(cpu["runs"]), statistics.median(cpu["pings"])
        lua = statistics.median(script_us)
        print(f"per run (begin + finish, {args.rounds} rounds x {args.runs}): Redis CPU "
              f"{runs_cpu:.1f} us, of which the two scripts (EVALSHA usec) {lua:.1f} us and the "
              f"rest (reading both requests, replying, the event loop) {runs_cpu - lua:.1f} us")
        print(f"per PING: Redis CPU {ping_cpu:.1f} us; a run's CPU / a PING's "
              f"{runs_cpu / ping_cpu:.2f}")
        print("commands the scripts call per run: " + ", ".join(
            f"{name} {count:g}" for name, count in sorted(calls.items())))
        print(f"load average after: {load()}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
