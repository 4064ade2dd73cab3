"""Scheduled scans of the people's storage for banned models (rules of use 柒, item 5).

Every member of a project that may still run servers (approved or suspended) has their home
folder scanned with :func:`banned_models.scan_models` once every ``every`` (a day by default).
Each scan is one audit event (action ``models.scanned``, subject the account) with the report:
its findings are the evidence the operator reads, and the time of the last one is what makes a
re-run of the job a no-op until the next scan is due (so a restart never rescans at once, and
nothing is scanned twice in one period). A finding is a lead, not a verdict: the operator
decides whether it is a violation.

Where the homes are is a :class:`Scanner`: folders on this machine (:class:`LocalHomes`,
walked in this process) or, on Kubernetes, each person's volume claims (:class:`PodScans`: a
short-lived pod per person mounts them read-only and runs ``aipower-scan-models``; the
Kubernetes calls are ``spawner.kube.KubeScanPods``). Either way the walk runs outside any
database transaction: scanning a large home takes seconds, a transaction held that long would
hold up the metering pass.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from . import audit, banned_models
from . import db as database
from .models import Account, AuditEvent, Company, Membership, Project, ProjectStatus
from .timewindow import taipei

log = logging.getLogger(__name__)

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
        select(Account.username, Project.id, Company.name)
        .join(Membership, Membership.account_id == Account.id)
        .join(Project, Project.id == Membership.project_id)
        .join(Company, Company.id == Project.company_id)
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
    companies: dict[str, set[str]] = {}
    for username, project_id, company in members:
        projects.setdefault(username, []).append(project_id)
        companies.setdefault(username, set()).add(company)
    due = []
    for username, ids in projects.items():
        last = last_scans.get(username)
        if last is None or last + every <= now:
            due.append(Due(username, tuple(ids), tuple(sorted(companies[username]))))
    return due


def record_scan(
    db: Session, person: Due, home: str, report: dict, *, home_found: bool, now: datetime
) -> None:
    audit.record(
        db,
        actor="system",
        action=SCANNED,
        subject_type="account",
        subject_id=person.username,
        at=now,
        project_ids=list(person.project_ids),
        companies=list(person.companies),
        home=home,
        home_found=home_found,
        model_folders=len(report.get("model_folders", [])),
        flagged_folders=report.get("flagged_folders", []),
        rules_matched=report.get("rules_matched", []),
        findings=report.get("findings", []),
        errors=report.get("errors", []),
    )


class Scanner(Protocol):
    """Where the homes are: folders on this machine (:class:`LocalHomes`) or volumes on
    Kubernetes (:class:`PodScans`). One call per housekeeping run; the usernames recorded."""

    def scan_due(
        self, session_factory: sessionmaker, *, now: datetime, every: timedelta
    ) -> list[str]: ...


class LocalHomes:
    """Homes as folders, ``root/<username>``, walked in this process."""

    def __init__(self, root: Path, rules: list[banned_models.Rule]):
        self.root = root
        self.rules = rules

    def scan_due(
        self, session_factory: sessionmaker, *, now: datetime, every: timedelta
    ) -> list[str]:
        """Scan every home that is due. A home that does not exist yet (a member who never
        started a server) is recorded as scanned, with nothing in it."""
        with database.transaction(session_factory) as db:
            due = due_for_scan(db, now=now, every=every)
        scanned = []
        root = self.root.resolve()
        for person in due:
            home = (root / person.username).resolve()
            if root not in home.parents:  # a name that would leave the root is never walked
                continue
            found = home.is_dir()
            report = banned_models.scan_models(home, self.rules) if found else {}
            with database.transaction(session_factory) as db:
                record_scan(db, person, str(home), report, home_found=found, now=now)
            scanned.append(person.username)
        return scanned


# ---- Kubernetes: each person's volumes scanned in a short-lived pod -----------------------

# a pod that the scheduler never placed has no start time, so activeDeadlineSeconds never
# ends it: given up this long after its deadline, counted from its creation
SCHEDULING_GRACE = timedelta(minutes=15)
# aipower-scan-models: 0 clean, 1 findings (both a report), 2 error
REPORT_EXIT_CODES = (0, 1)


@dataclass(frozen=True)
class ScanPod:
    """A scan pod as the cluster reports it."""

    name: str
    username: str
    claims: tuple[str, ...]
    created: datetime
    finished: bool
    exit_code: int | None  # the scan container's, once it ended
    started: datetime | None  # when the scan container started
    reason: str = ""  # why it ended, as Kubernetes says it (DeadlineExceeded, OOMKilled)


class ScanPods(Protocol):
    """The cluster side of the scan (``spawner.kube.KubeScanPods``)."""

    namespace: str

    def home_claim_names(self, username: str) -> list[str]: ...

    def scan_pods(self) -> list[ScanPod]: ...

    def create(self, username: str, claims: list[str]) -> bool:
        """Start a scan of ``claims``; False when the person's scan pod exists already."""

    def log(self, name: str) -> str | None:
        """The scan container's log; None when it cannot be read."""

    def delete(self, name: str) -> None: ...


def parse_report(log: str) -> dict | None:
    """The JSON report that ``aipower-scan-models`` printed, from its pod's log (stderr
    lines before it are skipped); None when there is none."""
    if log.startswith("{"):
        start = 0
    elif "\n{" in log:
        start = log.index("\n{") + 1
    else:  # no line opens a JSON object
        return None
    try:
        report, _ = json.JSONDecoder().raw_decode(log[start:])
    except ValueError:
        return None
    if not isinstance(report, dict) or not isinstance(report.get("findings"), list):
        return None
    return report


def volumes_home(namespace: str, claims: Iterable[str]) -> str:
    names = ", ".join(f"pvc {namespace}/{claim}" for claim in claims)
    return names or f"pvc {namespace}/(none)"


class PodScans:
    """Homes as volume claims, each person's scanned in a pod that mounts them read-only.

    Every run reconciles in two phases, so that a re-run or a restart of the service is
    safe (the pods are the state; nothing is kept in this process):

    1. finished pods: a report (exit 0 or 1) of a person still due is recorded, at the time
       the scan started; then the pod is deleted. A failed or timed-out pod is deleted with
       nothing recorded, and its person is due again. A pod deleted but recorded already (a
       delete that failed last run) finds its person no longer due: deleted, not recorded
       twice.
    2. people due without a pod get one; a person without a home volume is recorded as
       scanned with nothing in it, like a home folder that does not exist yet.
    """

    def __init__(self, pods: ScanPods, *, deadline: timedelta):
        self.pods = pods
        self.deadline = deadline

    def scan_due(
        self, session_factory: sessionmaker, *, now: datetime, every: timedelta
    ) -> list[str]:
        with database.transaction(session_factory) as db:
            due = {person.username: person for person in due_for_scan(db, now=now, every=every)}
        recorded = []
        pending = set()
        # a finished pod of a person no longer due (recorded already, project closed) is
        # deleted unread
        for pod in self.pods.scan_pods():
            if not pod.finished:
                if pod.created + self.deadline + SCHEDULING_GRACE <= now:
                    log.warning("Scan pod %s never finished: deleted", pod.name)
                    self.pods.delete(pod.name)
                else:
                    pending.add(pod.username)
                continue
            person = due.get(pod.username)
            report = self._report(pod) if person is not None else None
            if report is not None:
                with database.transaction(session_factory) as db:
                    record_scan(
                        db,
                        person,
                        volumes_home(self.pods.namespace, pod.claims),
                        report,
                        home_found=True,
                        now=pod.started or now,
                    )
                recorded.append(person.username)
            self.pods.delete(pod.name)
        for username, person in due.items():
            if username in pending or username in recorded:
                continue
            claims = self.pods.home_claim_names(username)
            if not claims:
                with database.transaction(session_factory) as db:
                    home = volumes_home(self.pods.namespace, claims)
                    record_scan(db, person, home, {}, home_found=False, now=now)
                recorded.append(username)
            elif self.pods.create(username, claims):
                log.info("Scanning %s's volumes %s in a pod", username, ", ".join(claims))
        return recorded

    def _report(self, pod: ScanPod) -> dict | None:
        if pod.exit_code not in REPORT_EXIT_CODES:
            log.warning(
                "Scan pod %s of %s failed (exit %s, %s): nothing recorded, due again",
                pod.name,
                pod.username,
                pod.exit_code,
                pod.reason or "no reason given",
            )
            return None
        report = parse_report(self.pods.log(pod.name) or "")
        if report is None:
            log.warning(
                "Scan pod %s of %s printed no report: nothing recorded", pod.name, pod.username
            )
        return report


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
