"""Claim throughput on PostgreSQL: the locking helper (the outbox dispatcher's own claim)
against the same statement written as plain SQL, same run, two ways: through a SQLAlchemy
Session like the helper (``session.execute(text(...))``, what a service writing SQL by hand on
``self.db`` does), and on a bare psycopg connection (no SQLAlchemy at all).

    python bench/claim.py [--url postgresql+psycopg://...] [--rows 100000] [--seconds 2]
                          [--rounds 5]

For 1, 2 and 4 concurrent claimers (processes, each with its own connections) and batch sizes
100 and 1, it fills a fresh outbox table (the real migrations, in a schema of its own, with
the partial index on pending rows) and claims until the table is drained or ``--seconds``
pass. In every claimer the three arms take turns, claim by claim, so they run under the same
load and the same contention; each arm's rate is its rows over its own time, summed over the
claimers. It prints rows/s claimed-and-marked and the helper/plain ratios, each the median of
the rounds (target: helper / plain SQL on the same Session >= 0.95 in every row; bare psycopg,
which skips SQLAlchemy altogether, is shown for reference), 4/1-claimer scaling at batch 100
(target >= 1.5), and an exactly-once check (every claimed row was claimed by one claim only).
The schema is dropped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from services.database import migrate
from services.database import sessions as db
from services.database.outbox import OutboxDispatch, OutboxOptions

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLAIM_TIMEOUT = timedelta(hours=1)  # no claim lapses during a run: each row is claimed once

PLAIN_SQL = """
UPDATE svc_outbox SET attempts = svc_outbox.attempts + 1, available_at = %(until)s,
       claimed_by = %(token)s, claimed_at = %(now)s
WHERE svc_outbox.id IN (
    SELECT svc_outbox.id FROM svc_outbox
    WHERE svc_outbox.status = 'pending' AND svc_outbox.available_at <= %(now)s
    ORDER BY svc_outbox.available_at, svc_outbox.id
    LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING svc_outbox.id, svc_outbox.message_id, svc_outbox.topic, svc_outbox.payload,
          svc_outbox.attempts, svc_outbox.created_at
"""


SESSION_SQL = re.sub(r"%\((\w+)\)s", r":\1", PLAIN_SQL)  # the same statement, for text()
MODES = ("helper", "sql", "psycopg")
TARGET = 0.95  # helper / plain SQL on the same Session, in every row


def load_average() -> str:
    """1, 5 and 15-minute load averages: the machine is shared while the bench runs."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def schema_url(base: str, schema: str) -> str:
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def libpq_dsn(url: str) -> str:
    """The SQLAlchemy URL as psycopg takes it."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def claim_arms(url: str, batch: int, token_base: str) -> dict[str, Callable[[int], int]]:
    """One claim of each arm, ready to run, on this process's own connections: the helper
    (the dispatcher's ``claim_batch``) and the Session arm share one Session, as a service's
    code would; bare psycopg has a connection of its own. Each returns the rows it claimed."""
    import psycopg

    dispatch = OutboxDispatch(OutboxOptions(batch_size=batch, claim_timeout_seconds=3600))
    session = db.new_session(url)
    statement = text(SESSION_SQL)
    conn = psycopg.connect(libpq_dsn(url))

    def params(n: int) -> dict[str, object]:
        now = datetime.now(UTC)
        return {"now": now, "until": now + CLAIM_TIMEOUT, "token": f"{token_base}-{n}",
                "limit": batch}

    def helper(n: int) -> int:
        return len(dispatch.claim_batch(session, f"{token_base}-{n}"))

    def sql(n: int) -> int:
        rows = session.execute(statement, params(n)).all()
        session.commit()
        return len(rows)

    def bare(n: int) -> int:
        with conn.cursor() as cur:
            cur.execute(PLAIN_SQL, params(n))
            rows = cur.fetchall()
        conn.commit()
        return len(rows)

    # Connect, and build each statement once, before the clock starts: claims rolled back.
    first = params(0)
    dispatch.claim(session, batch, now=first["now"], until=first["until"], token="warm-up")
    session.rollback()
    session.execute(statement, first).all()
    session.rollback()
    conn.execute(PLAIN_SQL, first).fetchall()
    conn.rollback()
    return {"helper": helper, "sql": sql, "psycopg": bare}


def claimer(url: str, batch: int, seconds: float, ready: mp.Queue, go: mp.Event,
            results: mp.Queue) -> None:
    """Claim batches, the arms taking turns claim by claim, until time is up or a claim
    comes back short (the table is drained); report each arm's rows and time, and every row
    claimed. Taking turns puts the arms under the same load and the same contention: on a
    shared machine, arms measured seconds apart differed by up to 30% either way."""
    arms = claim_arms(url, batch, str(os.getpid()))
    rows = dict.fromkeys(MODES, 0)
    spent = dict.fromkeys(MODES, 0.0)
    claimed = n = 0
    # A fresh order every turn: in a fixed rotation an arm mostly follows the same other
    # one (the helper would mostly come after bare psycopg, its Session's connection idle
    # meanwhile), and whatever that order costs would fall on one arm only.
    shuffle = random.Random(os.getpid())
    turns: list[str] = []
    ready.put(os.getpid())
    go.wait()
    deadline = time.perf_counter() + seconds
    while (started := time.perf_counter()) < deadline:
        if not turns:
            turns = shuffle.sample(MODES, len(MODES))
        mode = turns.pop()
        got = arms[mode](n)
        elapsed = time.perf_counter() - started
        claimed += got
        n += 1
        if got < batch:
            break  # a short claim, at the end of the table, is not a whole one: not counted
        rows[mode] += got
        spent[mode] += elapsed
    results.put((rows, spent, claimed))


@dataclass
class Result:
    claimers: int
    batch: int
    rates: dict[str, float]
    """Rows/s of each arm: its rows over its time, summed over the claimers."""
    claimed: int
    exactly_once: bool


def refill(engine: Engine, rows: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE svc_outbox RESTART IDENTITY"))
        conn.execute(
            text(
                "INSERT INTO svc_outbox (message_id, topic, payload, available_at) "
                "SELECT md5(i::text), 'bench', jsonb_build_object('n', i), "
                "now() - interval '1 minute' FROM generate_series(1, :rows) AS i"
            ),
            {"rows": rows},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE svc_outbox"))


def run_one(engine: Engine, url: str, claimers: int, batch: int, rows: int,
            seconds: float) -> Result:
    refill(engine, rows)
    ctx = mp.get_context("fork")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=claimer, args=(url, batch, seconds, ready, go, results))
             for _ in range(claimers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)
    go.set()
    reports = [results.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    rates = {mode: sum(done[mode] / spent[mode] for done, spent, _ in reports if spent[mode])
             for mode in MODES}
    claimed = sum(count for _, _, count in reports)
    with engine.connect() as conn:
        once, more = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE attempts = 1), count(*) FILTER (WHERE attempts > 1) "
                "FROM svc_outbox"
            )
        ).one()
    return Result(claimers, batch, rates, claimed, once == claimed and more == 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("TEST_POSTGRES_URL") or DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=100_000,
                        help="rows per batch-100 measurement (batch 1 uses a fifth)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="longest claiming time of one measurement")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of every measurement; the median of each is kept, so a "
                             "busy neighbour on a shared machine skews less")
    args = parser.parse_args()
    if make_url(args.url).get_backend_name() != "postgresql":
        raise SystemExit("bench/claim.py measures SKIP LOCKED claims: give a PostgreSQL --url")
    schema = f"bench_claim_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = schema_url(args.url, schema)
    results: list[Result] = []
    try:
        migrate.upgrade(url)
        engine = create_engine(url)
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
        print(f"claim benchmark: PostgreSQL {version}, {os.cpu_count()} CPUs, {args.rows:,} "
              f"rows (batch 100) / {args.rows // 5:,} (batch 1), at most {args.seconds}s per "
              f"measurement, median of {args.rounds} rounds; load average {load_average()}")
        for round_no in range(args.rounds):
            for batch in (100, 1):
                rows = args.rows if batch > 1 else args.rows // 5
                for claimers in (1, 2, 4):
                    results.append(run_one(engine, url, claimers, batch, rows, args.seconds))
            print(f"  round {round_no + 1} done (load average {load_average()})", flush=True)
        engine.dispose()
    finally:
        db.dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
    return report(results)


def report(results: list[Result]) -> int:
    def median_of(claimers: int, batch: int, value: Callable[[Result], float]) -> float:
        return statistics.median(value(r) for r in results
                                 if (r.claimers, r.batch) == (claimers, batch))

    def rate(mode: str, claimers: int, batch: int) -> float:
        return median_of(claimers, batch, lambda r: r.rates[mode])

    def ratio(other: str, claimers: int, batch: int) -> float:
        # Per round, then the median: each round's arms ran side by side.
        return median_of(claimers, batch, lambda r: r.rates["helper"] / r.rates[other])

    print("rows/s claimed and marked, medians of the rounds; plain SQL through a Session and "
          "on bare psycopg")
    print(f"{'batch':>5} {'claimers':>8} {'helper':>9} {'sql':>9} {'psycopg':>9} "
          f"{'helper/sql':>10} {'helper/psycopg':>14}")
    vs_sql, vs_psycopg = [], []
    for batch in (100, 1):
        for claimers in (1, 2, 4):
            helper, sql, raw = (rate(m, claimers, batch) for m in MODES)
            vs_sql.append(ratio("sql", claimers, batch))
            vs_psycopg.append(ratio("psycopg", claimers, batch))
            print(f"{batch:>5} {claimers:>8} {helper:>9,.0f} {sql:>9,.0f} {raw:>9,.0f} "
                  f"{vs_sql[-1]:>10.2f} {vs_psycopg[-1]:>14.2f}")
    print(f"helper/plain SQL (same Session): min {min(vs_sql):.2f}, mean "
          f"{sum(vs_sql) / len(vs_sql):.2f} (target >= {TARGET} in every row: "
          f"{'met' if min(vs_sql) >= TARGET else 'NOT met'})")
    print(f"helper/plain SQL (bare psycopg): min {min(vs_psycopg):.2f}, mean "
          f"{sum(vs_psycopg) / len(vs_psycopg):.2f} (SQLAlchemy's own cost; no target)")
    scaling = {m: rate(m, 4, 100) / rate(m, 1, 100) for m in MODES}
    print("4-claimer/1-claimer scaling at batch 100: " + ", ".join(
        f"{m} {v:.2f}" for m, v in scaling.items()) + " (target >= 1.5)")
    exact = all(r.exactly_once for r in results)
    print(f"exactly-once: {'ok' if exact else 'FAILED'} in all {len(results)} measurements "
          f"({sum(r.claimed for r in results):,} rows claimed, none twice)")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
