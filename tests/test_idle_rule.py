"""The idle-allocation rule against worked examples, with a controlled clock.

The window: 2027-04-01 to 2027-07-01 (Asia/Taipei), 91 days, exactly 13 weeks; week n
starts on 2027-04-01 + 7(n-1) days. Use goes through the real metering (sessions opened
and closed at the given moments); notices go out over a real SMTP server (aiosmtpd).
"""

from __future__ import annotations

import email
import email.policy
import itertools
import json
from datetime import date
from fractions import Fraction

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from quota_service import db as database
from quota_service import idle_rule, ledger, metering, notifications, projects, usage
from quota_service.models import (
    Account,
    Company,
    Membership,
    Notice,
    NoticeStatus,
    Project,
    ProjectStatus,
    Violation,
)
from quota_service.timewindow import window_for_notice
from tests.conftest import at
from tests.stack import free_port

START, END = window_for_notice(date(2027, 4, 1))  # 2027-04-01 → 2027-07-01 00:00 Taipei
WEEKS = usage.window_weeks(START, END)
_numbers = itertools.count(60_000_000)


def make_project(db) -> Project:
    company = Company(name="閒置測試", business_number=str(next(_numbers)), created_at=START)
    project = Project(
        company=company, name="閒置計畫", status=ProjectStatus.APPROVED, window_start=START,
        window_end=END, created_at=START,
    )  # fmt: skip
    db.add(project)
    for role in ("lead", "contact", "trainee"):
        n = next(_numbers)
        account = Account(
            username=f"{role}{n}", email=f"{role}{n}@idle.example.tw", created_at=START
        )
        db.add(Membership(project=project, account=account, role=role, created_at=START))
    db.add(
        Account(username=f"op{next(_numbers)}", email="ops@aipower.example.tw", is_operator=True,
                created_at=START)
    )  # fmt: skip
    db.flush()
    ledger.grant(db, project, 1_000_000, actor="operator", reason="L1", now=START)
    return project


def trainee(db, project: Project) -> str:
    return db.scalar(
        select(Account.username)
        .join(Membership)
        .where(Membership.project_id == project.id, Membership.role == "trainee")
    )


def use(factory, project_id: int, start: str, end: str | None, gpus: int = 1) -> None:
    """A server of the project, metered from ``start`` to ``end`` (None: still running)."""
    with database.transaction(factory) as db:
        project = db.get(Project, project_id)
        request = metering.ServerRequest(trainee(db, project), "", "nvidia", gpus, [], True)
        session = metering.open_session(db, request, now=at(start), interval_seconds=60)
        if end is not None:
            metering.close_session(db, session, now=at(end))


class Inbox:
    def __init__(self):
        self.messages: list[tuple[list[str], str, str]] = []

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.rcpt_tos, message["Subject"], message.get_content()))
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.mailer = notifications.Mailer("127.0.0.1", controller.port, "平台 <noreply@example.tw>")
    yield inbox
    controller.stop()


def run(factory, when: str):
    """One run of the job with the default reading; what it planned, recorded, cleared."""
    with database.transaction(factory) as db:
        outcome = idle_rule.run(db, now=at(when))
        return (
            [(n.key, n.status) for n in outcome.planned],
            [v.id for v in outcome.recorded],
            outcome.cleared,
        )


def deliver(factory, inbox: Inbox, when: str) -> int:
    return notifications.deliver(factory, inbox.mailer, now=at(when))


def idle_notices(factory, project_id: int) -> list[Notice]:
    with database.transaction(factory) as db:
        return list(
            db.scalars(
                select(Notice)
                .where(Notice.project_id == project_id, Notice.kind == idle_rule.IDLE_NOTICE)
                .order_by(Notice.id)
            )
        )


# ---- the arithmetic ----------------------------------------------------------------------


def test_the_window_has_13_full_weeks_and_the_threshold_is_7():
    assert len(WEEKS) == 13 and all(w.full for w in WEEKS)
    assert (WEEKS[0].first_day, WEEKS[6].first_day, WEEKS[12].last_day) == (
        date(2027, 4, 1),
        date(2027, 5, 13),
        date(2027, 6, 30),
    )
    assert [idle_rule.threshold(n) for n in (12, 13, 14)] == [7, 7, 8]
    # a 92-day window has a 14th week of one day, which counts: more than half is 8
    assert len(usage.window_weeks(*window_for_notice(date(2026, 11, 28)))) == 14
    assert [idle_rule.nudge_at(Fraction(1, 4), 13), idle_rule.nudge_at(Fraction(3, 8), 13)] == [
        4,
        5,
    ]


@pytest.mark.parametrize(
    ("sent", "last_day_in"),
    [
        ("2027-06-03 00:00:00", "2027-06-07 00:00:00"),
        ("2027-06-03 09:00:05", "2027-06-07 00:00:00"),
        ("2027-06-03 23:59:59", "2027-06-07 00:00:00"),  # still day D in Taipei (15:59:59 UTC)
        ("2027-06-04 00:00:00", "2027-06-08 00:00:00"),  # 16:00 UTC the same UTC day: D+1
    ],
)
def test_the_grace_counts_three_calendar_days_from_the_day_after_the_notice(sent, last_day_in):
    assert idle_rule.grace_deadline(at(sent), 3) == at(last_day_in)


def spans(*pairs) -> list[usage.SessionSpan]:
    return [
        usage.SessionSpan(i, "u", "", gpus, at(a), at(b) if b else None)
        for i, (a, b, gpus) in enumerate(pairs)
    ]


def test_cumulative_and_consecutive_readings_of_the_same_weeks():
    # use in week 1 and week 3 only; judged after week 9 (2027-06-03 00:00)
    sessions = spans(("2027-04-02 10:00:00", "2027-04-02 12:00:00", 1),
                     ("2027-04-16 10:00:00", "2027-04-16 10:00:01", 1))  # fmt: skip
    now = at("2027-06-03 00:00:00")
    cumulative = idle_rule.evaluate(WEEKS, sessions, [], now, idle_rule.Reading())
    assert [w.state for w in cumulative.weeks] == ["used", "unused", "used"] + ["unused"] * 6 + [
        "open"
    ] * 4
    assert (cumulative.unused, cumulative.threshold, cumulative.crossed) == (7, 7, True)
    assert cumulative.unused_numbers == [2, 4, 5, 6, 7, 8, 9]
    assert cumulative.nudges == [Fraction(1, 4), Fraction(3, 8)]
    consecutive = idle_rule.evaluate(
        WEEKS, sessions, [], now, idle_rule.Reading(counting=idle_rule.CONSECUTIVE)
    )
    assert (consecutive.unused, consecutive.crossed) == (6, False)  # weeks 4 to 9
    a_week_later = idle_rule.evaluate(
        WEEKS, sessions, [], at("2027-06-10 00:00:00"), idle_rule.Reading(counting="consecutive")
    )
    assert (a_week_later.unused, a_week_later.crossed) == (7, True)


def test_a_minimum_of_gpu_minutes_and_a_suspension_change_what_a_week_is():
    # week 2: 59 GPU-minutes (one GPU); week 3: 30 minutes on two GPUs = 60 GPU-minutes
    sessions = spans(("2027-04-08 10:00:00", "2027-04-08 10:59:00", 1),
                     ("2027-04-15 10:00:00", "2027-04-15 10:30:00", 2))  # fmt: skip
    suspended = [(at("2027-04-28 12:00:00"), at("2027-04-29 00:00:01"))]  # weeks 4 and 5
    now = at("2027-05-13 00:00:00")  # after week 6
    hour = idle_rule.Reading(min_gpu_minutes=60)
    states = [w.state for w in idle_rule.evaluate(WEEKS, sessions, suspended, now, hour).weeks]
    assert states[:6] == ["unused", "unused", "used", "excused", "excused", "unused"]
    evaluation = idle_rule.evaluate(WEEKS, sessions, suspended, now, hour)
    assert evaluation.unused == 3
    assert evaluation.weeks[1].as_dict() == {
        "week": 2,
        "first_day": "2027-04-08",
        "last_day": "2027-04-14",
        "gpu_hours": "0.98",
        "state": "unused",
    }
    any_use = idle_rule.evaluate(WEEKS, sessions, suspended, now, idle_rule.Reading())
    assert [w.state for w in any_use.weeks][:3] == ["unused", "used", "used"]
    # consecutive: excused weeks neither extend nor break the run (weeks 6 and, before
    # the excused 4 and 5, nothing: week 3 was used)
    run = idle_rule.evaluate(WEEKS, sessions, suspended, now, idle_rule.Reading(min_gpu_minutes=60, counting="consecutive"))  # fmt: skip
    assert run.unused == 1


def test_use_in_the_grace_counts_a_server_that_was_already_running():
    running = spans(("2027-06-02 20:00:00", None, 1))
    assert (
        idle_rule.used_between(running, at("2027-06-03 09:00:05"), at("2027-06-07 00:00:00"))
        == (at("2027-06-07 00:00:00") - at("2027-06-03 09:00:05")).total_seconds() * 1_000_000
    )
    ended = spans(("2027-06-02 20:00:00", "2027-06-03 09:00:05", 1))
    assert idle_rule.used_between(ended, at("2027-06-03 09:00:05"), at("2027-06-07")) == 0


# ---- the worked example: the job, the notices, the grace ------------------------------------


def arrive_at_the_notice(factory, inbox) -> int:
    """Use in weeks 1 and 3; nudges after weeks 6 and 7; the notice after week 9, decided at
    09:00 and sent at 09:00:05 on 2027-06-03 (day D)."""
    with database.transaction(factory) as db:
        project_id = make_project(db).id
    use(factory, project_id, "2027-04-02 10:00:00", "2027-04-02 12:00:00")
    use(factory, project_id, "2027-04-16 10:00:00", "2027-04-16 11:00:00", gpus=2)
    assert run(factory, "2027-05-12 23:59:59") == ([], [], [])  # 3 unused: 2, 4, 5
    assert run(factory, "2027-05-13 00:00:00") == ([("nudge-1/4", "pending")], [], [])
    assert run(factory, "2027-05-13 00:05:00") == ([], [], [])  # decided once
    assert run(factory, "2027-05-20 00:00:00") == ([("nudge-3/8", "pending")], [], [])
    assert run(factory, "2027-06-02 23:59:59") == ([], [], [])  # 6 unused
    assert run(factory, "2027-06-03 09:00:00") == ([("notice", "pending")], [], [])
    assert deliver(factory, inbox, "2027-06-03 09:00:05") == 3
    return project_id


def test_the_notice_goes_to_the_contact_person_with_the_last_day_of_the_grace(
    session_factory, smtp
):
    arrive_at_the_notice(session_factory, smtp)
    (to1, subject1, body1), (to2, _, body2), (to3, subject3, body3) = smtp.messages
    assert to1 == to2 == to3 and len(to1) == 1 and to1[0].startswith("contact")
    assert "閒置算力 / idle allocation 提醒 / reminder" in subject1
    assert "已有 4 週未使用算力（第 2、4、5、6 週）" in body1 and "7 weeks" in body1
    assert "已有 5 週未使用算力" in body2
    assert "閒置算力 / idle allocation 通知 / notice" in subject3
    assert "已有 7 週未使用算力（第 2、4、5、6、7、8、9 週）" in body3
    assert "2027-06-06 23:59:59（台北時間）前恢復使用" in body3
    assert "by 2027-06-06 23:59:59 (Asia/Taipei)" in body3


def test_use_on_the_third_day_clears_the_notice(session_factory, smtp):
    project_id = arrive_at_the_notice(session_factory, smtp)
    assert run(session_factory, "2027-06-06 23:00:00") == ([], [], [])  # grace not over
    use(session_factory, project_id, "2027-06-06 23:59:59", "2027-06-07 00:30:00")
    assert run(session_factory, "2027-06-07 00:00:00") == ([], [], [project_id])
    assert run(session_factory, "2027-06-08 00:00:00") == ([], [], [])  # settled once
    with database.transaction(session_factory) as db:
        assert db.scalars(select(Violation)).all() == []
    assert deliver(session_factory, smtp, "2027-06-07 00:00:05") == 1
    _, subject, body = smtp.messages[-1]
    assert (
        "use resumed" in subject
        and "2027-06-06 23:59:59（台北時間）前恢復使用算力，不列違規" in body
    )


def test_use_on_the_fourth_day_is_too_late_a_violation_is_recorded_once(session_factory, smtp):
    project_id = arrive_at_the_notice(session_factory, smtp)
    use(session_factory, project_id, "2027-06-07 00:00:00", "2027-06-07 01:00:00")
    planned, [violation_id], cleared = run(session_factory, "2027-06-07 01:00:00")
    assert (planned, cleared) == ([], [])
    assert run(session_factory, "2027-06-07 01:05:00") == ([], [], [])
    assert run(session_factory, "2027-06-20 00:00:00") == ([], [], [])
    with database.transaction(session_factory) as db:
        violation = db.get(Violation, violation_id)
        evidence = json.loads(violation.evidence)
        assert (violation.kind, violation.status, violation.recorded_by) == (
            "idle_allocation",
            "recorded",
            "idle-rule",
        )
        assert violation.recorded_at == at("2027-06-07 01:00:00")
        assert violation.source_key == f"project-{project_id}"
    assert (evidence["window_weeks"], evidence["unused_weeks"], evidence["threshold"]) == (13, 7, 7)
    assert [w["state"] for w in evidence["weeks"]][:10] == ["used", "unused", "used"] + [
        "unused"
    ] * 6 + ["open"]
    assert (
        evidence["weeks"][0]["gpu_hours"] == "2.00" and evidence["weeks"][2]["gpu_hours"] == "2.00"
    )
    assert evidence["notice"]["sent_at"] == "2027-06-03T09:00:05+08:00"
    assert evidence["grace_last_second"] == "2027-06-06 23:59:59"
    assert evidence["gpu_hours_in_grace"] == "0.00"
    assert evidence["reading"] == {
        "counting": "cumulative",
        "min_gpu_minutes": 0,
        "nudges": ["1/4", "3/8"],
        "grace_days": 3,
    }
    # the company's contact and the operators are told, once
    assert deliver(session_factory, smtp, "2027-06-07 01:00:05") == 2
    assert deliver(session_factory, smtp, "2027-06-07 01:10:00") == 0
    recipients = sorted(to[0].split("@")[0][:2] for to, _, _ in smtp.messages[-2:])
    assert recipients == ["co", "op"]
    assert "violation recorded" in smtp.messages[-1][1]


def test_a_late_run_after_missed_ones_still_records_the_violation_once(session_factory, smtp):
    arrive_at_the_notice(session_factory, smtp)
    _, recorded, _ = run(session_factory, "2027-06-25 12:00:00")  # nothing ran for 3 weeks
    assert len(recorded) == 1
    assert run(session_factory, "2027-06-25 12:00:01")[1] == []


def test_without_a_sent_notice_the_grace_does_not_start(session_factory, smtp):
    with database.transaction(session_factory) as db:
        project_id = make_project(db).id
    # no use at all: week 7 ends on 2027-05-20; the nudges are superseded by the notice
    assert run(session_factory, "2027-05-20 08:00:00") == (
        [("nudge-1/4", "superseded"), ("nudge-3/8", "superseded"), ("notice", "pending")],
        [],
        [],
    )
    assert run(session_factory, "2027-06-20 00:00:00") == ([], [], [])  # not delivered yet
    deliver(session_factory, smtp, "2027-06-20 00:00:05")
    assert run(session_factory, "2027-06-23 23:59:59") == ([], [], [])
    assert len(run(session_factory, "2027-06-24 00:00:00")[1]) == 1
    assert [n.status for n in idle_notices(session_factory, project_id)][:3] == [
        NoticeStatus.SUPERSEDED,
        NoticeStatus.SUPERSEDED,
        NoticeStatus.SENT,
    ]


def test_a_suspension_during_the_grace_records_nothing(session_factory, smtp):
    project_id = arrive_at_the_notice(session_factory, smtp)
    for status, when in ((ProjectStatus.SUSPENDED, "2027-06-05 10:00:00"),
                         (ProjectStatus.APPROVED, "2027-06-05 11:00:00")):  # fmt: skip
        with database.transaction(session_factory) as db:
            projects.change_status(
                db, db.get(Project, project_id), status, actor="op", reason="調查", now=at(when)
            )
    assert run(session_factory, "2027-06-08 00:00:00") == ([], [], [])


def test_a_grace_that_reaches_past_the_window_records_nothing(session_factory, smtp):
    with database.transaction(session_factory) as db:
        project_id = make_project(db).id
    for week in range(8, 13):  # used in weeks 8 to 12
        day = WEEKS[week - 1].first_day.isoformat()
        use(session_factory, project_id, f"{day} 10:00:00", f"{day} 11:00:00")
    # weeks 1-7 and 13 unused: crossed when week 7 ends, but suppose the notice goes late
    with database.transaction(session_factory) as db:
        idle_rule.run(db, now=at("2027-06-28 20:00:00"))
    deliver(session_factory, smtp, "2027-06-28 20:00:05")  # grace to 2027-07-01 23:59:59
    assert run(session_factory, "2027-07-02 00:00:00") == ([], [], [])
    with database.transaction(session_factory) as db:
        assert db.scalars(select(Violation)).all() == []


def test_the_reading_is_kept_in_settings_with_validation():
    from traitlets import TraitError

    from quota_service.app import QuotaService

    service = QuotaService(
        idle_counting="consecutive", idle_nudges=["1/3"], idle_min_gpu_minutes=60
    )
    assert service.idle_reading == idle_rule.Reading(
        counting="consecutive", min_gpu_minutes=60, nudges=(Fraction(1, 3),), grace_days=3
    )
    for bad in ({"idle_counting": "weekly"}, {"idle_nudges": ["2/3"]}, {"idle_nudges": ["x"]},
                {"idle_grace_days": 0}, {"idle_min_gpu_minutes": -1}):  # fmt: skip
        with pytest.raises((TraitError, ValueError)):
            QuotaService(**bad)
