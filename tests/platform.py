"""Helpers for end-to-end tests: data set-up in the quota database, waiting, processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import psutil
from sqlalchemy import func, select

from quota_service import db as database
from quota_service import ledger
from quota_service.models import (
    Account,
    Company,
    LedgerEntry,
    LedgerKind,
    Membership,
    Project,
    ProjectStatus,
    UsageSession,
)
from quota_service.timewindow import utcnow


class QuotaDB:
    """Direct access to the quota service's database, for arranging and checking."""

    def __init__(self, url: str):
        self.engine = database.make_engine(url)
        self.factory = database.make_session_factory(self.engine)

    def add_project(
        self,
        username: str,
        *,
        business_number: str,
        millipoints: int,
        max_gpus: int = 2,
        status: ProjectStatus = ProjectStatus.APPROVED,
    ) -> int:
        now = utcnow()
        with database.transaction(self.factory) as db:
            company = Company(
                name=f"測試公司 {username}", business_number=business_number, created_at=now
            )
            account = Account(username=username, email=f"{username}@example.tw", created_at=now)
            project = Project(
                company=company,
                name=f"計畫 {username}",
                status=status,
                tier="L1",
                window_start=now - timedelta(days=1),
                window_end=now + timedelta(days=90),
                max_gpus_per_server=max_gpus,
                created_at=now,
            )
            db.add_all([company, account, project])
            db.add(Membership(project=project, account=account, created_at=now))
            db.flush()
            if millipoints:
                ledger.grant(db, project, millipoints, actor="test", reason="test grant", now=now)
            return project.id

    def set_window_end(self, project_id: int, window_end) -> None:
        with database.transaction(self.factory) as db:
            db.get(Project, project_id).window_end = window_end

    def project_of(self, username: str) -> int:
        with self.factory() as db:
            return db.scalar(
                select(Membership.project_id).join(Account).where(Account.username == username)
            )

    def project_status(self, project_id: int) -> str:
        with self.factory() as db:
            return db.get(Project, project_id).status

    def balance(self, project_id: int) -> int:
        with self.factory() as db:
            return ledger.balance(db, project_id)

    def adjust(self, project_id: int, millipoints: int) -> None:
        with database.transaction(self.factory) as db:
            project = db.get(Project, project_id)
            ledger.grant(
                db,
                project,
                millipoints,
                actor="test",
                reason="test adjustment",
                now=utcnow(),
                kind=LedgerKind.ADJUSTMENT,
            )

    def record_usage(self, project_id: int, millipoints: int) -> None:
        """Usage as metering writes it, without running a server for hours."""
        with database.transaction(self.factory) as db:
            db.add(
                LedgerEntry(
                    project_id=project_id,
                    kind=LedgerKind.USAGE,
                    amount_millipoints=-millipoints,
                    reason="earlier usage",
                    actor="metering",
                    created_at=utcnow(),
                )
            )

    def sessions(self, username: str) -> list[UsageSession]:
        with self.factory() as db:
            return list(
                db.scalars(
                    select(UsageSession)
                    .where(UsageSession.username == username)
                    .order_by(UsageSession.id)
                )
            )

    def usage_entries(self, session_id: int) -> list[LedgerEntry]:
        with self.factory() as db:
            return list(
                db.scalars(
                    select(LedgerEntry)
                    .where(LedgerEntry.session_id == session_id)
                    .order_by(LedgerEntry.period_index)
                )
            )

    def count(self, model) -> int:
        with self.factory() as db:
            return db.scalar(select(func.count()).select_from(model))

    def close(self):
        self.engine.dispose()


def wait_for(predicate: Callable[[], object], timeout: float, message: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for: {message}")


def process_listening_on(port: int) -> psutil.Process:
    for connection in psutil.net_connections(kind="tcp"):
        if (
            connection.status == psutil.CONN_LISTEN
            and connection.laddr.port == port
            and connection.pid
        ):
            return psutil.Process(connection.pid)
    raise LookupError(f"no process listens on {port}")
