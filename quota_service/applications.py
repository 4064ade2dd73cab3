"""Applications: rounds, drafts, submission, qualification review and supplement requests.

Every status change goes through :data:`TRANSITIONS` in :func:`change_status`, which writes
the history row the applicant sees and an audit row in the same transaction. Permissions are
checked here, in the service layer: an applicant reads and edits only the applications it
created, a reviewer reads only those it is assigned to and not recused from, operators read
all and alone run the review. Times are aware datetimes; deadlines are half-open: a round
that closes "2026-10-30 23:59" Taipei accepts until 2026-10-31 00:00:00 Taipei exclusive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit, validation, violations
from .models import (
    Account,
    Application,
    ApplicationStatus,
    ApplicationStatusChange,
    Category,
    Notice,
    NoticeStatus,
    QualificationResult,
    ReviewerAssignment,
    Round,
    SupplementRequest,
)
from .timewindow import TAIPEI, taipei

try:  # written alongside this module; the seam below keeps working without it
    from . import banned_models
except ImportError:  # pragma: no cover
    banned_models = None

A = ApplicationStatus
TRANSITIONS: dict[ApplicationStatus, frozenset[ApplicationStatus]] = {
    A.DRAFT: frozenset({A.SUBMITTED, A.WITHDRAWN}),
    A.SUBMITTED: frozenset({A.QUALIFICATION, A.WITHDRAWN}),
    A.QUALIFICATION: frozenset(
        {A.SUPPLEMENT_REQUESTED, A.PROFESSIONAL_REVIEW, A.REJECTED, A.WITHDRAWN}
    ),
    A.SUPPLEMENT_REQUESTED: frozenset({A.RESUBMITTED, A.WITHDRAWN}),
    A.RESUBMITTED: frozenset({A.QUALIFICATION, A.WITHDRAWN}),
    A.PROFESSIONAL_REVIEW: frozenset({A.SELECTED, A.REJECTED, A.WITHDRAWN}),
    A.SELECTED: frozenset({A.AWARDED, A.WITHDRAWN}),
    A.AWARDED: frozenset(),
    A.REJECTED: frozenset(),
    A.WITHDRAWN: frozenset(),
}
CLOSED = frozenset({A.REJECTED, A.WITHDRAWN})  # these free the company's place in the round
FINAL = frozenset(s for s, targets in TRANSITIONS.items() if not targets)

# the qualification review: criteria the operator passes or fails, in order
CRITERIA = (
    "business_number",
    "industry_codes",
    "registered_in_taiwan",
    "not_branch_office",
    "not_china_invested",
    "no_major_breach",
    "no_serious_violation",
    "consent",
    "banned_models",
)
STARTUP_PRIORITY = "startup_priority"  # a flag, not a gate: recorded, never decided
STARTUP_SINCE = date(2018, 1, 1)

SUPPLEMENT_NOTICE = "application-supplement"
RESULT_NOTICE = "application-result"
SUBJECT_PREFIX = "[AI 算力平台 AI Power Platform]"


class ApplicationError(ValueError):
    """A refusal with its reason in both languages and, where one value is at fault, the
    field it concerns (the dotted path a form or the API names it by)."""

    def __init__(self, zh: str, en: str, *, field: str = ""):
        super().__init__(f"{zh} / {en}")
        self.zh, self.en, self.field = zh, en, field


class StateConflict(ApplicationError):
    """Refused for the state things are in (not yet scored, already assigned), not for a
    value the caller gave."""


class PermissionDenied(ApplicationError):
    pass


class TransitionNotAllowed(ApplicationError):
    pass


class DeadlinePassed(ApplicationError):
    pass


class Barred(PermissionDenied):
    """The company is barred from this round (a sanction of the rules of use)."""


class ValidationFailed(ApplicationError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("申請資料有誤，請修正標示的欄位", "fix the fields marked")
        self.errors = errors


def deadline_after(day: date) -> datetime:
    """The exclusive end of ``day`` in Taipei: 23:59:59 of the day is in, 00:00 next is out."""
    return datetime.combine(day + timedelta(days=1), time(0), TAIPEI)


DEFAULT_CLOSING_DAY = date(2026, 10, 30)


# ---- permissions ---------------------------------------------------------------------------


def require_operator(actor: Account) -> None:
    if not actor.is_operator:
        raise PermissionDenied("只有營運單位可以執行", "only operators may do this")


def is_owner(actor: Account, application: Application) -> bool:
    return application.account_id == actor.id


def require_owner(actor: Account, application: Application) -> None:
    if not is_owner(actor, application):
        raise PermissionDenied("這不是你的申請案", "this is not your application")


def may_read(db: Session, actor: Account, application: Application) -> bool:
    if actor.is_operator or is_owner(actor, application):
        return True
    if not actor.is_reviewer:
        return False
    assignment = db.scalar(
        select(ReviewerAssignment).where(
            ReviewerAssignment.application_id == application.id,
            ReviewerAssignment.reviewer_id == actor.id,
        )
    )
    return assignment is not None and assignment.recused_at is None


def get(db: Session, actor: Account, application_id: int) -> Application:
    """The application, if ``actor`` may read it."""
    application = db.get(Application, application_id)
    if application is None or not may_read(db, actor, application):
        # the same answer for "absent" and "not yours": ids are not disclosed
        raise PermissionDenied("找不到申請案或無權查看", "no such application, or not yours to see")
    return application


def documents(application: Application) -> dict:
    return {
        "company": json.loads(application.company_data),
        "consent": json.loads(application.consent),
        "declarations": json.loads(application.declarations),
        "proposal": json.loads(application.proposal),
    }


def history(db: Session, actor: Account, application_id: int) -> list[ApplicationStatusChange]:
    application = get(db, actor, application_id)
    return list(
        db.scalars(
            select(ApplicationStatusChange)
            .where(ApplicationStatusChange.application_id == application.id)
            .order_by(ApplicationStatusChange.id)
        )
    )


# ---- transitions ---------------------------------------------------------------------------


def change_status(
    db: Session,
    application: Application,
    new_status: ApplicationStatus,
    *,
    actor: str,
    reason: str,
    now: datetime,
    **detail: object,
) -> None:
    old = ApplicationStatus(application.status)
    if new_status not in TRANSITIONS[old]:
        raise TransitionNotAllowed(
            f"申請案狀態不能從 {old} 改為 {new_status}",
            f"an application cannot go from {old} to {new_status}",
        )
    application.status = new_status
    application.updated_at = now
    if new_status in CLOSED:
        application.open_key = None
    db.add(
        ApplicationStatusChange(
            application_id=application.id,
            at=now,
            actor=actor,
            old_status=old,
            new_status=new_status,
            reason=reason,
        )
    )
    audit.record(
        db,
        actor=actor,
        action="application.status",
        subject_type="application",
        subject_id=application.id,
        at=now,
        old=old.value,
        new=new_status.value,
        reason=reason,
        **detail,
    )
    db.flush()


# ---- rounds --------------------------------------------------------------------------------


def create_round(
    db: Session,
    actor: Account,
    *,
    name: str,
    category: Category | str,
    opens_at: datetime,
    closes_at: datetime,
    now: datetime,
) -> Round:
    require_operator(actor)
    category = Category(category)
    if closes_at <= opens_at:
        raise ApplicationError(
            "截止時間應晚於開始時間", "a round closes after it opens", field="closes_at"
        )
    round_ = Round(
        name=name, category=category, opens_at=opens_at, closes_at=closes_at, created_at=now
    )
    db.add(round_)
    db.flush()
    audit.record(
        db,
        actor=actor.username,
        action="round.create",
        subject_type="round",
        subject_id=round_.id,
        at=now,
        name=name,
        category=category.value,
        opens_at=opens_at.isoformat(),
        closes_at=closes_at.isoformat(),
    )
    return round_


def rounds(db: Session) -> list[Round]:
    """Every round, the latest opening first."""
    return list(db.scalars(select(Round).order_by(Round.opens_at.desc(), Round.id.desc())))


def accepting(round_: Round, now: datetime) -> bool:
    return round_.opens_at <= now < round_.closes_at


def _require_accepting(round_: Round, now: datetime) -> None:
    if now < round_.opens_at:
        raise DeadlinePassed("本梯次尚未開始受理", "this round is not open yet")
    if now >= round_.closes_at:
        last = taipei(round_.closes_at - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
        raise DeadlinePassed(
            f"本梯次已於 {last}（台北時間）截止", f"this round closed at {last} (Asia/Taipei)"
        )


# ---- drafts and submission -----------------------------------------------------------------


def create_draft(db: Session, actor: Account, round_: Round, *, now: datetime) -> Application:
    _require_accepting(round_, now)
    application = Application(
        round_id=round_.id,
        category=round_.category,
        account_id=actor.id,
        status=A.DRAFT,
        created_at=now,
        updated_at=now,
    )
    db.add(application)
    db.flush()
    change_note = {"round": round_.id, "category": round_.category}
    audit.record(
        db,
        actor=actor.username,
        action="application.create",
        subject_type="application",
        subject_id=application.id,
        at=now,
        **change_note,
    )
    return application


def _claim_place(db: Session, application: Application) -> None:
    """One open application per company, round and category: checked here with a clear
    message, and by the unique constraint on (round, category, open_key) against races."""
    number = application.business_number
    key = number if validation.business_number_valid(number) else None
    if key is not None:
        other = db.scalar(
            select(Application.id).where(
                Application.round_id == application.round_id,
                Application.category == application.category,
                Application.open_key == key,
                Application.id != application.id,
            )
        )
        if other is not None:
            raise ApplicationError(
                f"統一編號 {key} 在本梯次已有一件進行中的申請案",
                f"business number {key} already has an open application in this round",
                field="company.business_number",
            )
    application.open_key = key
    try:
        db.flush()
    except IntegrityError as e:  # a concurrent draft took the place: this unit of work fails
        raise ApplicationError(
            f"統一編號 {key} 在本梯次已有一件進行中的申請案",
            f"business number {key} already has an open application in this round",
            field="company.business_number",
        ) from e


def _store(application: Application, docs: dict) -> None:
    company = docs["company"]
    application.company_data = json.dumps(company, ensure_ascii=False)
    application.consent = json.dumps(docs["consent"], ensure_ascii=False)
    application.declarations = json.dumps(docs["declarations"], ensure_ascii=False)
    application.proposal = json.dumps(docs["proposal"], ensure_ascii=False)
    application.business_number = str(company.get("business_number") or "").strip()[:8]
    application.company_name = str(company.get("name") or "").strip()[:200]


def _validate(application: Application, docs: dict, now: datetime) -> dict[str, str]:
    return validation.validate_application(
        category=application.category, today=taipei(now).date(), **docs
    )


def save_draft(
    db: Session,
    actor: Account,
    application: Application,
    *,
    now: datetime,
    company: dict | None = None,
    consent: dict | None = None,
    declarations: dict | None = None,
    proposal: dict | None = None,
) -> dict[str, str]:
    """Store what was typed, as typed (wrong values too), and return the field messages
    for the page to show; the sections not given are kept."""
    require_owner(actor, application)
    if application.status != A.DRAFT:
        raise TransitionNotAllowed("只有草稿可以修改", "only a draft can be edited")
    docs = documents(application)
    for name, value in (
        ("company", company),
        ("consent", consent),
        ("declarations", declarations),
        ("proposal", proposal),
    ):
        if value is not None:
            if not isinstance(value, dict):
                raise ApplicationError("資料格式不正確", f"{name} must be an object", field=name)
            docs[name] = value
    _store(application, docs)
    application.updated_at = now
    _claim_place(db, application)
    errors = _validate(application, docs, now)
    bar = _bar(db, application, now)
    if bar is not None:
        errors["company.business_number"] = validation.message(*violations.bar_message(bar))
    return errors


def _bar(db: Session, application: Application, now: datetime):
    """The sanction that bars the company from the application's round, if one does; met
    here first when a draft names the company, so the applicant learns it before submitting."""
    if application.open_key is None:
        return None
    round_ = db.get(Round, application.round_id)
    return violations.bar_for_round(db, application.open_key, round_, application, now=now)


def submit(db: Session, actor: Account, application: Application, *, now: datetime) -> None:
    """Draft → submitted, when every field is valid and the round still accepts (server
    clock). The automatic qualification checks run and are stored with their evidence."""
    require_owner(actor, application)
    if application.status != A.DRAFT:
        raise TransitionNotAllowed(
            "申請案已送出，不能重複送出", "the application was already submitted"
        )
    _require_accepting(db.get(Round, application.round_id), now)
    bar = _bar(db, application, now)
    if bar is not None:
        raise Barred(*violations.bar_message(bar))
    docs = documents(application)
    errors = _validate(application, docs, now)
    if errors:
        raise ValidationFailed(errors)
    _claim_place(db, application)
    application.submitted_at = now
    change_status(db, application, A.SUBMITTED, actor=actor.username, reason="送出", now=now)
    store_automatic_checks(db, application, now=now)


def withdraw(
    db: Session, actor: Account, application: Application, *, reason: str, now: datetime
) -> None:
    if not (actor.is_operator or is_owner(actor, application)):
        raise PermissionDenied("這不是你的申請案", "this is not your application")
    change_status(
        db, application, A.WITHDRAWN, actor=actor.username, reason=reason or "撤回", now=now
    )


# ---- automatic qualification checks --------------------------------------------------------


def banned_findings(proposal: dict) -> list[dict]:
    """Banned base models named in the proposal (rules of use, item 5), with evidence.
    Uses ``quota_service.banned_models``; without it, nothing is flagged (the seam)."""
    if banned_models is None:  # pragma: no cover
        return []
    rules = banned_models.load_rules()
    container = proposal.get("container") or {}
    findings = banned_models.check_application(
        model_name=str(container.get("model_name") or ""),
        base_model=str(container.get("base_model") or ""),
        download_link=str(container.get("download_link") or ""),
        rules=rules,
    )
    for field in ("no_code_models", "validation_models", "preset_models"):
        for i, value in enumerate(proposal.get(field) or []):
            findings += banned_models.check_text(str(value), f"{field}.{i}", rules)
    for field in ("open_model_url", "open_code_url"):
        value = (proposal.get("bonus") or {}).get(field)
        findings += banned_models.check_text(str(value or ""), f"bonus.{field}", rules)
    return [f.as_dict() for f in findings]


def automatic_checks(application: Application) -> dict[str, tuple[str, dict]]:
    """criterion → (result, evidence); result "pass", "fail", "flag" or "" (a declaration
    the software cannot verify: the operator decides)."""
    docs = documents(application)
    company, declarations = docs["company"], docs["declarations"]
    number = str(company.get("business_number") or "")
    codes = company.get("industry_codes") or []
    founded = validation.parse_date(company.get("founding_date"))
    checks: dict[str, tuple[str, dict]] = {
        "business_number": (
            "pass" if validation.business_number_valid(number) else "fail",
            {"business_number": number, "rule": "checksum 1,2,1,2,1,2,4,1 ÷ 5"},
        ),
        "industry_codes": (
            "pass" if validation.check_industry_codes(codes) is None else "fail",
            {"industry_codes": codes, "allowed": list(validation.INDUSTRY_CODES)},
        ),
        "consent": (
            "pass" if validation.ticked(docs["consent"].get("personal_data")) else "fail",
            {"personal_data": docs["consent"].get("personal_data")},
        ),
    }
    for name in validation.DECLARATIONS:
        if name in CRITERIA:
            ticked = validation.ticked(declarations.get(name))
            checks[name] = ("" if ticked else "fail", {"declared": declarations.get(name)})
    findings = banned_findings(docs["proposal"])
    checks["banned_models"] = ("flag" if findings else "pass", {"findings": findings})
    checks[STARTUP_PRIORITY] = (
        "flag" if founded is not None and founded >= STARTUP_SINCE else "",
        {"founding_date": company.get("founding_date"), "since": STARTUP_SINCE.isoformat()},
    )
    return checks


def store_automatic_checks(db: Session, application: Application, *, now: datetime) -> None:
    """(Re)write the automatic part of every criterion; an operator's earlier decision on a
    criterion whose automatic result changed is cleared, to be decided again."""
    existing = {
        r.criterion: r
        for r in db.scalars(
            select(QualificationResult).where(QualificationResult.application_id == application.id)
        )
    }
    for criterion, (result, evidence) in automatic_checks(application).items():
        row = existing.get(criterion)
        encoded = json.dumps(evidence, ensure_ascii=False, sort_keys=True, default=str)
        if row is None:
            row = QualificationResult(application_id=application.id, criterion=criterion)
            db.add(row)
        elif row.automatic != result or row.evidence != encoded:
            row.passed, row.decided_by, row.decided_at = None, "", None
        row.automatic, row.evidence, row.checked_at = result, encoded, now
    application.startup_priority = automatic_checks(application)[STARTUP_PRIORITY][0] == "flag"
    db.flush()


def qualification(db: Session, actor: Account, application: Application) -> list[dict]:
    require_operator(actor)
    rows = db.scalars(
        select(QualificationResult).where(QualificationResult.application_id == application.id)
    )
    order = {c: i for i, c in enumerate((*CRITERIA, STARTUP_PRIORITY))}
    return sorted(
        (
            {
                "criterion": r.criterion,
                "automatic": r.automatic,
                "evidence": json.loads(r.evidence),
                "passed": r.passed,
                "note": r.note,
                "decided_by": r.decided_by,
            }
            for r in rows
        ),
        key=lambda d: order.get(d["criterion"], 99),
    )


def start_qualification(
    db: Session, actor: Account, application: Application, *, now: datetime
) -> None:
    require_operator(actor)
    change_status(
        db, application, A.QUALIFICATION, actor=actor.username, reason="資格審查", now=now
    )
    store_automatic_checks(db, application, now=now)


def record_criterion(
    db: Session,
    actor: Account,
    application: Application,
    criterion: str,
    passed: bool,
    *,
    note: str = "",
    now: datetime,
) -> None:
    require_operator(actor)
    if application.status != A.QUALIFICATION:
        raise TransitionNotAllowed(
            "申請案不在資格審查中", "the application is not in qualification"
        )
    if criterion not in CRITERIA:
        raise ApplicationError(
            f"沒有 {criterion} 這個審查項目", f"no criterion {criterion}", field="criterion"
        )
    row = db.scalar(
        select(QualificationResult).where(
            QualificationResult.application_id == application.id,
            QualificationResult.criterion == criterion,
        )
    )
    row.passed, row.note, row.decided_by, row.decided_at = passed, note, actor.username, now
    audit.record(
        db,
        actor=actor.username,
        action="application.criterion",
        subject_type="application",
        subject_id=application.id,
        at=now,
        criterion=criterion,
        passed=passed,
        automatic=row.automatic,
        note=note,
    )


def _decisions(db: Session, application: Application) -> dict[str, bool | None]:
    rows = db.scalars(
        select(QualificationResult).where(QualificationResult.application_id == application.id)
    )
    decided = {r.criterion: r.passed for r in rows}
    return {c: decided.get(c) for c in CRITERIA}


def qualify(db: Session, actor: Account, application: Application, *, now: datetime) -> None:
    """Qualification passed: every criterion decided and passed → professional review."""
    require_operator(actor)
    decisions = _decisions(db, application)
    open_ = [c for c, passed in decisions.items() if passed is not True]
    if open_:
        raise StateConflict(
            f"尚有未通過或未判定的項目：{', '.join(open_)}",
            f"criteria not passed or not decided: {', '.join(open_)}",
        )
    change_status(
        db, application, A.PROFESSIONAL_REVIEW, actor=actor.username, reason="資格審查通過", now=now
    )


def reject(
    db: Session, actor: Account, application: Application, *, reason: str, now: datetime
) -> None:
    """Qualification failed (at least one criterion failed), or the review decided against
    it; the applicant is told."""
    require_operator(actor)
    if application.status == A.QUALIFICATION:
        failed = [c for c, passed in _decisions(db, application).items() if passed is False]
        if not failed:
            raise StateConflict("請先記錄未通過的審查項目", "record the criteria that failed first")
    if not reason.strip():
        raise ApplicationError("請填寫原因", "a reason is required", field="reason")
    change_status(db, application, A.REJECTED, actor=actor.username, reason=reason, now=now)
    notify(
        db,
        application,
        RESULT_NOTICE,
        "rejected",
        subject=f"{SUBJECT_PREFIX} 申請結果 / application result: {application.company_name}",
        body=f"您的申請案未獲核定。原因：{reason}\nYour application was not approved. "
        f"Reason: {reason}\n",
        now=now,
    )


# ---- supplements (補件) ----------------------------------------------------------------------

SECTIONS = ("company", "consent", "declarations", "proposal")


def current_request(db: Session, application: Application) -> SupplementRequest | None:
    """The supplement request the applicant still has to answer, if any."""
    return db.scalar(
        select(SupplementRequest)
        .where(
            SupplementRequest.application_id == application.id,
            SupplementRequest.resolved_at.is_(None),
            SupplementRequest.expired_at.is_(None),
        )
        .order_by(SupplementRequest.id.desc())
    )


def request_supplement(
    db: Session,
    actor: Account,
    application: Application,
    *,
    fields: list[str],
    message: str,
    due_day: date,
    now: datetime,
) -> SupplementRequest:
    """Ask for what is missing (dotted field names: ``company.founding_date``, or a whole
    part: ``proposal.dataset``) by the end of ``due_day`` in Taipei."""
    require_operator(actor)
    if not fields or any(f.split(".", 1)[0] not in SECTIONS for f in fields):
        raise ApplicationError(
            "請列出要補正的欄位",
            "list the fields to supply (company.*, proposal.*, ...)",
            field="fields",
        )
    due_before = deadline_after(due_day)
    if due_before <= now:
        raise ApplicationError(
            "補件期限應在未來", "the deadline must be in the future", field="due_day"
        )
    change_status(
        db,
        application,
        A.SUPPLEMENT_REQUESTED,
        actor=actor.username,
        reason=message,
        now=now,
        fields=fields,
        due_day=due_day.isoformat(),
    )
    request = SupplementRequest(
        application_id=application.id,
        fields=json.dumps(fields),
        message=message,
        due_before=due_before,
        requested_by=actor.username,
        requested_at=now,
    )
    db.add(request)
    db.flush()
    listed = "\n".join(f"- {f}" for f in fields)
    last = f"{due_day.isoformat()} 23:59:59"
    notify(
        db,
        application,
        SUPPLEMENT_NOTICE,
        str(request.id),
        subject=f"{SUBJECT_PREFIX} 補件通知 / supplement requested: {application.company_name}",
        body=(
            f"您的申請案需要補件，請於 {last}（台北時間）前補正並重新送出，逾期視同撤案。\n"
            f"Your application needs a supplement: supply it and resubmit by {last} "
            f"(Asia/Taipei); otherwise it is treated as withdrawn.\n\n"
            f"說明 Message: {message}\n欄位 Fields:\n{listed}\n"
        ),
        now=now,
    )
    return request


def may_supplement(path: str, fields: list[str]) -> bool:
    """Whether a supplement request listing ``fields`` lets ``path`` change: the field
    itself, or a part that contains it (``proposal.dataset`` lets
    ``proposal.dataset.image_count`` change)."""
    return any(path == f or path.startswith(f + ".") for f in fields)


def _set(docs: dict, path: str, value) -> None:
    doc, (*parents, last) = docs, path.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
        if not isinstance(doc, dict):
            raise ApplicationError("欄位不存在", "no such field", field=path)
    doc[last] = value


def supplement(
    db: Session, actor: Account, application: Application, changes: dict, *, now: datetime
) -> dict[str, str]:
    """Change only the fields the request lists; returns the field messages."""
    require_owner(actor, application)
    request = _open_request(db, application, now)
    fields = json.loads(request.fields)
    refused = [p for p in changes if not may_supplement(p, fields)]
    if refused:
        raise PermissionDenied(
            f"補件只能修改要求的欄位，不能修改：{', '.join(refused)}",
            f"a supplement may change only the listed fields, not: {', '.join(refused)}",
        )
    docs = documents(application)
    for path, value in changes.items():
        _set(docs, path, value)
    _store(application, docs)
    application.updated_at = now
    _claim_place(db, application)
    audit.record(
        db,
        actor=actor.username,
        action="application.supplement",
        subject_type="application",
        subject_id=application.id,
        at=now,
        fields=sorted(changes),
    )
    return _validate(application, docs, now)


def _open_request(db: Session, application: Application, now: datetime) -> SupplementRequest:
    if application.status != A.SUPPLEMENT_REQUESTED:
        raise TransitionNotAllowed("申請案不在補件中", "no supplement is requested")
    request = current_request(db, application)
    if now >= request.due_before:
        raise DeadlinePassed("補件期限已過", "the supplement deadline has passed")
    return request


def resubmit(db: Session, actor: Account, application: Application, *, now: datetime) -> None:
    require_owner(actor, application)
    request = _open_request(db, application, now)
    errors = _validate(application, documents(application), now)
    if errors:
        raise ValidationFailed(errors)
    request.resolved_at = now
    change_status(
        db, application, A.RESUBMITTED, actor=actor.username, reason="補件後重新送出", now=now
    )


def expire_supplements(db: Session, *, now: datetime, actor: str = "system") -> list[int]:
    """Withdraw every application whose supplement deadline has passed; idempotent (a second
    run finds nothing). Returns the applications withdrawn."""
    due = db.scalars(
        select(SupplementRequest)
        .join(Application, Application.id == SupplementRequest.application_id)
        .where(
            SupplementRequest.resolved_at.is_(None),
            SupplementRequest.expired_at.is_(None),
            SupplementRequest.due_before <= now,
            Application.status == A.SUPPLEMENT_REQUESTED,
        )
        .order_by(SupplementRequest.id)
    ).all()
    withdrawn = []
    for request in due:
        application = db.get(Application, request.application_id)
        request.expired_at = now
        last = taipei(request.due_before - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
        change_status(
            db,
            application,
            A.WITHDRAWN,
            actor=actor,
            reason=f"補件逾期（期限 {last}），視同撤案 / supplement not received by {last}: "
            f"treated as withdrawn",
            now=now,
            supplement_request=request.id,
        )
        notify(
            db,
            application,
            RESULT_NOTICE,
            f"expired-{request.id}",
            subject=f"{SUBJECT_PREFIX} 補件逾期撤案 / withdrawn: {application.company_name}",
            body=(
                f"您的申請案未於 {last}（台北時間）前補件，依規定視同撤案。\n"
                f"Your application was not supplemented by {last} (Asia/Taipei) and is "
                f"treated as withdrawn.\n"
            ),
            now=now,
        )
        withdrawn.append(application.id)
    return withdrawn


# ---- notices -------------------------------------------------------------------------------


def recipients(db: Session, application: Application) -> list[str]:
    """The project lead and contact person the application names, and the applicant."""
    company = documents(application)["company"]
    found = []
    for person in ("lead", "contact"):
        email = str((company.get(person) or {}).get("email") or "").strip()
        if email and validation.check_email(email) is None:
            found.append(email)
    owner = db.get(Account, application.account_id)
    if owner is not None and owner.email:
        found.append(owner.email)
    return list(dict.fromkeys(e.lower() for e in found))


def notify(
    db: Session,
    application: Application,
    kind: str,
    key: str,
    *,
    subject: str,
    body: str,
    now: datetime,
) -> Notice | None:
    """Into the notices outbox, once per (application, kind, key)."""
    exists = db.scalar(
        select(Notice.id).where(
            Notice.application_id == application.id, Notice.kind == kind, Notice.key == key
        )
    )
    if exists is not None:
        return None
    notice = Notice(
        application_id=application.id,
        project_id=application.project_id,
        kind=kind,
        key=key,
        status=NoticeStatus.PENDING,
        recipients=",".join(recipients(db, application)),
        subject=subject,
        body=body,
        created_at=now,
    )
    db.add(notice)
    db.flush()
    return notice


@dataclass(frozen=True)
class Summary:
    id: int
    round_id: int
    status: str
    company_name: str
    category: str
    submitted_at: datetime | None

    @classmethod
    def of(cls, a: Application) -> Summary:
        return cls(a.id, a.round_id, a.status, a.company_name, a.category, a.submitted_at)


def mine(db: Session, actor: Account) -> list[Summary]:
    rows = db.scalars(
        select(Application).where(Application.account_id == actor.id).order_by(Application.id)
    )
    return [Summary.of(a) for a in rows]


def every(
    db: Session,
    actor: Account,
    *,
    round_id: int | None = None,
    status: ApplicationStatus | None = None,
) -> list[Summary]:
    """Every application (operators), optionally of one round or in one status."""
    require_operator(actor)
    query = select(Application).order_by(Application.id)
    if round_id is not None:
        query = query.where(Application.round_id == round_id)
    if status is not None:
        query = query.where(Application.status == status)
    return [Summary.of(a) for a in db.scalars(query)]
