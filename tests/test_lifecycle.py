"""The end of the window: access revoked, storage purged with a record, audit kept 3 years.

Times are Asia/Taipei wall clock (``at``). Storage is real folders under tmp_path.
"""

from __future__ import annotations

import itertools
import json
from datetime import date, timedelta

import pytest
from sqlalchemy import select

from quota_service import access, lifecycle
from quota_service.models import (
    Account,
    AuditEvent,
    Company,
    Membership,
    Project,
    ProjectStatus,
    UsageSession,
)
from quota_service.timewindow import window_for_notice
from tests.conftest import at

START, END = window_for_notice(date(2026, 11, 28))  # last second: 2027-02-27 23:59:59 Taipei
_numbers = itertools.count(20_000_000)


def make_project(db, members: tuple[str, ...], status=ProjectStatus.APPROVED, end=END) -> Project:
    company = Company(name="結案", business_number=str(next(_numbers)), created_at=START)
    project = Project(
        company=company, name="結案計畫", status=status, window_start=START, window_end=end,
        created_at=START,
    )  # fmt: skip
    db.add(project)
    for username in members:
        account = db.scalar(select(Account).where(Account.username == username))
        account = account or Account(username=username, created_at=START)
        db.add(Membership(project=project, account=account, created_at=START))
    db.flush()
    return project


@pytest.fixture
def homes(tmp_path):
    root = tmp_path / "homes"
    for user, files in {"alice": 3, "bob": 1}.items():
        (root / user / "models").mkdir(parents=True)
        for i in range(files):
            (root / user / "models" / f"w{i}.bin").write_bytes(b"x" * 1000)
    return root


def test_the_window_closes_at_its_end_not_a_second_earlier(db):
    project = make_project(db, ("alice",))
    assert lifecycle.close_ended_windows(db, now=at("2027-02-27 23:59:59")) == []
    assert project.status == ProjectStatus.APPROVED
    assert lifecycle.close_ended_windows(db, now=at("2027-02-28 00:00:00")) == [project.id]
    assert project.status == ProjectStatus.CLOSED
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "project.status"))
    assert json.loads(event.detail)["new"] == "closed" and event.actor == "lifecycle"
    # access is revoked, and says why
    assert access.decide(db, "alice", at("2027-02-28 00:00:01")).refusal is access.WINDOW_ENDED
    assert lifecycle.close_ended_windows(db, now=at("2027-03-01 00:00:00")) == []  # once


def test_a_suspended_project_also_closes_at_the_end(db):
    project = make_project(db, ("alice",), status=ProjectStatus.SUSPENDED)
    lifecycle.close_ended_windows(db, now=END)
    assert project.status == ProjectStatus.CLOSED


def test_storage_is_purged_at_the_end_with_a_record_of_what_was_deleted(db, homes):
    project = make_project(db, ("alice", "bob"))
    purger = lifecycle.LocalHomesPurger(homes)
    lifecycle.close_ended_windows(db, now=END)
    [record] = lifecycle.purge_closed_projects(db, purger, now=END)
    deleted = json.loads(record.deleted)
    assert [(d["files"], d["bytes"]) for d in deleted] == [(3, 3000), (1, 1000)]
    assert record.bytes_deleted == 4000 and record.project_id == project.id
    assert not (homes / "alice").exists() and not (homes / "bob").exists()
    assert lifecycle.purge_closed_projects(db, purger, now=END + timedelta(days=1)) == []


def test_a_grace_period_delays_the_purge_to_the_second(db, homes):
    make_project(db, ("alice",))
    purger = lifecycle.LocalHomesPurger(homes)
    lifecycle.close_ended_windows(db, now=END)
    grace = timedelta(days=2)
    assert (
        lifecycle.purge_closed_projects(db, purger, now=at("2027-03-01 23:59:59"), grace=grace)
        == []
    )
    assert (homes / "alice").exists()
    assert lifecycle.purge_closed_projects(db, purger, now=at("2027-03-02 00:00:00"), grace=grace)
    assert not (homes / "alice").exists()


def test_no_purge_while_a_server_of_the_project_is_still_metered(db, homes):
    project = make_project(db, ("alice",))
    account = db.scalar(select(Account).where(Account.username == "alice"))
    session = UsageSession(
        project_id=project.id, account_id=account.id, username="alice", gpu_vendor="nvidia",
        gpu_count=1, interval_seconds=60, started_at=END - timedelta(hours=1),
    )  # fmt: skip
    db.add(session)
    lifecycle.close_ended_windows(db, now=END)
    purger = lifecycle.LocalHomesPurger(homes)
    assert lifecycle.purge_closed_projects(db, purger, now=END) == []
    session.stopped_at = END
    assert lifecycle.purge_closed_projects(db, purger, now=END + timedelta(seconds=1))


def test_a_member_of_another_open_project_keeps_their_storage(db, homes):
    make_project(db, ("alice", "bob"))
    make_project(db, ("bob",), end=END + timedelta(days=90))
    lifecycle.close_ended_windows(db, now=END)
    [record] = lifecycle.purge_closed_projects(db, lifecycle.LocalHomesPurger(homes), now=END)
    assert not (homes / "alice").exists() and (homes / "bob").exists()
    assert "(kept) bob" in [d["path"] for d in json.loads(record.deleted)]


def test_the_purger_never_leaves_its_root(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "homes").mkdir()
    purger = lifecycle.LocalHomesPurger(tmp_path / "homes")
    assert purger.purge("../outside") == []
    assert (tmp_path / "outside").exists()


def test_audit_events_are_kept_three_years_and_no_longer(db):
    now = at("2030-01-01 00:00:00")
    keep = timedelta(days=1096)
    for age in (keep + timedelta(seconds=1), keep, keep - timedelta(days=1)):
        db.add(AuditEvent(at=now - age, actor="t", action="x", subject_type="t", subject_id="1"))
    db.flush()
    assert lifecycle.expire_audit_events(db, now=now, keep=keep) == 1
    assert len(db.scalars(select(AuditEvent)).all()) == 2
    with pytest.raises(ValueError, match="three years"):
        lifecycle.expire_audit_events(db, now=now, keep=timedelta(days=365))
