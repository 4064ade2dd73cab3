"""Usage sessions and their charges.

A session opens when a server starts and closes when it stops. Every metering interval
the service charges each open session for the periods that have fully elapsed; the stop
charges the last, partial period. Each charge is keyed by (session, period), so a pass
that is repeated or retried charges nothing twice. Amounts follow ``spawner.points``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from spawner.points import interval_cost, period_charge, whole_seconds

from . import access, audit, ledger
from .access import Refusal
from .models import (
    Account,
    AuditEvent,
    LedgerEntry,
    LedgerKind,
    Membership,
    Project,
    UsageSession,
)

log = logging.getLogger(__name__)

NO_BALANCE = Refusal(
    "balance-too-low",
    "計畫點數不足以支付下一個計費區間，伺服器已停止或無法啟動。",
    "The project's points cannot pay for the next metering interval, so its servers stop or cannot start.",
)
BAD_REQUEST = Refusal(
    "bad-gpu-request",
    "GPU 廠牌或數量不正確。",
    "The GPU vendor or count is not valid.",
)
GPU_LIMIT = Refusal(
    "gpu-limit",
    "GPU 數量超過計畫每台伺服器的上限。",
    "More GPUs than the project allows per server.",
)


class SessionRefused(Exception):
    def __init__(self, refusal: Refusal, detail: str = ""):
        self.refusal = refusal
        super().__init__(refusal.message + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class ServerRequest:
    username: str
    server_name: str
    gpu_vendor: str
    gpu_count: int
    devices: list[str]
    simulated: bool


@dataclass(frozen=True)
class StopOrder:
    session_id: int
    username: str
    server_name: str
    reason: Refusal


def open_sessions(db: Session, project_id: int | None = None) -> list[UsageSession]:
    query = select(UsageSession).where(UsageSession.stopped_at.is_(None))
    if project_id is not None:
        query = query.where(UsageSession.project_id == project_id)
    return list(db.scalars(query.order_by(UsageSession.id)))


def next_interval_need(sessions: list[UsageSession]) -> int:
    return sum(interval_cost(s.gpu_count, s.interval_seconds) for s in sessions)


def open_session(
    db: Session, request: ServerRequest, *, now: datetime, interval_seconds: int
) -> UsageSession:
    """Open a metered session, or raise SessionRefused with nothing written."""
    if request.gpu_vendor not in ("nvidia", "amd") or request.gpu_count < 1:
        raise SessionRefused(BAD_REQUEST, f"{request.gpu_count} × {request.gpu_vendor!r}")
    decision = access.decide(db, request.username, now)
    if not decision.may_spawn:
        raise SessionRefused(decision.refusal or access.NOT_A_MEMBER)
    project = ledger.lock_project(db, decision.project.id)
    if request.gpu_count > project.max_gpus_per_server:
        raise SessionRefused(GPU_LIMIT, f"{request.gpu_count} > {project.max_gpus_per_server}")
    running = open_sessions(db, project.id)
    for stale in running:
        if stale.username == request.username and stale.server_name == request.server_name:
            # the hub lost track of an earlier start of the same server: settle it first
            close_session(db, stale, now=now, reason="superseded by a new start")
            running.remove(stale)
            break
    balance = ledger.balance(db, project.id)
    need = next_interval_need(running) + interval_cost(request.gpu_count, interval_seconds)
    if balance < need:
        raise SessionRefused(NO_BALANCE, f"balance {balance} < need {need} millipoints")
    account = db.scalar(select(Account).where(Account.username == request.username))
    session = UsageSession(
        project_id=project.id,
        account_id=account.id,
        username=request.username,
        server_name=request.server_name,
        gpu_vendor=request.gpu_vendor,
        gpu_count=request.gpu_count,
        devices=",".join(request.devices),
        simulated=request.simulated,
        interval_seconds=interval_seconds,
        started_at=now,
    )
    db.add(session)
    db.flush()
    audit.record(
        db,
        actor=request.username,
        action="session.open",
        subject_type="usage_session",
        subject_id=session.id,
        at=now,
        project_id=project.id,
        gpu_vendor=request.gpu_vendor,
        gpu_count=request.gpu_count,
        devices=request.devices,
        simulated=request.simulated,
    )
    return session


@dataclass(frozen=True)
class Charge:
    """One ledger row of usage: the span ``[from_seconds, to_seconds)`` of a session."""

    period: int
    from_seconds: int
    to_seconds: int
    millipoints: int


def charges_due(
    gpu_count: int,
    interval: int,
    charged_periods: int,
    charged_seconds: int,
    elapsed: int,
    *,
    final: bool,
) -> list[Charge]:
    """What a session owes after ``elapsed`` whole seconds, given what it was charged.

    Full periods are charged as they elapse; with ``final`` the last partial period too.
    The one rule for every way a session is charged (a stop, a pass, a reconciliation).
    """
    charges = []
    while (charged_periods + 1) * interval <= elapsed:
        to_seconds = (charged_periods + 1) * interval
        amount = period_charge(gpu_count, charged_seconds, to_seconds)
        charges.append(Charge(charged_periods, charged_seconds, to_seconds, amount))
        charged_periods, charged_seconds = charged_periods + 1, to_seconds
    if final and elapsed > charged_seconds:
        amount = period_charge(gpu_count, charged_seconds, elapsed)
        charges.append(Charge(charged_periods, charged_seconds, elapsed, amount))
    return charges


def _elapsed(started_at: datetime, end: datetime) -> int:
    return whole_seconds((end - started_at).total_seconds())


def _ledger_row(session, charge: Charge, now: datetime) -> dict:
    return {
        "project_id": session.project_id,
        "kind": LedgerKind.USAGE,
        "amount_millipoints": -charge.millipoints,
        "session_id": session.id,
        "period_index": charge.period,
        "covers_from_seconds": charge.from_seconds,
        "covers_to_seconds": charge.to_seconds,
        "reason": f"{session.gpu_count}×{session.gpu_vendor} GPU",
        "actor": "metering",
        "created_at": now,
    }


def settle(db: Session, session: UsageSession, *, now: datetime, final: bool) -> int:
    """Charge what ``session`` owes up to ``now`` (or its stop); returns millipoints charged."""
    charges = charges_due(
        session.gpu_count,
        session.interval_seconds,
        session.charged_periods,
        session.charged_seconds,
        _elapsed(session.started_at, session.stopped_at or now),
        final=final,
    )
    for charge in charges:
        db.add(LedgerEntry(**_ledger_row(session, charge, now)))
    if charges:
        session.charged_periods = charges[-1].period + 1
        session.charged_seconds = charges[-1].to_seconds
    return sum(c.millipoints for c in charges)


def close_session(
    db: Session,
    session: UsageSession,
    *,
    now: datetime,
    reason: str = "",
    void: bool = False,
    stopped_at: datetime | None = None,
) -> int:
    """Stop metering; idempotent (a closed session is left as it is). ``void`` is for a
    server that never came up: it ends the session where it began, so nothing is charged
    beyond periods already charged. ``stopped_at`` is for a stop learnt after the fact."""
    if session.stopped_at is not None:
        return 0
    if void:
        stopped_at = session.started_at
    session.stopped_at = max(stopped_at or now, session.started_at)
    if reason and not session.stop_reason:
        session.stop_reason = reason
    charged = settle(db, session, now=now, final=True)
    audit.record(
        db,
        actor=session.username,
        action="session.close",
        subject_type="usage_session",
        subject_id=session.id,
        at=now,
        charged_millipoints=charged,
        total_seconds=session.charged_seconds,
        reason=session.stop_reason,
    )
    return charged


@dataclass(frozen=True)
class RunningServer:
    """A server as the hub lists it (GET /hub/api/users?state=active)."""

    ready: bool
    started: datetime | None = None
    gpu_vendor: str | None = None
    gpu_count: int | None = None


SERVER_GONE = "server not running in the hub"


def meter(
    db: Session,
    *,
    now: datetime,
    running: dict[tuple[str, str], RunningServer] | None = None,
    listed_at: datetime | None = None,
) -> list[StopOrder]:
    """One metering pass, in a constant number of database round trips whatever the
    number of servers (benchmarks/metering_pass.py measures it).

    With ``running`` (the servers the hub listed at ``listed_at``) sessions are first
    reconciled with what really runs: a session whose server the hub no longer runs is
    closed where it was last seen, so a stop the service missed (it was down, or the hub
    stopped servers after it) is never charged past the server's life (the other way, a
    server without a session, is ``adopt_unmetered``). Then every open session is charged
    for its elapsed periods, and the servers that must stop are returned (project no
    longer usable, member removed, or balance short of the next interval).
    """
    sessions_table = UsageSession.__table__
    # lock every project with an open session, in id order (the order every writer uses),
    # then read the sessions: a stop recorded meanwhile is wholly before or after the pass
    projects = {
        p.id: p
        for p in db.execute(
            select(Project.__table__)
            .where(
                Project.id.in_(
                    select(UsageSession.project_id).where(UsageSession.stopped_at.is_(None))
                )
            )
            .order_by(Project.id)
            .with_for_update()
        )
    }
    # only sessions of the projects locked above: a project's first session committed in
    # between waits for the next pass
    sessions = db.execute(
        select(sessions_table)
        .where(
            sessions_table.c.stopped_at.is_(None),
            sessions_table.c.project_id.in_(list(projects)),
        )
        .order_by(sessions_table.c.id)
    ).all()
    balances = ledger.balances(db, list(projects))
    members: dict[int, set[str]] = defaultdict(set)
    for project_id, username in db.execute(
        select(Membership.project_id, Account.username)
        .join(Account)
        .where(Membership.project_id.in_(list(projects)))
    ):
        members[project_id].add(username)

    ledger_rows: list[dict] = []
    session_updates: dict[int, dict] = {}  # by session id, in the order first changed
    audit_rows: list[dict] = []
    still_open: dict[int, list] = defaultdict(list)
    for session in sessions:
        key = (session.username, session.server_name)
        changes = {"session_id": session.id}
        end, final = now, False
        if running is not None and listed_at is not None:
            if key in running:
                changes["last_seen_at"] = listed_at
            elif session.started_at < listed_at:
                end, final = (
                    max(session.last_seen_at or session.started_at, session.started_at),
                    True,
                )
                log.warning(
                    "session %s: %s/%s is not running in the hub; closing it where last seen",
                    session.id,
                    *key,
                )
        charges = charges_due(
            session.gpu_count,
            session.interval_seconds,
            session.charged_periods,
            session.charged_seconds,
            _elapsed(session.started_at, end),
            final=final,
        )
        ledger_rows += [_ledger_row(session, c, now) for c in charges]
        balances[session.project_id] -= sum(c.millipoints for c in charges)
        if charges:
            changes["charged_periods"] = charges[-1].period + 1
            changes["charged_seconds"] = charges[-1].to_seconds
        if final:
            changes.update(stopped_at=end, stop_reason=session.stop_reason or SERVER_GONE)
            audit_rows.append(
                audit.row(
                    actor="metering",
                    action="session.close",
                    subject_type="usage_session",
                    subject_id=session.id,
                    at=now,
                    reason=SERVER_GONE,
                    charged_millipoints=sum(c.millipoints for c in charges),
                    total_seconds=changes.get("charged_seconds", session.charged_seconds),
                )
            )
        else:
            still_open[session.project_id].append(session)
        if len(changes) > 1:
            session_updates[session.id] = changes

    orders: list[StopOrder] = []
    for project_id, open_ones in still_open.items():
        refusal = access.project_refusal(projects[project_id], now)
        if refusal is None and balances[project_id] < next_interval_need(open_ones):
            refusal = NO_BALANCE
        for session in open_ones:
            reason = refusal
            if reason is None and session.username not in members[project_id]:
                reason = access.NOT_A_MEMBER
            if reason is None:
                continue
            if session.stop_reason != reason.message:
                log.info("stopping %s/%s: %s", session.username, session.server_name, reason.code)
                _merge(session_updates, session.id, stop_reason=reason.message)
            orders.append(StopOrder(session.id, session.username, session.server_name, reason))

    # Core statements on the tables, not ORM bulk ones: the same executemany, without the
    # ORM's per-row bookkeeping (a sixth of a pass at 10,000 servers, docs/benchmarks.md)
    if ledger_rows:
        db.execute(insert(LedgerEntry.__table__), ledger_rows)
    if session_updates:
        by_id = sessions_table.c.id == bindparam("session_id")
        for batch in _by_keys(list(session_updates.values())):
            db.execute(update(sessions_table).where(by_id), batch)
    if audit_rows:
        db.execute(insert(AuditEvent.__table__), audit_rows)
    return orders


def _merge(updates: dict[int, dict], session_id: int, **fields) -> None:
    updates.setdefault(session_id, {"session_id": session_id}).update(fields)


def _by_keys(rows: list[dict]) -> list[list[dict]]:
    """Bulk UPDATE batches, one per set of columns (each row: ``session_id`` and the
    columns to set)."""
    batches: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        batches[tuple(sorted(row))].append(row)
    return list(batches.values())


def adopt_unmetered(
    db: Session,
    running: dict[tuple[str, str], RunningServer],
    *,
    listed_at: datetime,
    now: datetime,
    interval_seconds: int,
) -> list[StopOrder]:
    """Give a session to a ready server that has none (rare: an anomaly, logged).

    Run in a transaction of its own after the pass, so that the one project it locks is
    the only lock it holds. A server is covered when any session of it (open or closed)
    began at or after the hub's start of it; only uncovered ones are adopted, charged from
    the hub's start."""
    open_keys = {
        (username, server_name)
        for username, server_name in db.execute(
            select(UsageSession.username, UsageSession.server_name).where(
                UsageSession.stopped_at.is_(None)
            )
        )
    }
    candidates = {
        key: server
        for key, server in running.items()
        if key not in open_keys and server.ready and server.started and server.started < listed_at
    }
    if not candidates:
        return []
    covered = {
        (s.username, s.server_name, s.started_at)
        for s in db.execute(
            select(UsageSession.username, UsageSession.server_name, UsageSession.started_at).where(
                UsageSession.username.in_({user for user, _ in candidates}),
                UsageSession.started_at >= min(s.started for s in candidates.values()),
            )
        )
    }
    orders = []
    for (username, server_name), server in sorted(candidates.items()):
        if any(u == username and n == server_name and at >= server.started for u, n, at in covered):
            continue
        decision = access.decide(db, username, now)
        log.warning(
            "server %s/%s runs without a session (anomaly): %s",
            username,
            server_name,
            "adopting it" if decision.may_spawn else "stopping it",
        )
        if (
            not decision.may_spawn
            or server.gpu_vendor not in ("nvidia", "amd")
            or not server.gpu_count
        ):
            refusal = decision.refusal or BAD_REQUEST
            orders.append(StopOrder(0, username, server_name, refusal))
            continue
        ledger.lock_project(db, decision.project.id)
        account = db.scalar(select(Account).where(Account.username == username))
        adopted = UsageSession(
            project_id=decision.project.id,
            account_id=account.id,
            username=username,
            server_name=server_name,
            gpu_vendor=server.gpu_vendor,
            gpu_count=server.gpu_count,
            devices="",
            simulated=False,
            interval_seconds=interval_seconds,
            started_at=server.started,
            last_seen_at=listed_at,
        )
        db.add(adopted)
        db.flush()
        audit.record(
            db,
            actor="metering",
            action="session.adopt",
            subject_type="usage_session",
            subject_id=adopted.id,
            at=now,
            gpu_vendor=server.gpu_vendor,
            gpu_count=server.gpu_count,
            hub_started=server.started,
        )
    return orders
