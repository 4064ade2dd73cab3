"""Usage sessions and their charges.

A session opens when a server starts and closes when it stops. Every metering interval
the service charges each open session for the periods that have fully elapsed; the stop
charges the last, partial period. Each charge is keyed by (session, period), so a pass
that is repeated or retried charges nothing twice. Amounts follow ``spawner.points``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from spawner.points import interval_cost, period_charge, whole_seconds

from . import access, audit, ledger
from .access import Refusal
from .models import Account, LedgerEntry, LedgerKind, UsageSession

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


def settle(db: Session, session: UsageSession, *, now: datetime, final: bool) -> int:
    """Charge what ``session`` owes up to ``now`` (or its stop); returns millipoints charged.

    Full periods are charged as they elapse; with ``final`` the last partial period too.
    """
    end = session.stopped_at or now
    elapsed = whole_seconds((end - session.started_at).total_seconds())
    interval = session.interval_seconds
    charged = 0
    while (session.charged_periods + 1) * interval <= elapsed:
        charged += _charge(
            db, session, session.charged_periods, (session.charged_periods + 1) * interval, now
        )
    if final and elapsed > session.charged_seconds:
        charged += _charge(db, session, session.charged_periods, elapsed, now)
    return charged


def _charge(db: Session, session: UsageSession, period: int, to_seconds: int, now: datetime) -> int:
    amount = period_charge(session.gpu_count, session.charged_seconds, to_seconds)
    db.add(
        LedgerEntry(
            project_id=session.project_id,
            kind=LedgerKind.USAGE,
            amount_millipoints=-amount,
            session_id=session.id,
            period_index=period,
            covers_from_seconds=session.charged_seconds,
            covers_to_seconds=to_seconds,
            reason=f"{session.gpu_count}×{session.gpu_vendor} GPU",
            actor="metering",
            created_at=now,
        )
    )
    session.charged_seconds = to_seconds
    session.charged_periods = period + 1
    return amount


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


def meter(
    db: Session,
    *,
    now: datetime,
    running: set[tuple[str, str]] | None = None,
    listed_at: datetime | None = None,
) -> list[StopOrder]:
    """One metering pass.

    With ``running`` (the servers the hub listed at ``listed_at``), sessions are first
    reconciled with what really runs: a session whose server the hub no longer runs is
    closed where it was last seen, so a stop the service missed (it was down, or the hub
    stopped servers after it) is never charged past the server's life. Then every open
    session is charged, and the servers that must stop are returned (project no longer
    usable, member removed, or balance short of the next interval).
    """
    project_ids = db.scalars(
        select(UsageSession.project_id).where(UsageSession.stopped_at.is_(None)).distinct()
    ).all()
    orders: list[StopOrder] = []
    for project_id in sorted(project_ids):
        # lock first, then read: a stop being recorded at the same moment is either
        # fully before this pass or fully after it
        project = ledger.lock_project(db, project_id)
        sessions = open_sessions(db, project_id)
        if running is not None and listed_at is not None:
            sessions = _reconcile(db, sessions, running, listed_at, now)
        for session in sessions:
            settle(db, session, now=now, final=False)
        refusal = access.project_refusal(project, now)
        if refusal is None and ledger.balance(db, project_id) < next_interval_need(sessions):
            refusal = NO_BALANCE
        for session in sessions:
            reason = refusal
            if reason is None and not access.is_member(db, project_id, session.username):
                reason = access.NOT_A_MEMBER
            if reason is not None:
                if session.stop_reason != reason.message:
                    session.stop_reason = reason.message
                    log.info(
                        "stopping %s/%s: %s", session.username, session.server_name, reason.code
                    )
                orders.append(StopOrder(session.id, session.username, session.server_name, reason))
    return orders


def _reconcile(
    db: Session,
    sessions: list[UsageSession],
    running: set[tuple[str, str]],
    listed_at: datetime,
    now: datetime,
) -> list[UsageSession]:
    still_open = []
    for session in sessions:
        if (session.username, session.server_name) in running:
            session.last_seen_at = listed_at
            still_open.append(session)
        elif session.started_at >= listed_at:
            still_open.append(session)  # opened after the hub's list was taken
        else:
            log.warning(
                "session %s: %s/%s is not running in the hub; closing it where last seen",
                session.id,
                session.username,
                session.server_name,
            )
            close_session(
                db,
                session,
                now=now,
                stopped_at=session.last_seen_at or session.started_at,
                reason="server not running in the hub",
            )
    return still_open
