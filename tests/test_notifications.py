"""Low-balance warnings and window reminders: decided once, delivered over real SMTP.

Times are Asia/Taipei wall clock (``at``); the mail server is a real aiosmtpd server.
"""

from __future__ import annotations

import email
import email.policy
import itertools
from datetime import date

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from quota_service import db as database
from quota_service import ledger, notifications
from quota_service.models import (
    Account,
    Company,
    LedgerEntry,
    LedgerKind,
    Membership,
    Notice,
    NoticeStatus,
    Project,
    ProjectStatus,
)
from quota_service.timewindow import window_for_notice
from tests.conftest import at
from tests.stack import free_port

START, END = window_for_notice(date(2026, 11, 28))  # end: 2027-02-28 00:00 Taipei
_numbers = itertools.count(10_000_000)


def make_project(db, *, points: int = 1000, roles=("lead", "trainee")) -> Project:
    now = at("2026-11-28 09:00:00")
    company = Company(name="通知測試", business_number=str(next(_numbers)), created_at=now)
    project = Project(
        company=company,
        name="通知計畫",
        status=ProjectStatus.APPROVED,
        window_start=START,
        window_end=END,
        created_at=now,
    )
    db.add(project)
    for i, role in enumerate(roles):
        account = Account(
            username=f"u{next(_numbers)}", email=f"{role}{i}@example.tw", created_at=now
        )
        db.add(Membership(project=project, account=account, role=role, created_at=now))
    db.flush()
    ledger.grant(db, project, points * 1000, actor="operator", reason="L1", now=now)
    return project


def spend(db, project: Project, millipoints: int) -> None:
    """Usage as the metering writes it (a usage row; the session does not matter here)."""
    db.add(
        LedgerEntry(
            project_id=project.id,
            kind=LedgerKind.USAGE,
            amount_millipoints=-millipoints,
            reason="usage",
            actor="metering",
            created_at=START,
        )
    )
    db.flush()


def keys(notices) -> list[tuple[str, str, str]]:
    return [(n.kind, n.key, n.status) for n in notices]


def plan(db, when: str):
    return notifications.plan(db, now=at(when))


# ---- window reminders ------------------------------------------------------------------


def test_reminders_fall_due_at_taipei_midnight_14_7_and_1_days_before_the_end(db):
    make_project(db)
    assert plan(db, "2027-02-13 23:59:59") == []
    assert keys(plan(db, "2027-02-14 00:00:00")) == [("window-ending", "14", "pending")]
    assert plan(db, "2027-02-14 00:00:01") == []  # decided once
    assert plan(db, "2027-02-20 23:59:59") == []
    assert keys(plan(db, "2027-02-21 00:00:00")) == [("window-ending", "7", "pending")]
    assert keys(plan(db, "2027-02-27 00:00:00")) == [("window-ending", "1", "pending")]
    assert plan(db, "2027-02-27 23:59:59") == []
    assert plan(db, "2027-02-28 00:00:00") == []  # the window is over: no more notices


def test_a_run_after_missed_runs_decides_every_reminder_that_fell_due(db):
    make_project(db)
    notices = plan(db, "2027-02-27 12:00:00")  # nothing ran for two weeks
    assert keys(notices) == [
        ("window-ending", "14", "pending"),
        ("window-ending", "7", "pending"),
        ("window-ending", "1", "pending"),
    ]
    assert "2027-02-27 23:59:59" in notices[0].body and "2027-03-30" in notices[0].body
    assert plan(db, "2027-02-27 12:00:01") == []


# ---- low balance -------------------------------------------------------------------------


def test_low_balance_warnings_at_20_and_5_percent_of_the_points_awarded(db):
    project = make_project(db, points=1000)
    spend(db, project, 799_999)  # 200.001 points left: above 20 %
    assert plan(db, "2026-12-01 10:00:00") == []
    spend(db, project, 1)  # exactly 200.000 = 20 %
    [notice] = plan(db, "2026-12-01 10:01:00")
    assert (notice.kind, notice.key, notice.status) == ("low-balance", "20", "pending")
    assert "200.000" in notice.body and "20%" in notice.subject
    spend(db, project, 150_001)  # 49.999 left: below 5 %
    assert keys(plan(db, "2026-12-02 10:00:00")) == [("low-balance", "5", "pending")]
    assert plan(db, "2026-12-03 10:00:00") == []


def test_a_sudden_drop_sends_only_the_most_urgent_warning_and_records_both(db):
    project = make_project(db, points=1000)
    spend(db, project, 990_000)  # 10 points left: 1 %
    assert keys(plan(db, "2026-12-01 10:00:00")) == [
        ("low-balance", "20", "superseded"),
        ("low-balance", "5", "pending"),
    ]


def test_the_lead_and_contact_get_the_notices_else_every_member(db):
    with_lead = make_project(db, roles=("lead", "contact", "trainee"))
    without = make_project(db, roles=("trainee", "trainee"))
    assert notifications.recipients_of(db, with_lead.id) == [
        "lead0@example.tw",
        "contact1@example.tw",
    ]
    assert notifications.recipients_of(db, without.id) == [
        "trainee0@example.tw",
        "trainee1@example.tw",
    ]


def test_current_warnings_follow_the_balance(db):
    project = make_project(db, points=1000)
    assert notifications.current_warnings(db, project, (20, 5)) == []
    spend(db, project, 960_000)
    [warning] = notifications.current_warnings(db, project, (20, 5))
    assert warning["code"] == "low-balance" and "40.000" in warning["zh"] and "5%" in warning["en"]


# ---- delivery over SMTP ------------------------------------------------------------------


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        text = f"{message['Subject']}\n{message.get_content()}"
        self.messages.append((envelope.rcpt_tos, text))
        return "250 OK"


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


def test_pending_notices_are_delivered_once_over_smtp(session_factory, smtp_server):
    controller, inbox = smtp_server
    with database.transaction(session_factory) as db:
        make_project(db)
        plan(db, "2027-02-21 08:00:00")  # 14 and 7 days
    mailer = notifications.Mailer("127.0.0.1", controller.port, "平台 <noreply@example.tw>")
    assert notifications.deliver(session_factory, mailer, now=at("2027-02-21 08:00:05")) == 2
    assert notifications.deliver(session_factory, mailer, now=at("2027-02-21 08:05:00")) == 0
    assert [to for to, _ in inbox.messages] == [["lead0@example.tw"], ["lead0@example.tw"]]
    assert "window ends within 14 days" in inbox.messages[0][1]
    assert (
        "使用期間將於 14 天內結束" in inbox.messages[0][1]
        and "2027-02-27 23:59:59" in inbox.messages[0][1]
    )
    with database.transaction(session_factory) as db:
        statuses = db.scalars(select(Notice.status)).all()
    assert statuses == [NoticeStatus.SENT, NoticeStatus.SENT]


def test_a_failed_delivery_is_recorded_and_retried_by_the_next_run(session_factory, smtp_server):
    controller, inbox = smtp_server
    with database.transaction(session_factory) as db:
        make_project(db)
        plan(db, "2027-02-14 08:00:00")
    down = notifications.Mailer("127.0.0.1", free_port(), "noreply@example.tw", timeout=2)
    assert notifications.deliver(session_factory, down, now=at("2027-02-14 08:00:05")) == 0
    with database.transaction(session_factory) as db:
        [notice] = db.scalars(select(Notice)).all()
        assert (notice.status, notice.attempts) == (NoticeStatus.PENDING, 1)
        assert "ConnectionRefusedError" in notice.last_error
    up = notifications.Mailer("127.0.0.1", controller.port, "noreply@example.tw")
    assert notifications.deliver(session_factory, up, now=at("2027-02-14 08:05:00")) == 1
    assert len(inbox.messages) == 1


def test_without_a_mail_server_notices_wait_in_the_outbox(session_factory):
    with database.transaction(session_factory) as db:
        make_project(db)
        plan(db, "2027-02-14 08:00:00")
    assert notifications.deliver(session_factory, notifications.Mailer("", 25, "x"), now=END) == 0
    with database.transaction(session_factory) as db:
        assert db.scalars(select(Notice.status)).all() == [NoticeStatus.PENDING]
