"""The end of a project's window: access revoked, storage purged (with a record of what
was deleted), and audit records kept for the retention period and no longer.

Every job here reconciles what should be with what is, so running it again, or late,
is safe.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from . import audit, projects
from .models import (
    Account,
    AuditEvent,
    Membership,
    Project,
    ProjectStatus,
    Purge,
    UsageSession,
)

log = logging.getLogger(__name__)

AUDIT_RETENTION_MINIMUM = timedelta(days=3 * 365 + 1)  # three years, leap day included


@dataclass(frozen=True)
class Deleted:
    path: str
    files: int
    bytes: int


class StoragePurger(Protocol):
    """Deletes a person's storage for a project; the cluster flavour deletes volumes."""

    def purge(self, username: str) -> list[Deleted]: ...


class LocalHomesPurger:
    """The embedded default: each person's home folder under one root."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def purge(self, username: str) -> list[Deleted]:
        home = (self.root / username).resolve()
        if self.root.resolve() not in home.parents or not home.exists():
            return []
        files = [p for p in home.rglob("*") if p.is_file() and not p.is_symlink()]
        size = sum(p.stat().st_size for p in files)
        shutil.rmtree(home)
        return [Deleted(str(home), len(files), size)]


def close_ended_windows(db: Session, *, now: datetime) -> list[int]:
    """Approved or suspended projects whose window has ended become closed: access revoked
    (their members' servers are stopped by the metering pass, which sees the window end)."""
    ended = db.scalars(
        select(Project)
        .where(
            Project.status.in_([ProjectStatus.APPROVED, ProjectStatus.SUSPENDED]),
            Project.window_end <= now,
        )
        .order_by(Project.id)
        .with_for_update()
    ).all()
    for project in ended:
        projects.change_status(
            db,
            project,
            ProjectStatus.CLOSED,
            actor="lifecycle",
            reason="使用期間結束 / the usage window ended",
            now=now,
        )
    return [p.id for p in ended]


def purge_closed_projects(
    db: Session, purger: StoragePurger, *, now: datetime, grace: timedelta = timedelta(0)
) -> list[Purge]:
    """Clear the storage of closed projects once ``grace`` has passed after the window,
    no server of theirs is still metered, and it was not done already."""
    already = select(Purge.project_id)
    still_running = select(UsageSession.project_id).where(UsageSession.stopped_at.is_(None))
    due = db.scalars(
        select(Project)
        .where(
            Project.status == ProjectStatus.CLOSED,
            Project.window_end <= now - grace,
            Project.id.not_in(already),
            Project.id.not_in(still_running),
        )
        .order_by(Project.id)
    ).all()
    records = [purge_project(db, purger, project, actor="lifecycle", now=now) for project in due]
    db.flush()
    return records


def purge_project(
    db: Session, purger: StoragePurger, project: Project, *, actor: str, now: datetime
) -> Purge:
    """Clear the storage of every member of ``project`` and record what was deleted (the end
    of the window, or a confirmed termination). A member who is also in a project that is
    still open keeps their storage (recorded as kept)."""
    deleted: list[dict] = []
    for username in members_of(db, project.id):
        if in_open_project(db, username, exclude=project.id):
            deleted.append({"path": f"(kept) {username}", "files": 0, "bytes": 0})
            continue
        deleted += [d.__dict__ for d in purger.purge(username)]
    record = Purge(
        project_id=project.id,
        at=now,
        actor=actor,
        deleted=json.dumps(deleted, ensure_ascii=False),
        bytes_deleted=sum(d["bytes"] for d in deleted),
    )
    db.add(record)
    audit.record(
        db,
        actor=actor,
        action="project.purge",
        subject_type="project",
        subject_id=project.id,
        at=now,
        deleted=deleted,
    )
    log.info("purged project %s: %s", project.id, deleted)
    return record


def still_metered(db: Session, project_id: int) -> bool:
    """Whether a server of the project is still metered (its storage is still in use)."""
    return (
        db.scalar(
            select(UsageSession.id)
            .where(UsageSession.project_id == project_id, UsageSession.stopped_at.is_(None))
            .limit(1)
        )
        is not None
    )


def members_of(db: Session, project_id: int) -> list[str]:
    return list(
        db.scalars(
            select(Account.username)
            .join(Membership)
            .where(Membership.project_id == project_id)
            .order_by(Account.username)
        )
    )


def in_open_project(db: Session, username: str, *, exclude: int) -> bool:
    return bool(
        db.scalar(
            select(func.count())
            .select_from(Membership)
            .join(Account)
            .join(Project)
            .where(
                Account.username == username,
                Project.id != exclude,
                Project.status.in_(
                    [ProjectStatus.PENDING, ProjectStatus.APPROVED, ProjectStatus.SUSPENDED]
                ),
            )
        )
    )


def expire_audit_events(db: Session, *, now: datetime, keep: timedelta) -> int:
    """Delete audit events older than ``keep`` (never less than three years)."""
    if keep < AUDIT_RETENTION_MINIMUM:
        raise ValueError("audit events are kept at least three years")
    result = db.execute(delete(AuditEvent).where(AuditEvent.at < now - keep))
    return result.rowcount or 0
