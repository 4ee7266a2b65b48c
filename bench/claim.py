"""Claim throughput on PostgreSQL: the locking helper (the outbox dispatcher's own claim)
against the same statement written as plain SQL, same run, two ways: through a SQLAlchemy
Session like the helper (``session.execute(text(...))``, what a service writing SQL by hand on
``self.db`` does), and on a bare psycopg connection (no SQLAlchemy at all).

    python bench/claim.py [--url postgresql+psycopg://...] [--rows 100000] [--seconds 2]

For 1, 2 and 4 concurrent claimers (processes, each with its own connection) and batch sizes
100 and 1, it fills a fresh outbox table (the real migrations, in a schema of its own, with
the partial index on pending rows), claims until the table is drained or ``--seconds`` pass,
and prints rows/s claimed-and-marked, the helper/plain ratios (target >= 0.9), 4/1-claimer
scaling at batch 100 (target >= 1.5), and an exactly-once check (every claimed row was
claimed by one claim only). The schema is dropped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from services import db, migrate
from services.outbox import OutboxDispatch, OutboxOptions

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


def schema_url(base: str, schema: str) -> str:
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def libpq_dsn(url: str) -> str:
    """The SQLAlchemy URL as psycopg takes it."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def claimer(
    mode: str,
    url: str,
    batch: int,
    seconds: float,
    ready: mp.Queue,
    go: mp.Event,
    results: mp.Queue,
) -> None:
    """Claim batches until none is left or time is up; report (rows, when it stopped)."""
    token_base = f"{mode}-{os.getpid()}"
    if mode == "helper":
        dispatch = OutboxDispatch(OutboxOptions(batch_size=batch, claim_timeout_seconds=3600))
        session = db.new_session(url)
        session.connection()  # connect before the clock starts
        session.commit()

        def claim_once(n: int) -> int:
            return len(dispatch.claim_batch(session, f"{token_base}-{n}"))
    elif mode == "sql":
        session = db.new_session(url)
        session.connection()
        session.commit()
        statement = text(SESSION_SQL)

        def claim_once(n: int) -> int:
            now = datetime.now(UTC)
            rows = session.execute(statement, {"now": now, "until": now + CLAIM_TIMEOUT,
                                               "token": f"{token_base}-{n}",
                                               "limit": batch}).all()
            session.commit()
            return len(rows)
    else:
        import psycopg

        conn = psycopg.connect(libpq_dsn(url))

        def claim_once(n: int) -> int:
            now = datetime.now(UTC)
            with conn.cursor() as cur:
                cur.execute(PLAIN_SQL, {"now": now, "until": now + CLAIM_TIMEOUT,
                                        "token": f"{token_base}-{n}", "limit": batch})
                rows = cur.fetchall()
            conn.commit()
            return len(rows)
    ready.put(os.getpid())
    go.wait()
    deadline = time.perf_counter() + seconds
    total = n = 0
    while time.perf_counter() < deadline:
        got = claim_once(n)
        n += 1
        total += got
        if got < batch:
            break
    results.put((total, time.perf_counter()))


@dataclass
class Result:
    mode: str
    claimers: int
    batch: int
    rows: int
    seconds: float
    exactly_once: bool

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def refill(engine: object, rows: int) -> None:
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("TRUNCATE svc_outbox RESTART IDENTITY"))
        conn.execute(
            text(
                "INSERT INTO svc_outbox (message_id, topic, payload, available_at) "
                "SELECT md5(i::text), 'bench', jsonb_build_object('n', i), "
                "now() - interval '1 minute' FROM generate_series(1, :rows) AS i"
            ),
            {"rows": rows},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:  # type: ignore[attr-defined]
        conn.execute(text("VACUUM ANALYZE svc_outbox"))


def run_one(
    engine: object, url: str, mode: str, claimers: int, batch: int, rows: int, seconds: float
) -> Result:
    refill(engine, rows)
    ctx = mp.get_context("fork")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=claimer, args=(mode, url, batch, seconds, ready, go, results))
        for _ in range(claimers)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)
    started = time.perf_counter()
    go.set()
    reports = [results.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    claimed = sum(count for count, _ in reports)
    elapsed = max(end for _, end in reports) - started
    with engine.connect() as conn:  # type: ignore[attr-defined]
        once, more = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE attempts = 1), count(*) FILTER (WHERE attempts > 1) "
                "FROM svc_outbox"
            )
        ).one()
    return Result(mode, claimers, batch, claimed, elapsed, once == claimed and more == 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("TEST_POSTGRES_URL") or DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=100_000,
                        help="rows per batch-100 measurement (batch 1 uses a fifth)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="longest claiming time of one measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every measurement; the best of each is kept, so a "
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
              f"measurement, best of {args.rounds} rounds")
        for round_no in range(args.rounds):
            for batch in (100, 1):
                rows = args.rows if batch > 1 else args.rows // 5
                for claimers in (1, 2, 4):
                    # Rotate which goes first so none always gets the warmer cache.
                    shift = (claimers + round_no) % len(MODES)
                    for mode in MODES[shift:] + MODES[:shift]:
                        results.append(run_one(engine, url, mode, claimers, batch, rows,
                                               args.seconds))
            print(f"  round {round_no + 1} done", flush=True)
        engine.dispose()
    finally:
        db.dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
    return report(results)


def report(results: list[Result]) -> int:
    def best(mode: str, claimers: int, batch: int) -> float:
        return max(r.rate for r in results
                   if (r.mode, r.claimers, r.batch) == (mode, claimers, batch))

    print("rows/s claimed and marked (best of the rounds); plain SQL through a Session and on "
          "bare psycopg")
    print(f"{'batch':>5} {'claimers':>8} {'helper':>9} {'sql':>9} {'psycopg':>9} "
          f"{'helper/sql':>10} {'helper/psycopg':>14}")
    vs_sql, vs_psycopg = [], []
    for batch in (100, 1):
        for claimers in (1, 2, 4):
            helper, sql, raw = (best(m, claimers, batch) for m in MODES)
            vs_sql.append(helper / sql)
            vs_psycopg.append(helper / raw)
            print(f"{batch:>5} {claimers:>8} {helper:>9,.0f} {sql:>9,.0f} {raw:>9,.0f} "
                  f"{helper / sql:>10.2f} {helper / raw:>14.2f}")
    for label, ratios in (("helper/plain SQL (same Session)", vs_sql),
                          ("helper/plain SQL (bare psycopg)", vs_psycopg)):
        print(f"{label}: min {min(ratios):.2f}, mean {sum(ratios) / len(ratios):.2f} "
              f"(target >= 0.9)")
    scaling = {m: best(m, 4, 100) / best(m, 1, 100) for m in MODES}
    print("4-claimer/1-claimer scaling at batch 100: " + ", ".join(
        f"{m} {v:.2f}" for m, v in scaling.items()) + " (target >= 1.5)")
    exact = all(r.exactly_once for r in results)
    print(f"exactly-once: {'ok' if exact else 'FAILED'} in all {len(results)} measurements "
          f"({sum(r.rows for r in results):,} rows claimed, none twice)")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
