"""Usage sessions and their charges, on real SQLite and PostgreSQL databases.

Every step runs in its own transaction, as the service does it (one per request or per
metering pass), with ``now`` given explicitly.
"""

from __future__ import annotations

import itertools
import random
from datetime import date, timedelta

import pytest
from sqlalchemy import delete, event, func, select
from sqlalchemy.exc import IntegrityError

from quota_service import access, ledger, metering
from quota_service import db as database
from quota_service.metering import RunningServer, ServerRequest, SessionRefused
from quota_service.models import (
    Account,
    AuditEvent,
    Company,
    LedgerEntry,
    LedgerKind,
    Membership,
    Project,
    ProjectStatus,
    UsageSession,
)
from quota_service.timewindow import window_for_notice
from spawner.points import cumulative_millipoints, interval_cost, whole_seconds
from tests.conftest import at

CREATED = at("2026-11-20 09:00:00")
START, END = window_for_notice(date(2026, 11, 28))  # [2026-11-28, 2027-02-28) Taipei
T0 = at("2026-12-01 10:00:00")
_numbers = itertools.count(20_000_000)


def t(seconds: float):
    return T0 + timedelta(seconds=seconds)


def make_project(
    session_factory,
    *,
    millipoints: int = 1_000_000,
    members: tuple[str, ...] = ("alice",),
    status: ProjectStatus = ProjectStatus.APPROVED,
    max_gpus: int = 2,
) -> int:
    """An approved project (by default) with its window open around T0, members and a grant."""
    with database.transaction(session_factory) as db:
        company = Company(name="測試", business_number=str(next(_numbers)), created_at=CREATED)
        project = Project(
            company=company,
            name="測試計畫",
            status=status,
            window_start=START,
            window_end=END,
            max_gpus_per_server=max_gpus,
            created_at=CREATED,
        )
        db.add(project)
        for username in members:
            account = db.scalar(select(Account).where(Account.username == username))
            if account is None:
                account = Account(username=username, created_at=CREATED)
            db.add(Membership(project=project, account=account, created_at=CREATED))
        db.flush()
        if millipoints:
            ledger.grant(db, project, millipoints, actor="operator", reason="L1", now=CREATED)
        return project.id


def request(username: str = "alice", gpus: int = 2, server: str = "") -> ServerRequest:
    return ServerRequest(
        username=username,
        server_name=server,
        gpu_vendor="nvidia",
        gpu_count=gpus,
        devices=[f"nvidia:{i}" for i in range(gpus)],
        simulated=True,
    )


def open_(session_factory, req: ServerRequest, now, interval: int = 60) -> int:
    with database.transaction(session_factory) as db:
        return metering.open_session(db, req, now=now, interval_seconds=interval).id


def meter(session_factory, now) -> list[metering.StopOrder]:
    with database.transaction(session_factory) as db:
        return metering.meter(db, now=now)


def close(session_factory, session_id: int, now, **kwargs) -> int:
    with database.transaction(session_factory) as db:
        session = db.get(UsageSession, session_id)
        ledger.lock_project(db, session.project_id)
        db.refresh(session)
        return metering.close_session(db, session, now=now, **kwargs)


def usage(session_factory, session_id: int | None = None) -> list[tuple]:
    """(period, from, to, amount) of the usage rows, in the order written."""
    with database.transaction(session_factory) as db:
        query = select(LedgerEntry).where(LedgerEntry.kind == LedgerKind.USAGE)
        if session_id is not None:
            query = query.where(LedgerEntry.session_id == session_id)
        return [
            (e.period_index, e.covers_from_seconds, e.covers_to_seconds, e.amount_millipoints)
            for e in db.scalars(query.order_by(LedgerEntry.id))
        ]


def balance(session_factory, project_id: int) -> int:
    with database.transaction(session_factory) as db:
        return ledger.balance(db, project_id)


def counts(session_factory) -> tuple[int, int, int]:
    with database.transaction(session_factory) as db:
        return tuple(
            db.scalar(select(func.count()).select_from(model))
            for model in (LedgerEntry, UsageSession, AuditEvent)
        )


def get_session(session_factory, session_id: int) -> UsageSession:
    with database.transaction(session_factory) as db:
        return db.get(UsageSession, session_id)


# --- charging -----------------------------------------------------------------------------


def test_worked_example_two_gpus_interval_60_stopped_at_150_seconds(session_factory):
    project = make_project(session_factory)
    sid = open_(session_factory, request(gpus=2), T0)
    assert usage(session_factory) == []

    assert meter(session_factory, t(59)) == []
    assert usage(session_factory) == []  # no full interval yet

    meter(session_factory, t(60))
    assert usage(session_factory, sid) == [(0, 0, 60, -67)]  # ceil(2·60·5/9) = 67

    meter(session_factory, t(120))
    assert usage(session_factory, sid) == [(0, 0, 60, -67), (1, 60, 120, -67)]  # 134 - 67

    assert close(session_factory, sid, t(150), reason="stopped by user") == 33  # 167 - 134
    rows = usage(session_factory, sid)
    assert rows == [(0, 0, 60, -67), (1, 60, 120, -67), (2, 120, 150, -33)]
    assert -sum(r[3] for r in rows) == cumulative_millipoints(2, 150) == 167
    assert balance(session_factory, project) == 1_000_000 - 167

    session = get_session(session_factory, sid)
    assert (session.charged_seconds, session.charged_periods) == (150, 3)
    assert session.stopped_at == t(150)
    assert session.stop_reason == "stopped by user"


def test_a_late_pass_charges_every_elapsed_interval_separately(session_factory):
    make_project(session_factory)
    sid = open_(session_factory, request(gpus=2), T0)
    meter(session_factory, t(185))  # three intervals elapsed, and 5 s of a fourth
    assert usage(session_factory, sid) == [
        (0, 0, 60, -67),
        (1, 60, 120, -67),
        (2, 120, 180, -66),  # cumulative 200 - 134
    ]
    assert close(session_factory, sid, t(185)) == 6  # ceil(2·185·5/9) = 206; 206 - 200
    assert -sum(r[3] for r in usage(session_factory, sid)) == cumulative_millipoints(2, 185)


def test_a_started_second_is_charged(session_factory):
    make_project(session_factory)
    sid = open_(session_factory, request(gpus=2), T0)
    close(session_factory, sid, t(150.2))
    assert usage(session_factory, sid) == [
        (0, 0, 60, -67),
        (1, 60, 120, -67),
        (2, 120, 151, -34),  # 151 whole seconds: ceil(1510/9) = 168; 168 - 134
    ]


def test_a_single_second_after_the_last_interval_is_charged_at_close(session_factory):
    make_project(session_factory)
    sid = open_(session_factory, request(gpus=2), T0)
    meter(session_factory, t(60))
    assert close(session_factory, sid, t(61)) == 1  # ceil(610/9) = 68; 68 - 67
    assert usage(session_factory, sid) == [(0, 0, 60, -67), (1, 60, 61, -1)]


def test_one_gpu_for_an_hour_costs_two_points(session_factory):
    project = make_project(session_factory)
    sid = open_(session_factory, request(gpus=1), T0, interval=300)
    for k in range(1, 13):
        meter(session_factory, t(300 * k))
    assert close(session_factory, sid, t(3600)) == 0  # nothing left to charge
    assert len(usage(session_factory, sid)) == 12
    assert balance(session_factory, project) == 1_000_000 - 2000


def test_total_equals_the_cumulative_amount_whatever_the_pass_times(session_factory):
    rng = random.Random(115)
    make_project(session_factory, millipoints=100_000_000, max_gpus=8)
    for n, (gpus, interval) in enumerate([(1, 60), (2, 61), (3, 7), (8, 300)]):
        start = t(10_000 * n)
        sid = open_(session_factory, request(gpus=gpus, server=f"s{n}"), start, interval)
        moment = 0.0
        for _ in range(8):
            moment += rng.uniform(0, 3 * interval)
            meter(session_factory, start + timedelta(seconds=moment))
        stop = moment + rng.uniform(0, 2 * interval)
        close(session_factory, sid, start + timedelta(seconds=stop))
        rows = usage(session_factory, sid)
        total_seconds = whole_seconds(stop)
        assert -sum(r[3] for r in rows) == cumulative_millipoints(gpus, total_seconds)
        # the rows tile [0, total) without a gap or an overlap, periods numbered 0, 1, 2, …
        assert [r[0] for r in rows] == list(range(len(rows)))
        assert [r[1] for r in rows] == [0] + [r[2] for r in rows[:-1]]
        assert rows[-1][2] == total_seconds


def test_repeating_a_pass_at_the_same_moment_charges_nothing_more(session_factory):
    project = make_project(session_factory)
    sid = open_(session_factory, request(gpus=2), T0)
    meter(session_factory, t(130))
    first = usage(session_factory, sid)
    assert len(first) == 2
    for moment in (t(130), t(130), t(119), t(60)):  # the same moment, or a clock behind it
        meter(session_factory, moment)
    assert usage(session_factory, sid) == first
    assert balance(session_factory, project) == 1_000_000 - 134


def test_closing_twice_charges_once(session_factory):
    project = make_project(session_factory)
    sid = open_(session_factory, request(gpus=2), T0)
    assert close(session_factory, sid, t(150), reason="first") == 167
    before = counts(session_factory)
    assert close(session_factory, sid, t(900), reason="second") == 0
    assert counts(session_factory) == before  # not even an audit row
    session = get_session(session_factory, sid)
    assert (session.stopped_at, session.stop_reason) == (t(150), "first")
    assert balance(session_factory, project) == 1_000_000 - 167
    assert meter(session_factory, t(900)) == []  # a closed session is not metered
    assert counts(session_factory) == before


def test_void_close_charges_nothing(session_factory):
    project = make_project(session_factory)
    sid = open_(session_factory, request(gpus=2), T0)
    assert close(session_factory, sid, t(500), reason="never came up", void=True) == 0
    assert usage(session_factory, sid) == []
    session = get_session(session_factory, sid)
    assert session.stopped_at == session.started_at == T0
    assert balance(session_factory, project) == 1_000_000


def test_void_close_after_charged_periods_charges_no_more(session_factory):
    make_project(session_factory)
    sid = open_(session_factory, request(gpus=2), T0)
    meter(session_factory, t(60))
    assert close(session_factory, sid, t(100), void=True) == 0
    assert usage(session_factory, sid) == [(0, 0, 60, -67)]


def test_open_and_close_write_audit_rows(session_factory):
    make_project(session_factory)
    sid = open_(session_factory, request(gpus=2), T0)
    close(session_factory, sid, t(150))
    with database.transaction(session_factory) as db:
        actions = db.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.subject_type == "usage_session", AuditEvent.subject_id == str(sid))
            .order_by(AuditEvent.id)
        ).all()
    assert actions == ["session.open", "session.close"]


def test_a_new_start_of_the_same_server_settles_the_old_session(session_factory):
    make_project(session_factory)
    old = open_(session_factory, request(gpus=2), T0)
    new = open_(session_factory, request(gpus=1), t(90))
    assert new != old
    stale = get_session(session_factory, old)
    assert stale.stopped_at == t(90)
    assert stale.stop_reason == "superseded by a new start"
    assert -sum(r[3] for r in usage(session_factory, old)) == cumulative_millipoints(2, 90)
    with database.transaction(session_factory) as db:
        assert [s.id for s in metering.open_sessions(db)] == [new]


# --- refusals: nothing written ------------------------------------------------------------


def refused(session_factory, req: ServerRequest, now=T0, interval: int = 60):
    before = counts(session_factory)
    with pytest.raises(SessionRefused) as refusal:
        with database.transaction(session_factory) as db:
            try:
                metering.open_session(db, req, now=now, interval_seconds=interval)
            finally:
                pending = list(db.new) + list(db.dirty) + list(db.deleted)
    assert pending == []  # nothing even staged, let alone committed
    assert counts(session_factory) == before
    return refusal.value.refusal


def test_refused_when_not_a_member(session_factory):
    make_project(session_factory, members=("alice",))
    assert refused(session_factory, request("mallory")) is access.NOT_A_MEMBER
    with database.transaction(session_factory) as db:
        db.add(Account(username="outsider", created_at=CREATED))
    assert refused(session_factory, request("outsider")) is access.NOT_A_MEMBER


def test_refused_when_the_project_is_pending(session_factory):
    make_project(session_factory, members=("applicant",), status=ProjectStatus.PENDING)
    assert refused(session_factory, request("applicant")) is access.PENDING


def test_refused_outside_the_window(session_factory):
    make_project(session_factory)
    assert refused(session_factory, request(), now=END) is access.WINDOW_ENDED
    assert refused(session_factory, request(), now=START - timedelta(seconds=1)) is (
        access.WINDOW_NOT_OPEN
    )


def test_refused_above_the_gpus_per_server_limit(session_factory):
    make_project(session_factory, max_gpus=2)
    assert refused(session_factory, request(gpus=3)) is metering.GPU_LIMIT
    assert open_(session_factory, request(gpus=2), T0)  # the limit itself is fine


@pytest.mark.parametrize(("vendor", "gpus"), [("nvidia", 0), ("nvidia", -1), ("intel", 1), ("", 1)])
def test_refused_for_a_vendor_or_count_no_server_can_have(session_factory, vendor, gpus):
    make_project(session_factory)
    req = ServerRequest("alice", "", vendor, gpus, devices=[], simulated=True)
    assert refused(session_factory, req) is metering.BAD_REQUEST


def test_refused_when_the_balance_cannot_pay_the_next_interval_of_all_servers(session_factory):
    need = interval_cost(2, 60) + interval_cost(1, 60)
    assert need == 67 + 34
    make_project(session_factory, millipoints=need - 1, members=("alice", "bob"))
    open_(session_factory, request("alice", gpus=2), T0)  # 67 of 100: fine alone
    assert refused(session_factory, request("bob", gpus=1)) is metering.NO_BALANCE
    # a second server of the same person counts too
    assert refused(session_factory, request("alice", gpus=1, server="two")) is metering.NO_BALANCE


def test_a_balance_of_exactly_the_need_is_enough(session_factory):
    make_project(session_factory, millipoints=67 + 34, members=("alice", "bob"))
    open_(session_factory, request("alice", gpus=2), T0)
    assert open_(session_factory, request("bob", gpus=1), T0)


def test_refused_with_no_points_at_all(session_factory):
    make_project(session_factory, millipoints=0)
    assert refused(session_factory, request(gpus=1)) is metering.NO_BALANCE


# --- stop orders --------------------------------------------------------------------------


def test_no_stop_orders_when_all_is_fine(session_factory):
    make_project(session_factory, members=("alice", "bob"))
    open_(session_factory, request("alice"), T0)
    open_(session_factory, request("bob", gpus=1), T0)
    assert meter(session_factory, t(60)) == []
    assert len(usage(session_factory)) == 2  # but both were charged


def test_stop_orders_for_a_suspended_project_only(session_factory):
    suspended = make_project(session_factory, members=("alice", "bob"))
    make_project(session_factory, members=("carol",))
    a = open_(session_factory, request("alice"), T0)
    b = open_(session_factory, request("bob", gpus=1, server="lab"), T0)
    open_(session_factory, request("carol"), T0)
    with database.transaction(session_factory) as db:
        db.get(Project, suspended).status = ProjectStatus.SUSPENDED
    orders = meter(session_factory, t(60))
    assert [(o.session_id, o.username, o.server_name, o.reason) for o in orders] == [
        (a, "alice", "", access.SUSPENDED),
        (b, "bob", "lab", access.SUSPENDED),
    ]
    assert get_session(session_factory, a).stop_reason == access.SUSPENDED.message
    assert len(usage(session_factory)) == 3  # the elapsed interval is still charged
    # the order is repeated while the server has not stopped
    assert [o.session_id for o in meter(session_factory, t(61))] == [a, b]


def test_stop_orders_when_the_window_ends(session_factory):
    make_project(session_factory)
    sid = open_(session_factory, request(), END - timedelta(seconds=120))
    assert meter(session_factory, END - timedelta(seconds=1)) == []
    orders = meter(session_factory, END)
    assert [(o.session_id, o.reason) for o in orders] == [(sid, access.WINDOW_ENDED)]


def test_stop_order_for_a_removed_member_only(session_factory):
    project = make_project(session_factory, members=("alice", "bob"))
    open_(session_factory, request("alice"), T0)
    b = open_(session_factory, request("bob"), T0)
    with database.transaction(session_factory) as db:
        bob = db.scalar(select(Account).where(Account.username == "bob"))
        db.execute(
            delete(Membership).where(
                Membership.project_id == project, Membership.account_id == bob.id
            )
        )
    orders = meter(session_factory, t(60))
    assert [(o.session_id, o.username, o.reason) for o in orders] == [
        (b, "bob", access.NOT_A_MEMBER)
    ]


def test_stop_orders_when_the_balance_cannot_pay_the_next_interval(session_factory):
    project = make_project(session_factory, millipoints=200)
    sid = open_(session_factory, request(gpus=2), T0)  # needs 67 per interval at most
    assert meter(session_factory, t(60)) == []  # 200 - 67 = 133 left
    orders = meter(session_factory, t(120))  # 133 - 67 = 66 left, below 67
    assert balance(session_factory, project) == 66
    assert [(o.session_id, o.reason) for o in orders] == [(sid, metering.NO_BALANCE)]
    assert orders[0].reason.code == "balance-too-low"


# --- the ledger is append-only ------------------------------------------------------------


def all_rows(session_factory) -> list[tuple]:
    with database.transaction(session_factory) as db:
        return [
            (
                e.id,
                e.project_id,
                e.kind,
                e.amount_millipoints,
                e.session_id,
                e.period_index,
                e.covers_from_seconds,
                e.covers_to_seconds,
                e.reason,
                e.actor,
                e.created_at,
            )
            for e in db.scalars(select(LedgerEntry).order_by(LedgerEntry.id))
        ]


def test_passes_insert_rows_and_never_change_existing_ones(engine, session_factory):
    make_project(session_factory, members=("alice", "bob"))
    open_(session_factory, request("alice"), T0)
    b = open_(session_factory, request("bob", gpus=1), T0)
    meter(session_factory, t(60))
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(conn, cursor, statement, parameters, context, executemany):
        statements.append(" ".join(statement.split()).lower())

    try:
        before = all_rows(session_factory)
        meter(session_factory, t(180))
        close(session_factory, b, t(200))
        meter(session_factory, t(200))
        after = all_rows(session_factory)
    finally:
        event.remove(engine, "before_cursor_execute", _record)

    assert after[: len(before)] == before  # every earlier row unchanged
    assert len(after) > len(before)
    assert min(r[0] for r in after[len(before) :]) > max(r[0] for r in before)
    assert any(s.startswith("insert into ledger_entries") for s in statements)
    assert not any(
        s.startswith(("update ledger_entries", "delete from ledger_entries")) for s in statements
    )


def test_a_second_charge_for_the_same_period_is_refused_by_the_database(session_factory):
    project = make_project(session_factory)
    sid = open_(session_factory, request(), T0)
    meter(session_factory, t(60))
    before = all_rows(session_factory)
    with pytest.raises(IntegrityError):
        with database.transaction(session_factory) as db:
            db.add(
                LedgerEntry(
                    project_id=project,
                    kind=LedgerKind.USAGE,
                    amount_millipoints=-67,
                    session_id=sid,
                    period_index=0,
                    covers_from_seconds=0,
                    covers_to_seconds=60,
                    created_at=t(61),
                )
            )
    assert all_rows(session_factory) == before


def test_grants_without_a_session_are_not_caught_by_the_period_constraint(session_factory):
    project = make_project(session_factory)
    with database.transaction(session_factory) as db:
        p = db.get(Project, project)
        ledger.grant(db, p, 1000, actor="operator", reason="bonus", now=T0)
        ledger.grant(db, p, 1000, actor="operator", reason="bonus", now=T0)
    assert balance(session_factory, project) == 1_002_000


# --- reconciliation with the servers the hub runs -------------------------------------------


def reconcile(session_factory, now, running, listed_at=None) -> list[metering.StopOrder]:
    """A pass with the hub's list: ``running`` is a set of (user, server) seen ready, or a
    dict of RunningServer as the hub describes them."""
    if isinstance(running, set):
        running = {key: RunningServer(ready=True) for key in running}
    # as the service runs it: the pass, then the adoption in a transaction of its own
    with database.transaction(session_factory) as db:
        orders = metering.meter(db, now=now, running=running, listed_at=listed_at or now)
    with database.transaction(session_factory) as db:
        return orders + metering.adopt_unmetered(
            db, running, listed_at=listed_at or now, now=now, interval_seconds=60
        )


def test_a_server_the_hub_no_longer_runs_is_closed_where_it_was_last_seen(session_factory):
    # 2 GPUs, 60 s intervals: seen running at 120 s, then the service was down until 600 s
    # and the hub stopped the server meanwhile: nothing is charged after 120 s
    project = make_project(session_factory)
    session_id = open_(session_factory, request(gpus=2), T0)
    assert reconcile(session_factory, t(120), running={("alice", "")}) == []
    assert get_session(session_factory, session_id).last_seen_at == t(120)
    reconcile(session_factory, t(600), running=set())
    closed = get_session(session_factory, session_id)
    assert closed.stopped_at == t(120) and closed.stop_reason == "server not running in the hub"
    assert closed.charged_seconds == 120
    assert balance(session_factory, project) == 1_000_000 - cumulative_millipoints(2, 120)
    reconcile(session_factory, t(900), running=set())  # re-running the pass changes nothing
    assert balance(session_factory, project) == 1_000_000 - cumulative_millipoints(2, 120)


def test_a_server_never_seen_running_is_closed_at_its_start(session_factory):
    project = make_project(session_factory)
    session_id = open_(session_factory, request(gpus=1), T0)
    reconcile(session_factory, t(300), running=set())
    closed = get_session(session_factory, session_id)
    assert closed.stopped_at == T0 and closed.charged_seconds == 0
    assert balance(session_factory, project) == 1_000_000


def test_a_session_opened_after_the_hub_listed_its_servers_is_left_open(session_factory):
    make_project(session_factory)
    session_id = open_(session_factory, request(gpus=1), t(10))
    # the list was taken at 5 s, before this server's start: its absence proves nothing
    reconcile(session_factory, t(70), running=set(), listed_at=t(5))
    session = get_session(session_factory, session_id)
    assert session.stopped_at is None and session.charged_seconds == 60


def test_without_the_hub_list_sessions_are_charged_and_not_closed(session_factory):
    make_project(session_factory)
    session_id = open_(session_factory, request(gpus=1), T0)
    meter(session_factory, t(120))
    session = get_session(session_factory, session_id)
    assert session.stopped_at is None and session.charged_seconds == 120


def test_a_ready_server_without_a_session_is_adopted_and_charged_from_its_start(session_factory):
    project = make_project(session_factory)
    hub_view = {("alice", ""): RunningServer(True, T0, "nvidia", 2)}
    assert reconcile(session_factory, t(30), hub_view) == []
    [adopted] = sessions_of(session_factory, "alice")
    assert (adopted.started_at, adopted.gpu_count, adopted.gpu_vendor) == (T0, 2, "nvidia")
    with database.transaction(session_factory) as db:
        actions = db.scalars(select(AuditEvent.action)).all()
    assert "session.adopt" in actions
    reconcile(session_factory, t(130), hub_view)
    # charged from the hub's start, like any session: two full 60 s periods of 2 GPUs
    assert balance(session_factory, project) == 1_000_000 - cumulative_millipoints(2, 120)
    reconcile(session_factory, t(131), hub_view)  # seen again: not adopted twice
    assert len(sessions_of(session_factory, "alice")) == 1


def test_a_server_whose_stop_was_just_recorded_is_not_adopted_again(session_factory):
    make_project(session_factory)
    # the hub listed the server just before its stop was recorded
    session_id = open_(session_factory, request(gpus=1), t(1))
    close(session_factory, session_id, t(50))
    assert (
        reconcile(session_factory, t(60), {("alice", ""): RunningServer(True, T0, "nvidia", 1)})
        == []
    )
    assert len(sessions_of(session_factory, "alice")) == 1


def test_a_server_of_someone_without_a_usable_project_is_stopped_not_adopted(session_factory):
    make_project(session_factory, members=("alice",))
    orders = reconcile(session_factory, t(60), {("mallory", ""): RunningServer(True, T0, "amd", 1)})
    assert [(o.username, o.reason.code) for o in orders] == [("mallory", "not-a-member")]
    assert sessions_of(session_factory, "mallory") == []


def sessions_of(session_factory, username: str) -> list[UsageSession]:
    with database.transaction(session_factory) as db:
        return list(db.scalars(select(UsageSession).where(UsageSession.username == username)))
