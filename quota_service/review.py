"""Professional review: reviewers assigned, conflicts of interest, score sheets with the
category's weights, aggregation, ranking, the inference pass mark and the training meeting.

Arithmetic is exact (``Decimal``): every criterion is a whole score 0..100 and every weight a
whole percentage, so a sheet's weighted total Σ weight × score / 100 is exact in hundredths and
is stored as an integer number of hundredths; the bonus (items × bonus size) is added to it.
The mean across reviewers is rounded to hundredths, half up (ROUND_HALF_UP), once, at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import applications as apps
from . import audit
from .models import (
    Account,
    Application,
    ApplicationStatus,
    Category,
    ReviewerAssignment,
    ReviewerProfile,
    Round,
    ScoreSheet,
)

WEIGHTS: dict[str, dict[str, int]] = {
    Category.TRAINING: {
        "importance": 30,
        "industry_application": 15,
        "dataset": 10,
        "model_resources": 20,
        "benefit": 15,
        "productisation": 10,
    },
    Category.INFERENCE: {
        "importance": 25,
        "industry_application": 25,
        "application_scenario": 20,
        "benefit": 20,
        "productisation": 10,
    },
}
# the bonus items of each category and the proposal field that shows each one
BONUS_ITEMS: dict[str, dict[str, str]] = {
    Category.TRAINING: {
        "open_model": "open_model_url",
        "open_dataset": "open_dataset_url",
        "registrations": "registrations",
    },
    Category.INFERENCE: {
        "open_dataset": "open_dataset_url",
        "open_code": "open_code_url",
        "field_partner_mou": "mou_link",
        "registrations": "registrations",
    },
}
# an uploaded file stands for the link of the same item (the MOU: a link or the file)
UPLOADED_INSTEAD = {"mou_link": "mou_file"}
TIERS = ("L1", "L2", "L3")
# mail providers whose domain says nothing about where a person works
PUBLIC_MAIL_DOMAINS = frozenset(
    {
        "gmail.com",
        "yahoo.com",
        "yahoo.com.tw",
        "hotmail.com",
        "outlook.com",
        "live.com",
        "icloud.com",
        "msa.hinet.net",
        "ms1.hinet.net",
        "pchome.com.tw",
        "protonmail.com",
    }
)
HUNDREDTH = Decimal("0.01")


@dataclass(frozen=True)
class ReviewSettings:
    """The operator's settings that the guideline leaves open."""

    reviewers_per_application: int = 3
    bonus_per_item: Decimal = Decimal("2")
    spread_limit: Decimal = Decimal("20")  # max − min of the reviewers' totals beyond this: flagged
    inference_pass_mark: Decimal = Decimal("70")


class ConflictOfInterest(apps.ApplicationError):
    pass


# ---- assignment and conflicts --------------------------------------------------------------


def set_profile(
    db: Session,
    operator: Account,
    reviewer: Account,
    *,
    affiliation: str,
    business_number: str = "",
    now: datetime,
) -> ReviewerProfile:
    apps.require_operator(operator)
    profile = db.scalar(select(ReviewerProfile).where(ReviewerProfile.account_id == reviewer.id))
    if profile is None:
        profile = ReviewerProfile(account_id=reviewer.id)
        db.add(profile)
    profile.affiliation, profile.business_number = affiliation, business_number
    audit.record(
        db,
        actor=operator.username,
        action="reviewer.profile",
        subject_type="account",
        subject_id=reviewer.id,
        at=now,
        affiliation=affiliation,
        business_number=business_number,
    )
    db.flush()
    return profile


def _domain(email: str) -> str:
    return email.rsplit("@", 1)[-1].strip().lower() if "@" in (email or "") else ""


def obvious_conflicts(db: Session, reviewer: Account, application: Application) -> list[str]:
    """The reviewer's own company: the same business number, or the same e-mail domain as
    the applicant, its lead or its contact (public mail providers excepted)."""
    reasons = []
    profile = db.scalar(select(ReviewerProfile).where(ReviewerProfile.account_id == reviewer.id))
    if (
        profile
        and profile.business_number
        and profile.business_number == (application.business_number)
    ):
        reasons.append(f"business number {profile.business_number}")
    domain = _domain(reviewer.email)
    if domain and domain not in PUBLIC_MAIL_DOMAINS:
        if domain in {_domain(e) for e in apps.recipients(db, application)}:
            reasons.append(f"e-mail domain {domain}")
    return reasons


def _assignments(db: Session, application: Application) -> list[ReviewerAssignment]:
    return list(
        db.scalars(
            select(ReviewerAssignment)
            .where(ReviewerAssignment.application_id == application.id)
            .order_by(ReviewerAssignment.id)
        )
    )


def assign(
    db: Session,
    operator: Account,
    application: Application,
    reviewer: Account,
    *,
    now: datetime,
    settings: ReviewSettings = ReviewSettings(),
) -> ReviewerAssignment:
    apps.require_operator(operator)
    if application.status != ApplicationStatus.PROFESSIONAL_REVIEW:
        raise apps.TransitionNotAllowed(
            "申請案不在專業審查中", "the application is not in professional review"
        )
    if not reviewer.is_reviewer:
        raise apps.ApplicationError(
            "此帳號不是審查委員", "this account is not a reviewer", field="reviewer"
        )
    conflicts = obvious_conflicts(db, reviewer, application)
    if conflicts:
        raise ConflictOfInterest(
            f"利益迴避：{', '.join(conflicts)}", f"conflict of interest: {', '.join(conflicts)}"
        )
    existing = _assignments(db, application)
    if any(a.reviewer_id == reviewer.id for a in existing):
        raise apps.StateConflict("已指派此委員", "this reviewer is already assigned")
    active = [a for a in existing if a.recused_at is None]
    if len(active) >= settings.reviewers_per_application:
        raise apps.StateConflict(
            f"每件申請案指派 {settings.reviewers_per_application} 位委員",
            f"{settings.reviewers_per_application} reviewers per application",
        )
    assignment = ReviewerAssignment(
        application_id=application.id,
        reviewer_id=reviewer.id,
        assigned_by=operator.username,
        assigned_at=now,
    )
    db.add(assignment)
    db.flush()
    audit.record(
        db,
        actor=operator.username,
        action="review.assign",
        subject_type="application",
        subject_id=application.id,
        at=now,
        reviewer=reviewer.username,
    )
    return assignment


def _my_assignment(db: Session, reviewer: Account, application: Application) -> ReviewerAssignment:
    assignment = db.scalar(
        select(ReviewerAssignment).where(
            ReviewerAssignment.application_id == application.id,
            ReviewerAssignment.reviewer_id == reviewer.id,
        )
    )
    if assignment is None or assignment.recused_at is not None:
        raise apps.PermissionDenied(
            "你未被指派審查此案，或已迴避", "you are not assigned to this application, or recused"
        )
    return assignment


def declare_conflict(
    db: Session, reviewer: Account, application: Application, *, reason: str, now: datetime
) -> None:
    """The reviewer declares a conflict and is recused: the sheet, if any, no longer counts,
    and the application is closed to them."""
    assignment = _my_assignment(db, reviewer, application)
    if not reason.strip():
        raise apps.ApplicationError("請說明利益衝突", "describe the conflict", field="reason")
    assignment.conflict_declared, assignment.recused_at = reason, now
    audit.record(
        db,
        actor=reviewer.username,
        action="review.recused",
        subject_type="application",
        subject_id=application.id,
        at=now,
        reason=reason,
    )
    db.flush()


def assignments(db: Session, operator: Account, application: Application) -> list[dict]:
    """Who reviews the application: recused ones too, with their reason, and when each
    reviewer last saved a sheet."""
    apps.require_operator(operator)
    rows = db.execute(
        select(ReviewerAssignment, Account.username, ScoreSheet.submitted_at)
        .join(Account, Account.id == ReviewerAssignment.reviewer_id)
        .outerjoin(ScoreSheet, ScoreSheet.assignment_id == ReviewerAssignment.id)
        .where(ReviewerAssignment.application_id == application.id)
        .order_by(ReviewerAssignment.id)
    )
    return [
        {
            "reviewer": username,
            "assigned_by": a.assigned_by,
            "assigned_at": a.assigned_at,
            "recused_at": a.recused_at,
            "conflict_declared": a.conflict_declared,
            "sheet_saved_at": saved_at,
        }
        for a, username, saved_at in rows
    ]


def assigned_to(db: Session, reviewer: Account) -> list[apps.Summary]:
    """The applications a reviewer is assigned to and not recused from."""
    if not reviewer.is_reviewer:
        raise apps.PermissionDenied("只有審查委員可以查看", "reviewers only")
    rows = db.scalars(
        select(Application)
        .join(ReviewerAssignment, ReviewerAssignment.application_id == Application.id)
        .where(
            ReviewerAssignment.reviewer_id == reviewer.id, ReviewerAssignment.recused_at.is_(None)
        )
        .order_by(Application.id)
    )
    return [apps.Summary.of(a) for a in rows]


def open_for_review(db: Session, reviewer: Account, application_id: int) -> dict:
    """What a reviewer sees: the documents and the bonus items; never another's sheet."""
    application = apps.get(db, reviewer, application_id)
    if not reviewer.is_operator:
        _my_assignment(db, reviewer, application)
    return {
        "id": application.id,
        "category": application.category,
        "startup_priority": application.startup_priority,
        "bonus_items": bonus_items(application),
        **apps.documents(application),
    }


# ---- scoring -------------------------------------------------------------------------------


def bonus_items(application: Application) -> list[str]:
    """The bonus items the application shows (each counts once)."""
    bonus = apps.documents(application)["proposal"].get("bonus") or {}
    found = []
    for item, key in BONUS_ITEMS[Category(application.category)].items():
        value, uploaded = bonus.get(key), bonus.get(UPLOADED_INSTEAD.get(key, ""))
        if (
            (isinstance(value, list) and value)
            or (isinstance(value, str) and value.strip())
            or (isinstance(uploaded, dict) and uploaded)
        ):
            found.append(item)
    return found


def weighted_total(
    category: str, scores: dict[str, int], *, bonus_count: int = 0, bonus_per_item=Decimal(0)
) -> Decimal:
    """Σ weight × score / 100 + bonus_count × bonus_per_item, exact."""
    weights = WEIGHTS[Category(category)]
    if set(scores) != set(weights):
        raise apps.ApplicationError(
            "評分項目不完整", f"scores are needed for exactly {sorted(weights)}", field="scores"
        )
    for name, score in scores.items():
        if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 100:
            raise apps.ApplicationError(
                f"{name} 應為 0 到 100 的整數",
                f"{name} is a whole score from 0 to 100",
                field=f"scores.{name}",
            )
    weighted = Decimal(sum(weights[n] * s for n, s in scores.items())) / 100
    return weighted + bonus_count * Decimal(bonus_per_item)


def submit_sheet(
    db: Session,
    reviewer: Account,
    application: Application,
    scores: dict[str, int],
    *,
    comment_to_applicant: str = "",
    private_comment: str = "",
    now: datetime,
    settings: ReviewSettings = ReviewSettings(),
) -> ScoreSheet:
    """Save (or revise, until the decision) the reviewer's sheet; the total is computed."""
    assignment = _my_assignment(db, reviewer, application)
    if application.status != ApplicationStatus.PROFESSIONAL_REVIEW:
        raise apps.TransitionNotAllowed("審查已結束", "the review is over")
    items = bonus_items(application)
    total = weighted_total(
        application.category,
        scores,
        bonus_count=len(items),
        bonus_per_item=settings.bonus_per_item,
    )
    sheet = db.scalar(select(ScoreSheet).where(ScoreSheet.assignment_id == assignment.id))
    if sheet is None:
        sheet = ScoreSheet(assignment_id=assignment.id)
        db.add(sheet)
    sheet.scores = json.dumps(scores, sort_keys=True)
    sheet.bonus_items = json.dumps(items)
    sheet.total_hundredths = int(total * 100)
    sheet.comment_to_applicant, sheet.private_comment = comment_to_applicant, private_comment
    sheet.submitted_at = now
    db.flush()
    audit.record(
        db,
        actor=reviewer.username,
        action="review.sheet",
        subject_type="application",
        subject_id=application.id,
        at=now,
        scores=scores,
        bonus_items=items,
        total=str(total),
    )
    return sheet


def my_sheet(db: Session, reviewer: Account, application: Application) -> ScoreSheet | None:
    """The reviewer's own sheet, None before its first save; refused once recused."""
    assignment = _my_assignment(db, reviewer, application)
    return db.scalar(select(ScoreSheet).where(ScoreSheet.assignment_id == assignment.id))


# ---- aggregation, ranking, decisions -------------------------------------------------------


@dataclass
class Aggregate:
    application_id: int
    totals: list[Decimal] = field(default_factory=list)
    expected: int = 0

    @property
    def mean(self) -> Decimal | None:
        if not self.totals:
            return None
        return (sum(self.totals) / len(self.totals)).quantize(HUNDREDTH, ROUND_HALF_UP)

    @property
    def spread(self) -> Decimal:
        return max(self.totals) - min(self.totals) if self.totals else Decimal(0)

    @property
    def complete(self) -> bool:
        return len(self.totals) >= self.expected

    def flagged(self, settings: ReviewSettings) -> bool:
        return self.spread > settings.spread_limit


def aggregate(
    db: Session, application: Application, settings: ReviewSettings = ReviewSettings()
) -> Aggregate:
    """The sheets of reviewers not recused."""
    rows = db.execute(
        select(ScoreSheet.total_hundredths)
        .join(ReviewerAssignment, ReviewerAssignment.id == ScoreSheet.assignment_id)
        .where(
            ReviewerAssignment.application_id == application.id,
            ReviewerAssignment.recused_at.is_(None),
        )
        .order_by(ScoreSheet.id)
    ).scalars()
    return Aggregate(
        application.id,
        [Decimal(t).scaleb(-2) for t in rows],  # exact, in hundredths: 66.00
        settings.reviewers_per_application,
    )


def ranking(
    db: Session, operator: Account, round_: Round, settings: ReviewSettings = ReviewSettings()
) -> list[dict]:
    """Applications of the round in professional review or decided, best mean first; ties:
    startup priority first, then the earlier submission, then the lower id."""
    apps.require_operator(operator)
    candidates = db.scalars(
        select(Application).where(
            Application.round_id == round_.id,
            Application.status.in_(
                [
                    ApplicationStatus.PROFESSIONAL_REVIEW,
                    ApplicationStatus.SELECTED,
                    ApplicationStatus.AWARDED,
                ]
            ),
        )
    ).all()
    rows = []
    for application in candidates:
        result = aggregate(db, application, settings)
        rows.append(
            {
                "application_id": application.id,
                "company_name": application.company_name,
                "status": application.status,
                "mean": result.mean,
                "sheets": len(result.totals),
                "complete": result.complete,
                "spread": result.spread,
                "flagged": result.flagged(settings),
                "startup_priority": application.startup_priority,
                "submitted_at": application.submitted_at,
            }
        )
    rows.sort(
        key=lambda r: (
            -(r["mean"] if r["mean"] is not None else Decimal(-1)),
            not r["startup_priority"],
            r["submitted_at"],
            r["application_id"],
        )
    )
    for place, row in enumerate(rows, 1):
        row["rank"] = place
    return rows


def _require_complete(result: Aggregate) -> None:
    if not result.complete:
        raise apps.StateConflict(
            f"評分尚未完成（{len(result.totals)}/{result.expected}）",
            f"the scoring is not complete ({len(result.totals)}/{result.expected})",
        )


def _check_tier(tier: str) -> None:
    if tier not in TIERS:
        raise apps.ApplicationError(
            "級別應為 L1、L2 或 L3", "the tier is L1, L2 or L3", field="tier"
        )


def decide_inference(
    db: Session,
    operator: Account,
    application: Application,
    *,
    tier: str,
    now: datetime,
    settings: ReviewSettings = ReviewSettings(),
) -> bool:
    """Inference: the mean at or above the pass mark is approved (with ``tier``), below it
    rejected. Returns whether it passed."""
    apps.require_operator(operator)
    if application.category != Category.INFERENCE:
        raise apps.StateConflict("訓練類由審查會議決定", "training is decided by the meeting")
    _check_tier(tier)
    result = aggregate(db, application, settings)
    _require_complete(result)
    mean = result.mean
    if mean >= settings.inference_pass_mark:
        application.tier = tier
        apps.change_status(
            db,
            application,
            ApplicationStatus.SELECTED,
            actor=operator.username,
            reason=f"平均 {mean} ≥ 及格分數 {settings.inference_pass_mark}",
            now=now,
            mean=str(mean),
            tier=tier,
        )
        return True
    apps.reject(
        db,
        operator,
        application,
        reason=f"平均 {mean} 未達及格分數 {settings.inference_pass_mark} / mean {mean} below "
        f"the pass mark {settings.inference_pass_mark}",
        now=now,
    )
    return False


def record_meeting_decision(
    db: Session,
    operator: Account,
    application: Application,
    *,
    selected: bool,
    tier: str | None = None,
    note: str = "",
    now: datetime,
    settings: ReviewSettings = ReviewSettings(),
) -> None:
    """Training: the review meeting's decision, recorded by the operator with the tier."""
    apps.require_operator(operator)
    if application.category != Category.TRAINING:
        raise apps.StateConflict("推論類依及格分數決定", "inference is decided by the pass mark")
    result = aggregate(db, application, settings)
    _require_complete(result)
    if selected:
        _check_tier(tier)
        application.tier = tier
        apps.change_status(
            db,
            application,
            ApplicationStatus.SELECTED,
            actor=operator.username,
            reason=note or "審查會議決議入選",
            now=now,
            mean=str(result.mean),
            tier=tier,
        )
    else:
        apps.reject(db, operator, application, reason=note or "審查會議決議未入選", now=now)


def comments_for_applicant(db: Session, actor: Account, application_id: int) -> list[str]:
    """The comments meant for the applicant (never the private ones), once decided."""
    application = apps.get(db, actor, application_id)
    if application.status not in apps.FINAL | {ApplicationStatus.SELECTED}:
        return []
    return [
        text
        for text in db.scalars(
            select(ScoreSheet.comment_to_applicant)
            .join(ReviewerAssignment, ReviewerAssignment.id == ScoreSheet.assignment_id)
            .where(
                ReviewerAssignment.application_id == application.id,
                ReviewerAssignment.recused_at.is_(None),
            )
            .order_by(ScoreSheet.id)
        )
        if text
    ]
