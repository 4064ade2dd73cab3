"""Helpers that walk an application through the service layer, for the review tests."""

from __future__ import annotations

from datetime import datetime

from quota_service import applications as apps
from quota_service.models import Account, Application, Round
from quota_service.timewindow import TAIPEI
from tests import application_samples as sample
from tests.conftest import at

OPENS = at("2026-08-01 00:00:00")
CLOSES = apps.deadline_after(apps.DEFAULT_CLOSING_DAY)  # 2026-10-31 00:00 Taipei
NOW = at("2026-09-15 10:00:00")


def account(db, username: str, *, email: str = "", operator=False, reviewer=False) -> Account:
    person = Account(
        username=username,
        email=email or f"{username}@example.tw",
        is_operator=operator,
        is_reviewer=reviewer,
        created_at=NOW,
    )
    db.add(person)
    db.flush()
    return person


def people(db) -> dict[str, Account]:
    return {
        "operator": account(db, "op", email="op@aipower.example.tw", operator=True),
        "a": account(db, "alice", email="alice@startup.example.tw"),
        "b": account(db, "bob", email="bob@other.example.tw"),
        "r1": account(db, "r1", email="r1@ntu.example.edu.tw", reviewer=True),
        "r2": account(db, "r2", email="r2@nycu.example.edu.tw", reviewer=True),
        "r3": account(db, "r3", email="r3@nthu.example.edu.tw", reviewer=True),
    }


def make_round(db, operator: Account, category: str = "training") -> Round:
    assert CLOSES == datetime(2026, 10, 31, tzinfo=TAIPEI)
    return apps.create_round(
        db,
        operator,
        name=f"115 年第 1 梯次 {category}",
        category=category,
        opens_at=OPENS,
        closes_at=CLOSES,
        now=NOW,
    )


def filled(
    db, who: Account, round_: Round, *, business_number="22099131", proposal=None
) -> Application:
    application = apps.create_draft(db, who, round_, now=NOW)
    if proposal is None:
        proposal = sample.training() if round_.category == "training" else sample.inference()
    apps.save_draft(
        db,
        who,
        application,
        company=sample.company(business_number),
        consent=sample.CONSENT,
        declarations=sample.DECLARATIONS,
        proposal=proposal,
        now=NOW,
    )
    return application


def submitted(db, who, round_, **kw) -> Application:
    application = filled(db, who, round_, **kw)
    apps.submit(db, who, application, now=NOW)
    return application


def qualified(db, operator, who, round_, **kw) -> Application:
    application = submitted(db, who, round_, **kw)
    apps.start_qualification(db, operator, application, now=NOW)
    for criterion in apps.CRITERIA:
        apps.record_criterion(db, operator, application, criterion, True, now=NOW)
    apps.qualify(db, operator, application, now=NOW)
    return application
