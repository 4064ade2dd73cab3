"""The points ledger: append-only; grants add, usage subtracts, the balance is the sum."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import audit
from .models import LedgerEntry, LedgerKind, Project


def balance(db: Session, project_id: int) -> int:
    """The project's balance in millipoints."""
    total = db.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_millipoints), 0)).where(
            LedgerEntry.project_id == project_id
        )
    )
    return int(total)


def balances(db: Session, project_ids: list[int]) -> dict[int, int]:
    rows = db.execute(
        select(LedgerEntry.project_id, func.sum(LedgerEntry.amount_millipoints))
        .where(LedgerEntry.project_id.in_(project_ids))
        .group_by(LedgerEntry.project_id)
    )
    found = {pid: int(total) for pid, total in rows}
    return {pid: found.get(pid, 0) for pid in project_ids}


def lock_project(db: Session, project_id: int) -> Project:
    """Serialize every change to one project's balance (row lock on PostgreSQL;
    SQLite has a single writer anyway)."""
    return db.execute(
        select(Project).where(Project.id == project_id).with_for_update()
    ).scalar_one()


def grant(
    db: Session,
    project: Project,
    millipoints: int,
    *,
    actor: str,
    reason: str,
    now: datetime,
    kind: LedgerKind = LedgerKind.GRANT,
) -> LedgerEntry:
    """Add (or, as an adjustment, remove) points, with the reason and an audit row."""
    if not reason.strip():
        raise ValueError("請填寫原因 / a reason is required")
    if kind is LedgerKind.GRANT and millipoints <= 0:
        raise ValueError("核發點數必須大於 0 / a grant must be positive")
    if millipoints == 0:
        raise ValueError("調整點數不可為 0 / an adjustment cannot be zero")
    entry = LedgerEntry(
        project_id=project.id,
        kind=kind,
        amount_millipoints=millipoints,
        reason=reason,
        actor=actor,
        created_at=now,
    )
    db.add(entry)
    audit.record(
        db,
        actor=actor,
        action=f"ledger.{kind.value}",
        subject_type="project",
        subject_id=project.id,
        at=now,
        millipoints=millipoints,
        reason=reason,
    )
    return entry
