"""Demo data for the embedded default: four accounts, two companies, two projects."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from quota_service import audit, ledger
from quota_service.models import (
    Account,
    Category,
    Company,
    LedgerKind,
    Membership,
    Project,
    ProjectStatus,
)
from quota_service.timewindow import taipei, window_for_notice

TIERS_POINTS = {"L1": 1000, "L2": 2000, "L3": 6000}

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
    audit.record(
        db, actor="seed", action="demo.seed", subject_type="database", subject_id="demo", at=now
    )
    return True
