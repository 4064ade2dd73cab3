"""Read models for pages and the API: what a project looks like to its members."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from spawner.points import burn_rate_points_per_hour, to_points

from . import ledger, metering
from .models import Account, LedgerEntry, Membership, Project, UsageSession
from .timewindow import last_second, taipei


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else taipei(moment).isoformat()


def server_summary(session: UsageSession) -> dict:
    return {
        "session_id": session.id,
        "username": session.username,
        "server_name": session.server_name,
        "gpu_vendor": session.gpu_vendor,
        "gpu_count": session.gpu_count,
        "devices": [d for d in session.devices.split(",") if d],
        "simulated": session.simulated,
        "started_at": _iso(session.started_at),
        "burn_rate_points_per_hour": str(burn_rate_points_per_hour(session.gpu_count)),
    }


def project_summary(db: Session, project: Project, balance_millipoints: int | None = None) -> dict:
    if balance_millipoints is None:
        balance_millipoints = ledger.balance(db, project.id)
    running = metering.open_sessions(db, project.id)
    return {
        "id": project.id,
        "name": project.name,
        "company": project.company.name,
        "category": project.category,
        "status": project.status,
        "tier": project.tier,
        "balance_points": str(to_points(balance_millipoints)),
        "window_start": _iso(project.window_start),
        "window_end": _iso(project.window_end),
        "window_last_second": _iso(last_second(project.window_end)) if project.window_end else None,
        "max_gpus_per_server": project.max_gpus_per_server,
        "running_servers": [server_summary(s) for s in running],
        "burn_rate_points_per_hour": str(
            sum(burn_rate_points_per_hour(s.gpu_count) for s in running)
        ),
    }


def projects_of(db: Session, username: str) -> list[Project]:
    return list(
        db.scalars(
            select(Project)
            .join(Membership)
            .join(Account)
            .where(Account.username == username)
            .options(selectinload(Project.company))
            .order_by(Project.id)
        )
    )


def all_projects(db: Session) -> list[Project]:
    return list(
        db.scalars(select(Project).options(selectinload(Project.company)).order_by(Project.id))
    )


def usage_history(db: Session, project_id: int, limit: int = 200) -> list[dict]:
    entries = db.scalars(
        select(LedgerEntry)
        .where(LedgerEntry.project_id == project_id)
        .order_by(LedgerEntry.id.desc())
        .limit(limit)
    )
    return [
        {
            "at": _iso(e.created_at),
            "kind": e.kind,
            "points": str(to_points(e.amount_millipoints)),
            "session_id": e.session_id,
            "covers_seconds": None
            if e.covers_from_seconds is None
            else [e.covers_from_seconds, e.covers_to_seconds],
            "reason": e.reason,
            "actor": e.actor,
        }
        for e in entries
    ]


def recent_sessions(db: Session, project_id: int, limit: int = 50) -> list[dict]:
    sessions = db.scalars(
        select(UsageSession)
        .where(UsageSession.project_id == project_id)
        .order_by(UsageSession.id.desc())
        .limit(limit)
    )
    return [
        server_summary(s)
        | {
            "stopped_at": _iso(s.stopped_at),
            "charged_seconds": s.charged_seconds,
            "stop_reason": s.stop_reason,
        }
        for s in sessions
    ]


def last_stop_notice(db: Session, username: str) -> str:
    """Why this person's most recent server was stopped by the platform, if it was."""
    session = db.scalar(
        select(UsageSession)
        .where(UsageSession.username == username)
        .order_by(UsageSession.id.desc())
        .limit(1)
    )
    if session is None or not session.stop_reason or session.stop_reason.startswith("superseded"):
        return ""
    return session.stop_reason
