"""Demo data for the embedded default: four accounts, two companies, two projects, a round
of each category, and the applicant's submitted training application."""

from __future__ import annotations

import json
from datetime import datetime, time, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from quota_service import applications as apps
from quota_service import audit, ledger
from quota_service.models import (
    Account,
    Category,
    Company,
    LedgerKind,
    Membership,
    Project,
    ProjectStatus,
    Round,
)
from quota_service.timewindow import TAIPEI, taipei, window_for_notice

TIERS_POINTS = {"L1": 1000, "L2": 2000, "L3": 6000}
# Attachment 1, consent, declarations and Attachment 2 as the applicant typed them
DEMO_APPLICATION = Path(__file__).with_name("demo_application.json")
DEMO_ROUND_DAYS = 60  # once the guideline's closing day has passed, the demo rounds run this long

DEMO_ACCOUNTS = {
    "operator": ("營運管理員 Operator", "operator@aipower.example.tw"),
    "reviewer": ("審查委員 Reviewer", "reviewer@aipower.example.tw"),
    "trainee": ("受訓學員 Trainee", "trainee@demo-ai.example.tw"),
    "applicant": ("申請人 Applicant", "applicant@startup.example.tw"),
}


def seed_demo(db: Session, *, now: datetime, max_gpus_per_server: int = 2) -> bool:
    """Create the demo data once; returns False when it is already there."""
    if db.scalar(select(Company).where(Company.business_number == "04595257")):
        return False
    accounts = {}
    for username, (name, email) in DEMO_ACCOUNTS.items():
        accounts[username] = Account(
            username=username,
            display_name=name,
            email=email,
            is_operator=username == "operator",
            is_reviewer=username == "reviewer",
            created_at=now,
        )
    db.add_all(accounts.values())
    demo = Company(name="示範智能股份有限公司", business_number="04595257", created_at=now)
    startup = Company(name="新創應用有限公司", business_number="22099131", created_at=now)
    start, end = window_for_notice(taipei(now).date())
    approved = Project(
        company=demo,
        name="示範智能 醫療影像模型訓練",
        category=Category.TRAINING,
        status=ProjectStatus.APPROVED,
        tier="L1",
        window_start=start,
        window_end=end,
        max_gpus_per_server=max_gpus_per_server,
        created_at=now,
    )
    pending = Project(
        company=startup,
        name="新創應用 客服推論服務",
        category=Category.TRAINING,
        status=ProjectStatus.PENDING,
        max_gpus_per_server=max_gpus_per_server,
        created_at=now,
    )
    db.add_all([demo, startup, approved, pending])
    db.flush()
    db.add(
        Membership(project=approved, account=accounts["trainee"], role="trainee", created_at=now)
    )
    db.add(Membership(project=pending, account=accounts["applicant"], role="lead", created_at=now))
    ledger.grant(
        db,
        approved,
        TIERS_POINTS["L1"] * 1000,
        actor="seed",
        reason="L1 核定點數 / tier L1 award",
        now=now,
        kind=LedgerKind.GRANT,
    )
    rounds = demo_rounds(db, accounts["operator"], now=now)
    application = apps.create_draft(db, accounts["applicant"], rounds[Category.TRAINING], now=now)
    documents = json.loads(DEMO_APPLICATION.read_text(encoding="utf-8"))
    apps.save_draft(db, accounts["applicant"], application, now=now, **documents)
    apps.submit(db, accounts["applicant"], application, now=now)
    audit.record(
        db, actor="seed", action="demo.seed", subject_type="database", subject_id="demo", at=now
    )
    return True


def demo_rounds(db: Session, operator: Account, *, now: datetime) -> dict[str, Round]:
    """A round of each category, open from today (Taipei) until the guideline's closing day,
    or for ``DEMO_ROUND_DAYS`` days when that day has passed."""
    today = taipei(now).date()
    closing_day = apps.DEFAULT_CLOSING_DAY
    if today > closing_day:
        closing_day = today + timedelta(days=DEMO_ROUND_DAYS)
    return {
        category: apps.create_round(
            db,
            operator,
            name=f"示範梯次 Demo round（{label}）",
            category=category,
            opens_at=datetime.combine(today, time(0), TAIPEI),
            closes_at=apps.deadline_after(closing_day),
            now=now,
        )
        for category, label in (
            (Category.TRAINING, "模型訓練類"),
            (Category.INFERENCE, "模型推論類"),
        )
    }
