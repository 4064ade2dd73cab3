"""Scheduled scans of the people's storage for banned models (rules of use 柒, item 5).

Every member of a project that may still run servers (approved or suspended) has their home
folder scanned with :func:`banned_models.scan_models` once every ``every`` (a day by default).
Each scan is one audit event (action ``models.scanned``, subject the account) with the report:
its findings are the evidence the operator reads, and the time of the last one is what makes a
re-run of the job a no-op until the next scan is due (so a restart never rescans at once, and
nothing is scanned twice in one period). A finding is a lead, not a verdict: the operator
decides whether it is a violation.

The walk of the folders runs outside any database transaction: scanning a large home takes
seconds, a transaction held that long would hold up the metering pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from . import audit, banned_models
from . import db as database
from .models import Account, AuditEvent, Membership, Project, ProjectStatus
from .timewindow import taipei

SCANNED = "models.scanned"
SCANNED_STATUSES = (ProjectStatus.APPROVED, ProjectStatus.SUSPENDED)


@dataclass(frozen=True)
class Due:
    username: str
    project_ids: tuple[int, ...]
    companies: tuple[str, ...]


def due_for_scan(db: Session, *, now: datetime, every: timedelta) -> list[Due]:
    """Members of approved or suspended projects whose last scan is older than ``every``."""
    members = db.execute(
        select(Account.username, Project.id, Project.company_id)
        .join(Membership, Membership.account_id == Account.id)
        .join(Project, Project.id == Membership.project_id)
        .where(Project.status.in_(SCANNED_STATUSES))
        .order_by(Account.username, Project.id)
    ).all()
    last_scans = dict(
        db.execute(
            select(AuditEvent.subject_id, func.max(AuditEvent.at))
            .where(AuditEvent.action == SCANNED, AuditEvent.subject_type == "account")
            .group_by(AuditEvent.subject_id)
        ).all()
    )
    projects: dict[str, list[int]] = {}
    for username, project_id, _company in members:
        projects.setdefault(username, []).append(project_id)
    company_names = {
        p.id: p.company.name
        for p in db.scalars(select(Project).where(Project.id.in_({m[1] for m in members})))
    }
    due = []
    for username, ids in projects.items():
        last = last_scans.get(username)
        if last is None or last + every <= now:
            names = tuple(sorted({company_names[i] for i in ids}))
            due.append(Due(username, tuple(ids), names))
    return due


def record_scan(db: Session, person: Due, home: Path, report: dict, *, now: datetime) -> None:
    audit.record(
        db,
        actor="system",
        action=SCANNED,
        subject_type="account",
        subject_id=person.username,
        at=now,
        project_ids=list(person.project_ids),
        companies=list(person.companies),
        home=str(home),
        home_found=home.is_dir(),
        model_folders=len(report.get("model_folders", [])),
        flagged_folders=report.get("flagged_folders", []),
        rules_matched=report.get("rules_matched", []),
        findings=report.get("findings", []),
        errors=report.get("errors", []),
    )


def scan_due(
    session_factory: sessionmaker,
    homes_root: Path,
    rules: list[banned_models.Rule],
    *,
    now: datetime,
    every: timedelta,
) -> list[str]:
    """Scan every home that is due; the usernames scanned. A home that does not exist yet (a
    member who never started a server) is recorded as scanned, with nothing in it."""
    with database.transaction(session_factory) as db:
        due = due_for_scan(db, now=now, every=every)
    scanned = []
    root = homes_root.resolve()
    for person in due:
        home = (root / person.username).resolve()
        if root not in home.parents:  # a name that would leave the root is never walked
            continue
        report = banned_models.scan_models(home, rules) if home.is_dir() else {}
        with database.transaction(session_factory) as db:
            record_scan(db, person, home, report, now=now)
        scanned.append(person.username)
    return scanned


@dataclass(frozen=True)
class LatestScan:
    event_id: int
    username: str
    at: datetime
    detail: dict

    @property
    def at_taipei(self) -> str:
        return taipei(self.at).isoformat()

    @property
    def flagged(self) -> bool:
        return bool(self.detail.get("findings"))


def latest_scans(db: Session) -> list[LatestScan]:
    """Each person's most recent scan, people with findings first."""
    newest = (
        select(AuditEvent.subject_id, func.max(AuditEvent.id).label("id"))
        .where(AuditEvent.action == SCANNED, AuditEvent.subject_type == "account")
        .group_by(AuditEvent.subject_id)
        .subquery()
    )
    events = db.scalars(select(AuditEvent).join(newest, AuditEvent.id == newest.c.id)).all()
    scans = [LatestScan(e.id, e.subject_id, e.at, json.loads(e.detail)) for e in events]
    return sorted(scans, key=lambda s: (not s.flagged, s.username))
