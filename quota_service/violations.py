"""The violations register: what broke the rules of use, with its evidence, and what was
done about it.

- A violation (kind, evidence, when, who recorded it) counts against the company and belongs
  to the project in which it happened. Its status changes only through :data:`TRANSITIONS`:
  recorded → appealed (the company contests it) → upheld or withdrawn; the operator may also
  uphold or withdraw a recorded one directly.
- A sanction's status changes only through :data:`SANCTION_TRANSITIONS`; what a sanction does
  to the project (suspend, terminate, purge) is in :mod:`quota_service.sanctions`. The bar from
  the next round is met here, by the application service (:func:`bar_for_round`).
- Every change writes its audit row in the same transaction and a notice to the company's
  contact person through the outbox; operators get one where they must act (an appeal, a
  violation the idle rule recorded, a termination whose purge awaits confirmation).

Evidence comes from what the platform already recorded, in one step: refused connections from
banned regions (the audit rows of ``network.record_refusal``), banned-model findings (the daily
scans of the members' storage, ``model_scans``, or an application's automatic qualification
check), the idle rule's weekly figures (``idle_rule``), or the operator's own description.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit, lifecycle, model_scans, network, notifications
from .models import (
    Account,
    Application,
    AuditEvent,
    Company,
    Membership,
    Project,
    QualificationResult,
    Round,
    Sanction,
    SanctionKind,
    SanctionStatus,
    Violation,
    ViolationEntry,
    ViolationEntryKind,
    ViolationKind,
    ViolationStatus,
)
from .timewindow import taipei

V = ViolationStatus
TRANSITIONS: dict[ViolationStatus, frozenset[ViolationStatus]] = {
    V.RECORDED: frozenset({V.APPEALED, V.UPHELD, V.WITHDRAWN}),
    V.APPEALED: frozenset({V.UPHELD, V.WITHDRAWN}),
    V.UPHELD: frozenset(),
    V.WITHDRAWN: frozenset(),
}
# what counts against the company: an appeal holds the count until it is decided
COUNTED = frozenset({V.RECORDED, V.UPHELD})
SERIOUS_AT = 2  # 累計違規兩次者，列為情節重大

SK, SS = SanctionKind, SanctionStatus
SANCTION_TRANSITIONS: dict[tuple[SanctionKind, SanctionStatus], frozenset[SanctionStatus]] = {
    (SK.SUSPEND, SS.ACTIVE): frozenset({SS.LIFTED}),
    (SK.BAR_NEXT_ROUND, SS.ACTIVE): frozenset({SS.USED, SS.LIFTED}),
    (SK.TERMINATE, SS.ACTIVE): frozenset({SS.COMPLETED}),
}

KIND_NAMES: dict[ViolationKind, tuple[str, str]] = {
    ViolationKind.PROHIBITED_USE: ("挖礦、P2P 或營利行為", "mining, peer-to-peer sharing or for-profit use"),
    ViolationKind.BANNED_REGION: ("自中港澳網路位址連線", "connecting from mainland China, Hong Kong or Macau"),
    ViolationKind.INFRINGEMENT: ("侵害他人權益", "infringing others' rights"),
    ViolationKind.UNLAWFUL: ("違反法令或公序良俗", "against the law or public order"),
    ViolationKind.BANNED_MODEL: ("使用中國或中資的模型或工具", "models or tools from Chinese or Chinese-funded makers"),
    ViolationKind.IDLE_ALLOCATION: ("閒置算力", "idle allocation"),
    ViolationKind.OBLIGATIONS: ("違反使用者義務", "breaking the user obligations"),
    ViolationKind.OTHER: ("其他", "other"),
}  # fmt: skip
SANCTION_NAMES: dict[SanctionKind, tuple[str, str]] = {
    SK.SUSPEND: ("暫停服務", "service suspended"),
    SK.BAR_NEXT_ROUND: ("停權下次申請資格一次", "barred from the next round once"),
    SK.TERMINATE: ("終止算力服務", "service terminated"),
}
STATUS_NAMES: dict[str, tuple[str, str]] = {
    V.RECORDED: ("已登錄", "recorded"),
    V.APPEALED: ("申訴中", "appealed"),
    V.UPHELD: ("維持", "upheld"),
    V.WITHDRAWN: ("撤銷", "withdrawn"),
    SS.ACTIVE: ("執行中", "active"),
    SS.LIFTED: ("已解除", "lifted"),
    SS.USED: ("已執行", "used"),
    SS.COMPLETED: ("已完成", "completed"),
}

VIOLATION_NOTICE = "violation"
OPERATOR_NOTICE = "violation-operators"
PAGE = "/services/quota/violations/{id}"
BANNED_REGION_ACTION = f"{network.REFUSAL_ACTION}.{network.BANNED_REGION}"


class RegisterError(ValueError):
    """A refusal of the register, bilingual; ``field`` names the form field it is about."""

    status_code = 400

    def __init__(self, zh: str, en: str, *, field: str = ""):
        super().__init__(f"{zh} / {en}")
        self.zh, self.en, self.field = zh, en, field


class NotAllowed(RegisterError):
    status_code = 403


class NotFound(RegisterError):
    status_code = 404


class Conflict(RegisterError):
    """Not in this state: a transition the table does not allow, a sanction already active."""

    status_code = 409


def required_text(text: str, field: str, zh: str, en: str) -> str:
    if not (text or "").strip():
        raise RegisterError(zh, en, field=field)
    return text.strip()


def require_operator(actor: Account) -> None:
    if not actor.is_operator:
        raise NotAllowed("只有營運單位可以執行", "only operators may do this")


# ---- notices ---------------------------------------------------------------------------------


def operator_emails(db: Session) -> list[str]:
    return list(
        db.scalars(
            select(Account.email)
            .where(Account.is_operator.is_(True), Account.email != "")
            .order_by(Account.id)
        )
    )


def tell(
    db: Session,
    project: Project,
    key: str,
    *,
    subject: str,
    zh: str,
    en: str,
    link: str,
    now: datetime,
    operators: bool = False,
) -> None:
    """A notice to the company's contact person, and one to the operators when they must
    act; each once per key (the outbox's unique key)."""
    body = (
        f"{zh}\n{en}\n\n計畫 Project: {project.name}（{project.company.name}）\n頁面 Page: {link}\n"
    )
    audiences = [(VIOLATION_NOTICE, notifications.contact_persons(db, project.id))]
    if operators and (emails := operator_emails(db)):
        audiences.append((OPERATOR_NOTICE, emails))
    for kind, recipients in audiences:
        notifications.enqueue(
            db, project.id, kind, key, recipients=recipients, subject=subject, body=body, now=now
        )


def _kind_label(violation: Violation) -> str:
    zh, en = KIND_NAMES[ViolationKind(violation.kind)]
    return f"#{violation.id} {zh} / {en}"


# ---- the register --------------------------------------------------------------------------


def _entry(
    db: Session,
    violation: Violation,
    kind: ViolationEntryKind,
    *,
    actor: str,
    text: str,
    now: datetime,
    internal: bool = False,
    old: str = "",
    new: str = "",
) -> ViolationEntry:
    entry = ViolationEntry(
        violation_id=violation.id,
        at=now,
        actor=actor,
        kind=kind,
        text=text,
        internal=internal,
        old_status=old,
        new_status=new,
    )
    db.add(entry)
    db.flush()
    return entry


def record(
    db: Session,
    project: Project,
    kind: ViolationKind | str,
    *,
    summary: str,
    evidence: dict,
    actor: str,
    now: datetime,
    source_key: str | None = None,
    automatic: bool = False,
) -> Violation:
    """Record a violation found in ``project``, with its evidence. ``automatic``: found by a
    rule of the platform (the idle rule), so the operators are told as well."""
    try:
        kind = ViolationKind(kind)
    except ValueError:
        raise RegisterError(
            "沒有這種違規類別", f"no such kind of violation: {kind}", field="kind"
        ) from None
    summary = required_text(summary, "summary", "請說明違規情形", "describe what happened")
    violation = Violation(
        company_id=project.company_id,
        project_id=project.id,
        kind=kind,
        status=V.RECORDED,
        summary=summary,
        evidence=json.dumps(evidence, ensure_ascii=False, sort_keys=True, default=str),
        source_key=source_key,
        recorded_at=now,
        recorded_by=actor,
    )
    db.add(violation)
    db.flush()
    _entry(
        db, violation, ViolationEntryKind.STATUS, actor=actor, text=summary, now=now, new=V.RECORDED
    )
    audit.record(
        db,
        actor=actor,
        action="violation.record",
        subject_type="violation",
        subject_id=violation.id,
        at=now,
        company_id=project.company_id,
        project_id=project.id,
        kind=kind.value,
        summary=summary,
        evidence=evidence,
    )
    counted = len(counted_against(db, project.company_id))
    zh_kind, en_kind = KIND_NAMES[kind]
    tell(
        db,
        project,
        f"{violation.id}-recorded",
        subject=f"違規紀錄 / violation recorded: {_kind_label(violation)}",
        zh=f"營運單位依平台使用規範登錄一筆違規（{zh_kind}）：{summary}\n"
        f"貴公司目前累計 {counted} 筆違規；累計兩次列為情節重大，得終止算力服務。"
        f"如有異議，請於頁面提出申訴。",
        en=f"A violation of the rules of use was recorded ({en_kind}): {summary}\n"
        f"Your company now has {counted} violation(s) on record; two make the case serious, "
        f"and the service may then be terminated. To contest it, file an appeal on the page.",
        link=PAGE.format(id=violation.id),
        now=now,
        operators=automatic,
    )
    return violation


def change_status(
    db: Session,
    violation: Violation,
    new: ViolationStatus,
    *,
    actor: str,
    reason: str,
    now: datetime,
    entry_kind: ViolationEntryKind = ViolationEntryKind.STATUS,
) -> ViolationEntry:
    old = ViolationStatus(violation.status)
    if new not in TRANSITIONS[old]:
        raise Conflict(
            f"違規紀錄不能從「{STATUS_NAMES[old][0]}」改為「{STATUS_NAMES[new][0]}」",
            f"a violation cannot go from {old} to {new}",
        )
    reason = required_text(reason, "reason", "請填寫原因", "a reason is required")
    violation.status = new
    if new in (V.UPHELD, V.WITHDRAWN):
        violation.decided_at, violation.decided_by = now, actor
    entry = _entry(db, violation, entry_kind, actor=actor, text=reason, now=now, old=old, new=new)
    audit.record(
        db,
        actor=actor,
        action="violation.status",
        subject_type="violation",
        subject_id=violation.id,
        at=now,
        old=old.value,
        new=new.value,
        reason=reason,
    )
    return entry


def appeal(
    db: Session, violation: Violation, account: Account, *, text: str, now: datetime
) -> ViolationEntry:
    """The company contests a recorded violation: a member of its project states why."""
    if account.username not in lifecycle.members_of(db, violation.project_id):
        raise NotAllowed("只有該計畫的成員可以提出申訴", "only members of the project may appeal")
    text = required_text(text, "text", "請說明申訴理由", "say why you appeal")
    entry = change_status(
        db,
        violation,
        V.APPEALED,
        actor=account.username,
        reason=text,
        now=now,
        entry_kind=ViolationEntryKind.APPEAL,
    )
    tell(
        db,
        db.get(Project, violation.project_id),
        f"{violation.id}-appealed",
        subject=f"違規申訴 / appeal filed: {_kind_label(violation)}",
        zh=f"{account.username} 對違規紀錄提出申訴：{text}\n營運單位將審理並通知結果。",
        en=f"{account.username} appealed against the violation: {text}\n"
        f"The operator will decide and tell you the outcome.",
        link=PAGE.format(id=violation.id),
        now=now,
        operators=True,
    )
    return entry


def add_note(
    db: Session,
    violation: Violation,
    operator: Account,
    *,
    text: str,
    internal: bool,
    now: datetime,
) -> ViolationEntry:
    """An operator's note; one the company may read is also mailed to its contact."""
    require_operator(operator)
    text = required_text(text, "text", "請填寫備註內容", "the note is empty")
    entry = _entry(
        db, violation, ViolationEntryKind.NOTE, actor=operator.username, text=text, now=now,
        internal=internal,
    )  # fmt: skip
    audit.record(
        db,
        actor=operator.username,
        action="violation.note",
        subject_type="violation",
        subject_id=violation.id,
        at=now,
        entry=entry.id,
        internal=internal,
    )
    if not internal:
        tell(
            db,
            db.get(Project, violation.project_id),
            f"{violation.id}-note-{entry.id}",
            subject=f"違規紀錄備註 / note on a violation: {_kind_label(violation)}",
            zh=f"營運單位在違規紀錄新增備註：{text}",
            en=f"The operator added a note to the violation: {text}",
            link=PAGE.format(id=violation.id),
            now=now,
        )
    return entry


def decide(
    db: Session,
    violation: Violation,
    operator: Account,
    outcome: ViolationStatus | str,
    *,
    reason: str,
    now: datetime,
) -> ViolationEntry:
    """Uphold or withdraw, with the reason; a withdrawal waits until the violation's
    sanctions that are still in force are lifted (each is its own decision, told apart)."""
    require_operator(operator)
    try:
        outcome = ViolationStatus(outcome)
    except ValueError:
        outcome = None
    if outcome not in (V.UPHELD, V.WITHDRAWN):
        raise RegisterError(
            "決定應為維持或撤銷", "the decision is upheld or withdrawn", field="decision"
        )
    if outcome is V.WITHDRAWN:
        active = [s for s in sanctions_of(db, violation.id) if s.status == SS.ACTIVE]
        if active:
            listed = ", ".join(f"#{s.id}" for s in active)
            raise Conflict(
                f"請先解除這筆違規仍在執行的處分（{listed}）",
                f"lift the sanctions of this violation still in force first ({listed})",
            )
    entry = change_status(db, violation, outcome, actor=operator.username, reason=reason, now=now)
    zh_status, en_status = STATUS_NAMES[outcome]
    tell(
        db,
        db.get(Project, violation.project_id),
        f"{violation.id}-{outcome.value}",
        subject=f"違規紀錄{zh_status} / violation {en_status}: {_kind_label(violation)}",
        zh=f"營運單位決定{zh_status}這筆違規紀錄。理由：{entry.text}",
        en=f"The operator decided: the violation is {en_status}. Reason: {entry.text}",
        link=PAGE.format(id=violation.id),
        now=now,
    )
    return entry


def counted_against(db: Session, company_id: int) -> list[Violation]:
    """The company's violations that count (recorded or upheld), oldest first."""
    return list(
        db.scalars(
            select(Violation)
            .where(Violation.company_id == company_id, Violation.status.in_(list(COUNTED)))
            .order_by(Violation.id)
        )
    )


def may_read(db: Session, violation: Violation, username: str, *, operator: bool) -> bool:
    return operator or username in lifecycle.members_of(db, violation.project_id)


def readable(db: Session, username: str, *, operator: bool) -> list[Violation]:
    """Every violation for operators; a member's, those of the projects they belong to."""
    query = select(Violation).order_by(Violation.id.desc())
    if not operator:
        mine = select(Membership.project_id).join(Account).where(Account.username == username)
        query = query.where(Violation.project_id.in_(mine))
    return list(db.scalars(query))


# ---- sanctions' states -----------------------------------------------------------------------


def sanctions_of(db: Session, violation_id: int) -> list[Sanction]:
    return list(
        db.scalars(
            select(Sanction).where(Sanction.violation_id == violation_id).order_by(Sanction.id)
        )
    )


def change_sanction_status(
    db: Session, sanction: Sanction, new: SanctionStatus, *, actor: str, reason: str, now: datetime
) -> None:
    kind, old = SanctionKind(sanction.kind), SanctionStatus(sanction.status)
    if new not in SANCTION_TRANSITIONS.get((kind, old), frozenset()):
        raise Conflict(
            f"處分不能從「{STATUS_NAMES[old][0]}」改為「{STATUS_NAMES[new][0]}」",
            f"a {kind} sanction cannot go from {old} to {new}",
        )
    reason = required_text(reason, "reason", "請填寫原因", "a reason is required")
    sanction.status = new
    sanction.ended_at, sanction.ended_by, sanction.end_reason = now, actor, reason
    audit.record(
        db,
        actor=actor,
        action="sanction.status",
        subject_type="sanction",
        subject_id=sanction.id,
        at=now,
        kind=kind.value,
        old=old.value,
        new=new.value,
        reason=reason,
    )


def bar_for_round(
    db: Session, business_number: str, round_: Round, application: Application, *, now
) -> Sanction | None:
    """The bar that keeps the company with ``business_number`` out of ``round_``, or None.

    A bar applies to the first round that opened after it was imposed in which the company
    has an application: it is used up on that round the first time it is met (recorded,
    audited, the company told) and keeps every application of the company in that round
    out; later rounds are open to the company again."""
    company = db.scalar(select(Company).where(Company.business_number == business_number))
    if company is None:
        return None
    bars = select(Sanction).where(
        Sanction.company_id == company.id, Sanction.kind == SK.BAR_NEXT_ROUND
    )
    used_here = db.scalar(bars.where(Sanction.status == SS.USED, Sanction.round_id == round_.id))
    if used_here is not None:
        return used_here
    waiting = db.scalar(
        bars.where(Sanction.status == SS.ACTIVE, Sanction.imposed_at < round_.opens_at)
        .order_by(Sanction.id)
        .limit(1)
    )
    if waiting is None:
        return None
    change_sanction_status(
        db,
        waiting,
        SS.USED,
        actor="applications",
        reason=f"申請案 {application.id} 於梯次「{round_.name}」/ application {application.id} "
        f"in round {round_.name}",
        now=now,
    )
    waiting.round_id, waiting.application_id = round_.id, application.id
    tell(
        db,
        db.get(Project, waiting.project_id),
        f"sanction-{waiting.id}-used",
        subject=f"停權申請資格 / barred from round {round_.name}",
        zh=f"貴公司因違規紀錄 #{waiting.violation_id} 停權下次申請資格一次：本梯次「{round_.name}」"
        f"的申請案不予受理，之後的梯次可再申請。",
        en=f"For violation #{waiting.violation_id} your company is barred from the next round "
        f"once: its applications to round {round_.name} are not accepted; later rounds are "
        f"open again.",
        link=PAGE.format(id=waiting.violation_id),
        now=now,
    )
    return waiting


def bar_message(bar: Sanction) -> tuple[str, str]:
    return (
        f"貴公司因違反平台使用規範（違規紀錄 #{bar.violation_id}），停權本梯次申請資格一次，"
        "本梯次的申請案不予受理",
        f"your company is barred from this round once for violating the rules of use "
        f"(violation #{bar.violation_id}); its applications to this round are not accepted",
    )


# ---- evidence --------------------------------------------------------------------------------
# What the platform recorded, cited by audit event: connections refused from banned regions
# (``network.record_refusal``) and scans of the members' storage (``model_scans``).
REFUSALS, SCANS = "refusals", "scans"


def cited_events(db: Session) -> dict[int, int]:
    """Audit events that a violation (not withdrawn) cites: event id → violation id."""
    cited = {}
    for violation_id, evidence in db.execute(
        select(Violation.id, Violation.evidence).where(
            Violation.kind.in_([ViolationKind.BANNED_REGION, ViolationKind.BANNED_MODEL]),
            Violation.status != V.WITHDRAWN,
        )
    ):
        parsed = json.loads(evidence)
        for key in (REFUSALS, SCANS):
            for item in parsed.get(key, []):
                cited[int(item["audit_event_id"])] = violation_id
    return cited


def _refusal(event: AuditEvent) -> dict:
    detail = json.loads(event.detail)
    return {
        "audit_event_id": event.id,
        "at": taipei(event.at).isoformat(),
        "username": detail.get("username"),
        "address": detail.get("address"),
        "country": detail.get("country"),
        "attempt": detail.get("attempt"),
        "company_ids": detail.get("company_ids", []),
        "companies": detail.get("companies", []),
    }


def _scan(event: AuditEvent) -> dict:
    detail = json.loads(event.detail)
    return {
        "audit_event_id": event.id,
        "at": taipei(event.at).isoformat(),
        "username": event.subject_id,
        "project_ids": detail.get("project_ids", []),
        "companies": detail.get("companies", []),
        "home": detail.get("home"),
        "findings": detail.get("findings", []),
    }


def recorded_refusals(db: Session, *, limit: int = 200) -> list[dict]:
    """Connections refused from banned regions, newest first, each with the violation that
    cites it (None while no operator has made it one)."""
    cited = cited_events(db)
    events = db.scalars(
        select(AuditEvent)
        .where(AuditEvent.action == BANNED_REGION_ACTION)
        .order_by(AuditEvent.id.desc())
        .limit(limit)
    )
    return [_refusal(e) | {"violation_id": cited.get(e.id)} for e in events]


def flagged_scans(db: Session) -> list[dict]:
    """Each member's latest scan that found banned models, with the violation citing it."""
    cited = cited_events(db)
    ids = [scan.event_id for scan in model_scans.latest_scans(db) if scan.flagged]
    events = db.scalars(select(AuditEvent).where(AuditEvent.id.in_(ids)).order_by(AuditEvent.id))
    return [_scan(e) | {"violation_id": cited.get(e.id)} for e in events]


def _cite(db: Session, event_ids: list[int], action: str, field: str) -> list[AuditEvent]:
    """The audit events to cite: each one of ``action``, none cited already."""
    ids = sorted({int(i) for i in event_ids})
    if not ids:
        raise RegisterError("請選擇要列為證據的紀錄", "choose the records to cite", field=field)
    events = list(
        db.scalars(
            select(AuditEvent)
            .where(AuditEvent.id.in_(ids), AuditEvent.action == action)
            .order_by(AuditEvent.id)
        )
    )
    missing = sorted(set(ids) - {e.id for e in events})
    if missing:
        raise RegisterError(
            f"這些不是可引用的紀錄：{missing}", f"not records of this kind: {missing}", field=field
        )
    cited = cited_events(db)
    again = {i: cited[i] for i in ids if i in cited}
    if again:
        raise Conflict(f"這些紀錄已列入違規紀錄：{again}", f"already cited by violations: {again}")
    return events


def _one_project(db: Session, candidates: list[set[int]], project_id: int | None) -> Project:
    """The project the cited records have in common: the one named, or the only one."""
    common = set.intersection(*candidates)
    if project_id is not None:
        if project_id not in common:
            raise RegisterError(
                "這些紀錄不屬於該計畫", "these records are not of that project", field="project_id"
            )
        common = {project_id}
    if len(common) != 1:
        raise RegisterError(
            "這些紀錄對應到不只一個計畫（或沒有共同的計畫），請指定計畫",
            "these records belong to several projects (or none in common): name the project",
            field="project_id",
        )
    return db.get(Project, common.pop())


def from_refusals(
    db: Session, event_ids: list[int], *, project_id: int | None = None
) -> tuple[Project, dict]:
    """The project and evidence of a banned-region violation made of recorded refusals of
    members of that project."""
    refusals = [_refusal(e) for e in _cite(db, event_ids, BANNED_REGION_ACTION, REFUSALS)]
    candidates = [
        set(
            db.scalars(
                select(Project.id)
                .join(Membership)
                .join(Account)
                .where(Account.username == r["username"], Project.company_id.in_(r["company_ids"]))
            )
        )
        for r in refusals
    ]
    project = _one_project(db, candidates, project_id)
    return project, {"source": "network-refusals", REFUSALS: refusals}


def from_scans(
    db: Session, event_ids: list[int], *, project_id: int | None = None
) -> tuple[Project, dict]:
    """The project and evidence of a banned-model violation made of storage scans with
    findings (of members of that project)."""
    scans = [_scan(e) for e in _cite(db, event_ids, model_scans.SCANNED, SCANS)]
    clean = [s["audit_event_id"] for s in scans if not s["findings"]]
    if clean:
        raise RegisterError(
            f"這些掃描沒有發現禁用模型：{clean}", f"these scans found nothing: {clean}", field=SCANS
        )
    project = _one_project(db, [set(s["project_ids"]) for s in scans], project_id)
    return project, {"source": "storage-scans", SCANS: scans}


def from_application(db: Session, application_id: int) -> tuple[Project, dict]:
    """The banned models an awarded application named (its automatic qualification check)."""
    application = db.get(Application, application_id)
    if application is None or application.project_id is None:
        raise RegisterError(
            "找不到已核定的申請案", "no awarded application with that number",
            field="application_id",
        )  # fmt: skip
    result = db.scalar(
        select(QualificationResult).where(
            QualificationResult.application_id == application.id,
            QualificationResult.criterion == "banned_models",
        )
    )
    findings = json.loads(result.evidence).get("findings", []) if result else []
    if not findings:
        raise RegisterError(
            "這件申請案沒有禁用模型的發現", "the application has no banned-model findings",
            field="application_id",
        )  # fmt: skip
    evidence = {"source": "application", "application_id": application.id, "findings": findings}
    return db.get(Project, application.project_id), evidence


APPLICATION, MANUAL = "application", "manual"
SOURCES = (MANUAL, REFUSALS, SCANS, APPLICATION)


def record_by_operator(
    db: Session,
    operator: Account,
    *,
    source: str,
    summary: str,
    now: datetime,
    project_id: int | None = None,
    kind: str = "",
    evidence: dict | None = None,
    cited: Sequence[int] = (),
    application_id: int | None = None,
) -> Violation:
    """An operator records a violation in one step: from recorded refusals (banned region),
    storage scans or an application's findings (banned model), or by describing it with
    ``evidence`` of their own (any kind, ``project_id`` needed)."""
    require_operator(operator)
    if source == REFUSALS:
        project, evidence = from_refusals(db, list(cited), project_id=project_id)
        kind = ViolationKind.BANNED_REGION
    elif source == SCANS:
        project, evidence = from_scans(db, list(cited), project_id=project_id)
        kind = ViolationKind.BANNED_MODEL
    elif source == APPLICATION:
        if application_id is None:
            raise RegisterError("請填寫申請案編號", "give the application's number", field="application_id")  # fmt: skip
        project, evidence = from_application(db, application_id)
        kind = ViolationKind.BANNED_MODEL
    elif source == MANUAL:
        project = db.get(Project, project_id) if project_id is not None else None
        if project is None:
            raise RegisterError("請選擇計畫", "choose the project", field="project_id")
        evidence = {"source": "operator"} | (evidence or {})
    else:
        raise RegisterError("沒有這種證據來源", f"no such source: {source}", field="source")
    return record(
        db, project, kind, summary=summary, evidence=evidence, actor=operator.username, now=now
    )


# ---- read models -----------------------------------------------------------------------------


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else taipei(moment).isoformat()


def _names(pair: tuple[str, str]) -> dict:
    return {"zh": pair[0], "en": pair[1]}


def sanction_view(sanction: Sanction) -> dict:
    return {
        "id": sanction.id,
        "violation_id": sanction.violation_id,
        "project_id": sanction.project_id,
        "kind": sanction.kind,
        "kind_name": _names(SANCTION_NAMES[SanctionKind(sanction.kind)]),
        "status": sanction.status,
        "status_name": _names(STATUS_NAMES[sanction.status]),
        "reason": sanction.reason,
        "urgent_reason": sanction.urgent_reason,
        "imposed_at": _when(sanction.imposed_at),
        "imposed_by": sanction.imposed_by,
        "ended_at": _when(sanction.ended_at),
        "ended_by": sanction.ended_by,
        "end_reason": sanction.end_reason,
        "round_id": sanction.round_id,
        "application_id": sanction.application_id,
        "purge_id": sanction.purge_id,
    }


def view(db: Session, violation: Violation, *, operator: bool, full: bool = True) -> dict:
    """A violation as its readers see it: internal notes only for operators."""
    project = db.get(Project, violation.project_id)
    summary = {
        "id": violation.id,
        "company": {"id": project.company_id, "name": project.company.name},
        "project": {"id": project.id, "name": project.name, "status": project.status},
        "kind": violation.kind,
        "kind_name": _names(KIND_NAMES[ViolationKind(violation.kind)]),
        "status": violation.status,
        "status_name": _names(STATUS_NAMES[violation.status]),
        "counted": violation.status in COUNTED,
        "summary": violation.summary,
        "recorded_at": _when(violation.recorded_at),
        "recorded_by": violation.recorded_by,
        "decided_at": _when(violation.decided_at),
        "decided_by": violation.decided_by,
        "may_appeal": V.APPEALED in TRANSITIONS[ViolationStatus(violation.status)],
    }
    if not full:
        return summary
    entries = db.scalars(
        select(ViolationEntry)
        .where(ViolationEntry.violation_id == violation.id)
        .order_by(ViolationEntry.id)
    )
    return summary | {
        "evidence": json.loads(violation.evidence),
        "history": [
            {
                "id": e.id,
                "at": _when(e.at),
                "actor": e.actor,
                "kind": e.kind,
                "text": e.text,
                "internal": e.internal,
                "old_status": e.old_status,
                "new_status": e.new_status,
            }
            for e in entries
            if operator or not e.internal
        ],
        "sanctions": [sanction_view(s) for s in sanctions_of(db, violation.id)],
        "company_counted": len(counted_against(db, project.company_id)),
    }
