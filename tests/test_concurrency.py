"""Concurrency on a real PostgreSQL server: many servers of one project at once (issue 4).

The servers themselves are not started: fifty JupyterLab processes do not fit a 2-core CI
machine, and the hub's part (spawner → quota service → hub REST API) is covered by the
end-to-end tests (tests/test_e2e.py). What is real here is everything the money depends on:
a PostgreSQL server, its row locks and unique indexes, and the service-layer code paths,
called from many threads, each with its own transactions exactly as the quota service makes
them:

- a start (``SessionsAPI.post``): one transaction around ``metering.open_session``, its
  time read before the call;
- a stop (``SessionCloseAPI.post``): one transaction, ``ledger.lock_project`` first, then
  ``metering.close_session``, its time read after the lock (``utcnow()`` there);
- a metering pass (``QuotaService.meter_once``): one transaction around
  ``metering.meter(now=...)``.

PostgreSQL only: SQLite has a single writer, so nothing there runs concurrently. The clock is
the test's (a shared ``now`` advanced tick by tick, or a time given per call), so every
figure is exact. The engine's pool holds a connection for every thread at once (the
service's own pool holds 30), so the transactions really are simultaneous in the database.
No deadlock or serialization failure is expected (every writer locks the project first);
the threads count them, and any other error, and the tests want none. One race was found
while writing them (a pass and a project's first start): the last test keeps it fixed.
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import psycopg
import pytest
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from quota_service import db as database
from quota_service import ledger, metering
from quota_service.metering import NO_BALANCE, SessionRefused, StopOrder
from quota_service.models import AuditEvent, LedgerEntry, LedgerKind, UsageSession
from spawner.points import cumulative_millipoints, interval_cost, period_charge, whole_seconds
from tests.test_metering import T0, make_project, request

INTERVAL = 60
POOL = 64  # connections: more than the threads of any test here
JOIN_TIMEOUT = 120
# what a writer that did not take the project lock first would meet (none is expected)
LOCK_FAILURES = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.LockNotAvailable,
)
_databases = itertools.count()


@pytest.fixture
def fresh_database(postgres_server):
    """``make()`` → (engine, session factory) of a new PostgreSQL database at the head
    schema."""
    engines = []

    def make():
        url = postgres_server.create_database(f"concurrency{next(_databases)}")
        engine = create_engine(
            database.normalize_url(url), pool_size=POOL, max_overflow=0, pool_timeout=60
        )
        database.upgrade(engine)
        engines.append(engine)
        return engine, database.make_session_factory(engine)

    yield make
    for engine in engines:
        engine.dispose()


# --- the service's calls, one transaction each, as the handlers and the pass make them -------


def open_server(factory, req, now: datetime, observe: Callable | None = None) -> int:
    """SessionsAPI.post. ``observe(db, session_or_refusal)`` runs in the same transaction,
    under the project lock, after the decision (the test's record of the order of events)."""
    with database.transaction(factory) as db:
        try:
            session = metering.open_session(db, req, now=now, interval_seconds=INTERVAL)
        except SessionRefused as e:
            if observe:
                observe(db, e.refusal)
            raise
        if observe:
            observe(db, session)
        return session.id


def close_server(
    factory, session_id: int, clock: Callable[[], datetime], observe: Callable | None = None
) -> int:
    """SessionCloseAPI.post: the project locked first, then the time read, then the stop."""
    with database.transaction(factory) as db:
        session = db.get(UsageSession, session_id)
        ledger.lock_project(db, session.project_id)
        db.refresh(session)
        charged = metering.close_session(db, session, now=clock(), reason="stopped by the hub")
        if observe:
            observe(db, session)
        return charged


def metering_pass(factory, now: datetime, observe: Callable | None = None) -> list[StopOrder]:
    """QuotaService.meter_once, without the hub's list."""
    with database.transaction(factory) as db:
        orders = metering.meter(db, now=now)
        if observe:
            observe(db, orders)
        return orders


class Outcomes:
    """What the threads ran into: lock failures (deadlocks, serialization failures) are
    counted apart from every other error; the tests want none of either."""

    def __init__(self):
        self._lock = threading.Lock()
        self.lock_failures: list[str] = []
        self.errors: list[BaseException] = []

    def call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DBAPIError as e:
            with self._lock:
                if isinstance(e.orig, LOCK_FAILURES):
                    self.lock_failures.append(repr(e.orig))
                else:
                    self.errors.append(e)
        except Exception as e:
            with self._lock:
                self.errors.append(e)
        return None

    def check(self) -> None:
        assert self.lock_failures == [], f"{len(self.lock_failures)} lock failures"
        assert self.errors == [], f"{len(self.errors)} errors, first: {self.errors[:3]!r}"


def expected_rows(gpus: int, seconds: int) -> list[tuple[int, int, int, int]]:
    """(period, from, to, millipoints) of a session closed after ``seconds`` whole seconds."""
    periods = -(-seconds // INTERVAL)
    return [
        (
            p,
            p * INTERVAL,
            min((p + 1) * INTERVAL, seconds),
            period_charge(gpus, p * INTERVAL, min((p + 1) * INTERVAL, seconds)),
        )
        for p in range(periods)
    ]


def usage_rows(db, session_id: int) -> list[LedgerEntry]:
    return list(
        db.scalars(
            select(LedgerEntry)
            .where(LedgerEntry.session_id == session_id)
            .order_by(LedgerEntry.period_index)
        )
    )


def run_threads(targets: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"


# --- 1. fifty servers of one project, passes and stops all at once -----------------------------

MEMBERS = 50
METER_THREADS = 3
TICK = timedelta(seconds=12.5)
TICKS = 48  # 0 .. 47: the last stop is at tick 46
GRANT = 100_000  # 100 points: plenty, no stop orders


def test_fifty_servers_of_one_project_started_metered_and_stopped_concurrently(fresh_database):
    _engine, factory = fresh_database()
    names = [f"m{i:02d}" for i in range(MEMBERS)]
    project_id = make_project(factory, millipoints=GRANT, members=tuple(names), max_gpus=2)
    gpus = [1 + i % 2 for i in range(MEMBERS)]  # 25 × 1 GPU, 25 × 2 GPUs
    started = [T0 + timedelta(milliseconds=230 * i) for i in range(MEMBERS)]
    stop_tick = [4 + (i * 17) % 43 for i in range(MEMBERS)]  # ticks 4 .. 46, spread

    def tick_time(k: int) -> datetime:
        return T0 + k * TICK

    clock = {"now": T0}  # set by the driver before each tick; read by the stops
    outcomes = Outcomes()
    barrier = threading.Barrier(MEMBERS + METER_THREADS + 1, timeout=60)
    first_open = threading.Event()
    session_ids: dict[int, int] = {}
    passes: list[datetime] = []
    orders: list[StopOrder] = []

    def member(i: int) -> None:
        for k in range(TICKS):
            barrier.wait()  # tick k begins: at tick 0 all fifty start together
            if k == 0:
                sid = outcomes.call(open_server, factory, request(names[i], gpus[i]), started[i])
                if sid is not None:
                    session_ids[i] = sid
                first_open.set()
            elif k == stop_tick[i] and i in session_ids:
                outcomes.call(close_server, factory, session_ids[i], lambda: clock["now"])
            barrier.wait()  # tick k ends

    def meter_thread(j: int) -> None:
        for k in range(TICKS):
            barrier.wait()
            if k == 0:
                # a pass that locks while the project has no open session yet and then
                # reads one that started meanwhile fails (KeyError): see
                # test_a_pass_survives_a_first_server_starting_while_it_locks. The passes
                # here run from the first committed start, concurrently with the others.
                first_open.wait(30)
            # advancing times, none after the clock (the service reads it before the pass)
            for now in (tick_time(k) - timedelta(seconds=3.3 * (j + 1)), tick_time(k)):
                result = outcomes.call(metering_pass, factory, now)
                if result is not None:
                    passes.append(now)
                    orders.extend(result)
            barrier.wait()

    def driver() -> None:
        for k in range(TICKS):
            clock["now"] = tick_time(k)
            barrier.wait()
            barrier.wait()

    run_threads(
        [lambda i=i: member(i) for i in range(MEMBERS)]
        + [lambda j=j: meter_thread(j) for j in range(METER_THREADS)]
        + [driver]
    )
    outcomes.check()
    assert len(session_ids) == MEMBERS
    assert len(passes) == TICKS * METER_THREADS * 2 == 288
    assert orders == []

    total = 0
    rows_written = 0
    by_earlier_passes = expected_by_earlier_passes = 0
    with database.transaction(factory) as db:
        for i in range(MEMBERS):
            session = db.get(UsageSession, session_ids[i])
            stopped = tick_time(stop_tick[i])
            assert (session.started_at, session.stopped_at) == (started[i], stopped)
            lifetime = whole_seconds((stopped - started[i]).total_seconds())
            assert session.charged_seconds == lifetime
            rows = usage_rows(db, session.id)
            # distinct, gap-free periods, each exactly its span, the spans end to end
            assert [
                (r.period_index, r.covers_from_seconds, r.covers_to_seconds, -r.amount_millipoints)
                for r in rows
            ] == expected_rows(gpus[i], lifetime)
            assert session.charged_periods == len(rows)
            charged = -sum(r.amount_millipoints for r in rows)
            assert charged == cumulative_millipoints(gpus[i], lifetime)
            total += charged
            rows_written += len(rows)
            # the full periods that ended by the previous tick were charged by the passes
            previous = tick_time(stop_tick[i] - 1)
            by_earlier_passes += sum(r.created_at <= previous for r in rows)
            expected_by_earlier_passes += (
                whole_seconds((previous - started[i]).total_seconds()) // INTERVAL
            )
        assert ledger.balance(db, project_id) == GRANT - total
        actions = dict(
            db.execute(
                select(AuditEvent.action, func.count())
                .where(AuditEvent.action.in_(["session.open", "session.close"]))
                .group_by(AuditEvent.action)
            ).all()
        )
    assert actions == {"session.open": MEMBERS, "session.close": MEMBERS}
    assert by_earlier_passes == expected_by_earlier_passes
    # the figures of this schedule: 279 rows (230 full periods, 49 partial last ones), 221 of
    # them written by passes in earlier ticks, 12.761 points charged in all
    assert (rows_written, by_earlier_passes, total) == (279, 221, 12_761)


# --- 2. the balance floor: a grant that runs out mid-run -----------------------------------------

RUNNERS = 20  # servers that run until the money is gone
LATECOMERS = 10  # members who keep asking for a server once the money runs short
TICK2 = 10  # seconds; a pass every 6 ticks (the interval), a stop one tick after its order
LAST_TICK = 36


def runner_start_tick(i: int) -> int:
    return 1 + i % 9  # ticks 1 .. 9: not aligned with the passes


def test_the_balance_never_falls_below_one_interval_of_the_running_servers(fresh_database):
    engine, factory = fresh_database()
    runners = [f"r{i:02d}" for i in range(RUNNERS)]
    latecomers = [f"x{i}" for i in range(LATECOMERS)]
    gpus = [1 + i % 2 for i in range(RUNNERS)]  # 10 × 1 GPU, 10 × 2 GPUs
    need = sum(interval_cost(g, INTERVAL) for g in gpus)  # 10 × 34 + 10 × 67 = 1010
    # the grant pays every period up to the pass at tick 18 and then exactly one more
    # interval of all twenty: enough at tick 18 (a balance equal to the need is enough),
    # short at tick 24, when the twenty are stopped
    charged_by_tick_18 = sum(
        cumulative_millipoints(g, (TICK2 * (18 - runner_start_tick(i))) // INTERVAL * INTERVAL)
        for i, g in enumerate(gpus)
    )
    grant = charged_by_tick_18 + need
    project_id = make_project(
        factory, millipoints=grant, members=tuple(runners + latecomers), max_gpus=2
    )

    def tick_time(k: int) -> datetime:
        return T0 + timedelta(seconds=TICK2 * k)

    # the order of events as the database serialized them (appended under the project lock)
    records: list[tuple[str, int, int, dict[int, int]]] = []
    writes_when_refused: list[str] = []
    attempt = threading.local()

    @event.listens_for(engine, "before_cursor_execute")
    def _writes(conn, cursor, statement, parameters, context, executemany):
        if getattr(attempt, "statements", None) is not None:
            attempt.statements.append(statement.lstrip().split(None, 1)[0].upper())

    def observer(kind: str, k: int):
        def observe(db, what) -> None:
            ledger.lock_project(db, project_id)  # held already, but for a pass with nothing open
            if kind == "open" and not isinstance(what, UsageSession):
                label = f"refused:{what.code}"
            else:
                label = kind
            open_costs = {
                s.id: interval_cost(s.gpu_count, s.interval_seconds)
                for s in metering.open_sessions(db, project_id)
            }
            records.append((label, k, ledger.balance(db, project_id), open_costs))

        return observe

    def try_open(username: str, g: int, k: int) -> int | None:
        attempt.statements = []
        try:
            return open_server(factory, request(username, g), tick_time(k), observer("open", k))
        except SessionRefused as e:
            writes = [s for s in attempt.statements if s in ("INSERT", "UPDATE", "DELETE")]
            writes_when_refused.extend(writes)
            refusals.append((username, k, e.refusal.code))
            return None
        finally:
            attempt.statements = None

    outcomes = Outcomes()
    refusals: list[tuple[str, int, str]] = []
    running: dict[int, int] = {}  # runner → open session
    sessions_of: dict[int, list[int]] = defaultdict(list)
    orders_by_tick: dict[int, list[list[StopOrder]]] = defaultdict(list)
    stops_due: set[int] = set()
    with ThreadPoolExecutor(max_workers=40) as pool:
        for k in range(LAST_TICK + 1):
            now = tick_time(k)
            jobs = []  # (what, future)
            if k % (INTERVAL // TICK2) == 0:
                for _ in range(2):
                    jobs.append(
                        (
                            ("pass",),
                            pool.submit(
                                outcomes.call, metering_pass, factory, now, observer("pass", k)
                            ),
                        )
                    )
            for sid in sorted(stops_due):  # the hub stops the servers one tick after the order
                jobs.append(
                    (
                        ("close", sid),
                        pool.submit(
                            outcomes.call,
                            close_server,
                            factory,
                            sid,
                            lambda now=now: now,
                            observer("close", k),
                        ),
                    )
                )
            stops_due = set()
            for i, username in enumerate(runners):
                first = k == runner_start_tick(i)
                retry = k >= 26 and k % 2 == 0 and i not in running
                if first or retry:
                    jobs.append(
                        (("open", i), pool.submit(outcomes.call, try_open, username, gpus[i], k))
                    )
            if k >= 19:
                for username in latecomers:
                    jobs.append((("late",), pool.submit(outcomes.call, try_open, username, 1, k)))
            for what, future in jobs:
                result = future.result(timeout=JOIN_TIMEOUT)
                if what[0] == "pass" and result is not None:
                    orders_by_tick[k].append(result)
                    stops_due |= {o.session_id for o in result}
                elif what[0] == "close":
                    running = {i: s for i, s in running.items() if s != what[1]}
                elif what[0] == "open" and result is not None:
                    running[what[1]] = result
                    sessions_of[what[1]].append(result)
    event.remove(engine, "before_cursor_execute", _writes)
    outcomes.check()

    # every runner started once, at its tick, and was stopped by the one round of stop orders
    assert {i: len(s) for i, s in sessions_of.items()} == {i: 1 for i in range(RUNNERS)}
    sids = {i: s[0] for i, s in sessions_of.items()}
    assert running == {}
    pass_ticks = range(0, LAST_TICK + 1, INTERVAL // TICK2)
    assert sorted(orders_by_tick) == list(pass_ticks)
    assert all(len(results) == 2 for results in orders_by_tick.values())  # 14 passes
    for k, results in orders_by_tick.items():
        for orders in results:
            if k == 24:
                assert sorted(o.session_id for o in orders) == sorted(sids.values())
                assert {o.reason for o in orders} == {NO_BALANCE}
            else:
                assert orders == []

    # exact charges: each runner ran from its start to the stop at tick 25 (250 s)
    total = 0
    with database.transaction(factory) as db:
        for i, sid in sids.items():
            session = db.get(UsageSession, sid)
            lifetime = TICK2 * (25 - runner_start_tick(i))
            assert session.started_at == tick_time(runner_start_tick(i))
            assert session.stopped_at == tick_time(25)
            assert session.charged_seconds == lifetime
            rows = usage_rows(db, sid)
            assert [
                (r.period_index, r.covers_from_seconds, r.covers_to_seconds, -r.amount_millipoints)
                for r in rows
            ] == expected_rows(gpus[i], lifetime)
            total += cumulative_millipoints(gpus[i], lifetime)
        final = ledger.balance(db, project_id)
        assert final == grant - total
        assert db.scalar(select(func.count()).select_from(UsageSession)) == RUNNERS
        opened = select(func.count()).where(AuditEvent.action == "session.open")
        assert db.scalar(opened) == RUNNERS
    assert (grant, need, final) == (2_720, 1_010, -678)  # below zero, above −1010

    # the floor, after every pass, stop and start: minus one interval of the servers
    # running in the current metering interval, i.e. those the last pass that found any
    # metered, and those started since (not only those still open: the stops that took
    # the balance below zero have just closed theirs)
    last_metered: dict[int, int] = {}
    for label, k, balance, open_costs in records:
        if label == "pass" and open_costs:
            last_metered = open_costs
        floor = -sum((last_metered | open_costs).values())
        assert balance >= floor, (label, k, balance, floor)
    assert min(r[2] for r in records) == final

    # once the balance cannot pay one interval of one GPU (at the pass at tick 24, 0.017
    # points left), and already from tick 19 (exactly the need of the twenty left),
    # every start is refused, and a refused start writes nothing
    gone = next(n for n, r in enumerate(records) if r[2] < interval_cost(1, INTERVAL))
    assert records[gone][:3] == ("pass", 24, 17)
    starts_after = [r[0] for r in records[gone:] if r[0] == "open" or r[0].startswith("ref")]
    assert starts_after and set(starts_after) == {"refused:balance-too-low"}
    refused_starts = [(u, k) for u, k, _code in refusals]
    assert sorted(refused_starts) == sorted(
        [(u, k) for u in latecomers for k in range(19, LAST_TICK + 1)]
        + [(u, k) for u in runners for k in range(26, LAST_TICK + 1, 2)]
    )  # 10 × 18 + 20 × 6 = 300 refusals
    assert {code for _u, _k, code in refusals} == {"balance-too-low"}
    assert writes_when_refused == []


# --- 3. passes at the same moment from several threads ------------------------------------------

SERVERS = 40
PASS_THREADS = 8
PASSES_EACH = 3
ROUNDS = (T0 + timedelta(seconds=437.3), T0 + timedelta(seconds=901.9))


def _servers(factory) -> tuple[int, list[int], list[datetime], list[int]]:
    names = [f"s{i:02d}" for i in range(SERVERS)]
    project_id = make_project(factory, millipoints=GRANT, members=tuple(names), max_gpus=2)
    gpus = [1 + i % 2 for i in range(SERVERS)]
    started = [T0 + timedelta(milliseconds=1700 * i) for i in range(SERVERS)]
    sids = [
        open_server(factory, request(n, g), at)
        for n, g, at in zip(names, gpus, started, strict=True)
    ]
    return project_id, gpus, started, sids


def _ledger(factory, project_id: int) -> tuple[int, list[tuple]]:
    with database.transaction(factory) as db:
        rows = db.execute(
            select(
                LedgerEntry.session_id,
                LedgerEntry.period_index,
                LedgerEntry.covers_from_seconds,
                LedgerEntry.covers_to_seconds,
                LedgerEntry.amount_millipoints,
                LedgerEntry.created_at,
            )
            .where(LedgerEntry.kind == LedgerKind.USAGE)
            .order_by(LedgerEntry.session_id, LedgerEntry.period_index)
        ).all()
        return ledger.balance(db, project_id), [tuple(r) for r in rows]


def test_concurrent_passes_at_the_same_moment_charge_each_period_once(fresh_database):
    _e, concurrent = fresh_database()
    _e, single = fresh_database()
    setup = _servers(concurrent)
    assert _servers(single) == setup  # the same project, servers and session ids in both
    project_id, gpus, started, _sids = setup
    outcomes = Outcomes()
    for now in ROUNDS:
        metering_pass(single, now)  # one pass

        barrier = threading.Barrier(PASS_THREADS, timeout=60)
        results: list[list[StopOrder]] = []

        def passes(now=now, barrier=barrier, results=results) -> None:
            barrier.wait()
            for _ in range(PASSES_EACH):
                result = outcomes.call(metering_pass, concurrent, now)
                if result is not None:
                    results.append(result)

        run_threads([passes] * PASS_THREADS)  # 24 passes at once, at the same moment
        outcomes.check()
        assert results == [[]] * PASS_THREADS * PASSES_EACH

        balance, rows = _ledger(concurrent, project_id)
        assert (balance, rows) == _ledger(single, project_id)
        # and the figures themselves: each elapsed full period once
        full = [whole_seconds((now - at).total_seconds()) // INTERVAL for at in started]
        assert len(rows) == sum(full)
        assert len({(r[0], r[1]) for r in rows}) == len(rows)
        assert GRANT - balance == sum(
            cumulative_millipoints(g, n * INTERVAL) for g, n in zip(gpus, full, strict=True)
        )
    assert (len(rows), GRANT - balance) == (559, 27_952)


def test_without_the_lock_the_unique_period_still_charges_once(fresh_database):
    """Two writers that skip the project lock (as no caller does) and charge the same
    session from the same reading: PostgreSQL's unique (session, period) index lets one
    commit and refuses the other, whichever comes second."""
    _e, factory = fresh_database()
    make_project(factory, members=("alice",))
    sid = open_server(factory, request("alice", 2), T0)
    read = threading.Barrier(2, timeout=30)
    committed: list[int] = []
    refused: list[BaseException] = []

    def charge() -> None:
        try:
            with database.transaction(factory) as db:
                session = db.get(UsageSession, sid)
                read.wait()  # both have read "nothing charged yet"
                charged = metering.settle(db, session, now=T0 + timedelta(seconds=130), final=False)
            committed.append(charged)
        except IntegrityError as e:
            refused.append(e)

    run_threads([charge, charge])
    assert committed == [134]  # two periods of 2 GPUs, once
    assert len(refused) == 1
    assert isinstance(refused[0].orig, psycopg.errors.UniqueViolation)
    with database.transaction(factory) as db:
        assert [(r.period_index, -r.amount_millipoints) for r in usage_rows(db, sid)] == [
            (0, 67),
            (1, 67),
        ]


# --- a race found while writing these tests (fixed) ---------------------------------------------


def test_a_pass_survives_a_first_server_starting_while_it_locks(fresh_database):
    engine, factory = fresh_database()
    make_project(factory, members=("alice",))
    fired: list[bool] = []
    started: list[int] = []

    @event.listens_for(engine, "after_cursor_execute")
    def _start_after_the_lock(conn, cursor, statement, parameters, context, executemany):
        # the pass has run its lock statement (no project had an open session), and has
        # not yet read the sessions: a start commits now, on another connection
        if not fired and "FOR UPDATE" in statement and "usage_sessions" in statement:
            fired.append(True)
            started.append(open_server(factory, request("alice", 1), T0))

    try:
        orders = metering_pass(factory, T0 + timedelta(seconds=30))
    finally:
        event.remove(engine, "after_cursor_execute", _start_after_the_lock)
    assert started  # the start did commit between the two statements
    assert orders == []  # the new session: nothing due yet, and the balance suffices
    with database.transaction(factory) as db:
        assert usage_rows(db, started[0]) == []
