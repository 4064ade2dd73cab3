"""Sanctions and what they do (rules of use: 本平台得判定暫停現有服務或停權下次申請資格乙次，
累計違規兩次者，列為情節重大；情節重大或急迫者，本平台得逕行刪除涉及違反規定之內容、終止或
解除算力服務).

- **suspend**: the project's service stops (status ``suspended``: the metering pass stops its
  servers, spawns are refused with the reason) until the sanction is lifted.
- **bar_next_round**: the company's next round, once (met by the application service through
  ``violations.bar_for_round``).
- **terminate**: only when the company has two violations that count, or with an urgent reason:
  the project is terminated (servers stopped, access refused), its API keys are revoked, and its
  members' storage is purged only when an operator confirms it, as a second step.

Each sanction's status goes through ``violations.SANCTION_TRANSITIONS``; every step is audited
in the same transaction and mailed to the company's contact person.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit, awards, ledger, lifecycle, projects, violations
from .models import (
    Account,
    Award,
    Project,
    ProjectStatus,
    Purge,
    Sanction,
    SanctionKind,
    SanctionStatus,
    Violation,
    ViolationStatus,
)
from .violations import PAGE, SANCTION_NAMES, Conflict, RegisterError

SK, SS = SanctionKind, SanctionStatus
IN_SERVICE = (ProjectStatus.APPROVED, ProjectStatus.SUSPENDED)


def active_suspension(db: Session, project_id: int) -> Sanction | None:
    """The sanction that keeps the project suspended, if one does."""
    return db.scalar(
        select(Sanction)
        .where(
            Sanction.project_id == project_id,
            Sanction.kind == SK.SUSPEND,
            Sanction.status == SS.ACTIVE,
        )
        .order_by(Sanction.id)
        .limit(1)
    )


def _label(sanction: Sanction) -> tuple[str, str]:
    zh, en = SANCTION_NAMES[SanctionKind(sanction.kind)]
    return f"處分 #{sanction.id}（{zh}）", f"sanction #{sanction.id} ({en})"


def impose(
    db: Session,
    violation: Violation,
    kind: SanctionKind | str,
    operator: Account,
    *,
    reason: str,
    now: datetime,
    urgent_reason: str = "",
) -> Sanction:
    """Impose a sanction for ``violation`` with its effects, in the caller's transaction.
    The caller stops the project's servers at once afterwards (the metering pass would)."""
    violations.require_operator(operator)
    try:
        kind = SanctionKind(kind)
    except ValueError:
        raise RegisterError("沒有這種處分", f"no such sanction: {kind}", field="kind") from None
    if violation.status == ViolationStatus.WITHDRAWN:
        raise Conflict("已撤銷的違規不能處分", "a withdrawn violation carries no sanction")
    reason = violations.required_text(reason, "reason", "請填寫處分理由", "a reason is required")
    urgent_reason = (urgent_reason or "").strip()
    project = ledger.lock_project(db, violation.project_id)
    detail: dict = {}
    if kind in (SK.SUSPEND, SK.TERMINATE) and project.status not in IN_SERVICE:
        raise Conflict(
            f"計畫目前為 {project.status}，沒有服務可以停止",
            f"the project is {project.status}: there is no service to stop",
        )
    if kind is SK.SUSPEND:
        holding = active_suspension(db, project.id)
        if holding is not None:
            raise Conflict(
                f"計畫已因處分 #{holding.id} 停權中", f"already suspended by sanction #{holding.id}"
            )
        if project.status == ProjectStatus.APPROVED:
            projects.change_status(
                db,
                project,
                ProjectStatus.SUSPENDED,
                actor=operator.username,
                reason=f"違規 #{violation.id} 停權：{reason} / suspended for violation "
                f"#{violation.id}: {reason}",
                now=now,
            )
    elif kind is SK.TERMINATE:
        counted = violations.counted_against(db, project.company_id)
        if len(counted) < violations.SERIOUS_AT and not urgent_reason:
            raise RegisterError(
                f"公司累計 {len(counted)} 筆違規；終止需累計兩筆，或註明急迫的理由",
                f"the company has {len(counted)} violation(s) that count: termination needs "
                f"two, or an urgent reason",
                field="urgent_reason",
            )
        projects.change_status(
            db,
            project,
            ProjectStatus.TERMINATED,
            actor=operator.username,
            reason=f"違規 #{violation.id} 終止：{reason} / terminated for violation "
            f"#{violation.id}: {reason}",
            now=now,
        )
        award = db.scalar(select(Award).where(Award.project_id == project.id))
        revoked = awards.revoke_api_key(db, operator, award, now=now) if award else 0
        detail = {"counted_violations": [v.id for v in counted], "api_keys_revoked": revoked}
    sanction = Sanction(
        violation_id=violation.id,
        company_id=project.company_id,
        project_id=project.id,
        kind=kind,
        status=SS.ACTIVE,
        reason=reason,
        urgent_reason=urgent_reason if kind is SK.TERMINATE else "",
        imposed_at=now,
        imposed_by=operator.username,
    )
    db.add(sanction)
    db.flush()
    audit.record(
        db,
        actor=operator.username,
        action="sanction.impose",
        subject_type="sanction",
        subject_id=sanction.id,
        at=now,
        kind=kind.value,
        violation_id=violation.id,
        project_id=project.id,
        reason=reason,
        urgent_reason=sanction.urgent_reason,
        **detail,
    )
    zh, en = _imposed_text(sanction, project)
    zh_label, en_label = _label(sanction)
    violations.tell(
        db,
        project,
        f"sanction-{sanction.id}-imposed",
        subject=f"{zh_label} / {en_label}",
        zh=f"{zh}\n理由：{reason}",
        en=f"{en}\nReason: {reason}",
        link=PAGE.format(id=violation.id),
        now=now,
        operators=kind is SK.TERMINATE,
    )
    return sanction


def _imposed_text(sanction: Sanction, project: Project) -> tuple[str, str]:
    kind = SanctionKind(sanction.kind)
    if kind is SK.SUSPEND:
        return (
            f"依違規紀錄 #{sanction.violation_id}，計畫「{project.name}」暫停算力服務：執行中的"
            "伺服器將停止，解除前無法啟動。",
            f"For violation #{sanction.violation_id} the service of {project.name} is "
            "suspended: its running servers stop, and none can start until it is lifted.",
        )
    if kind is SK.BAR_NEXT_ROUND:
        return (
            f"依違規紀錄 #{sanction.violation_id}，貴公司停權下次申請資格一次：下一個梯次的"
            "申請案將不予受理。",
            f"For violation #{sanction.violation_id} your company is barred from the next "
            "round once: its applications to that round will not be accepted.",
        )
    return (
        f"依違規紀錄 #{sanction.violation_id}，計畫「{project.name}」的算力服務已終止：伺服器"
        "已停止，使用權限與 API 金鑰已撤銷；儲存空間的內容將於營運單位確認後清除。",
        f"For violation #{sanction.violation_id} the service of {project.name} is "
        "terminated: its servers are stopped, access and API keys are revoked, and its "
        "storage will be purged once the operator confirms it.",
    )


def lift(db: Session, sanction: Sanction, operator: Account, *, reason: str, now: datetime) -> None:
    """Take back a suspension or an unused bar. A project resumes when no other suspension
    holds it (and it is still suspended: its window may have closed meanwhile)."""
    violations.require_operator(operator)
    project = ledger.lock_project(db, sanction.project_id)
    violations.change_sanction_status(
        db, sanction, SS.LIFTED, actor=operator.username, reason=reason, now=now
    )
    if (
        sanction.kind == SK.SUSPEND
        and project.status == ProjectStatus.SUSPENDED
        and active_suspension(db, project.id) is None
    ):
        projects.change_status(
            db,
            project,
            ProjectStatus.APPROVED,
            actor=operator.username,
            reason=f"解除處分 #{sanction.id}：{sanction.end_reason} / sanction #{sanction.id} "
            f"lifted: {sanction.end_reason}",
            now=now,
        )
    zh_label, en_label = _label(sanction)
    violations.tell(
        db,
        project,
        f"sanction-{sanction.id}-lifted",
        subject=f"解除{zh_label} / {en_label} lifted",
        zh=f"營運單位解除{zh_label}。理由：{sanction.end_reason}",
        en=f"The operator lifted {en_label}. Reason: {sanction.end_reason}",
        link=PAGE.format(id=sanction.violation_id),
        now=now,
    )


def confirm_purge(
    db: Session,
    sanction: Sanction,
    operator: Account,
    purger: lifecycle.StoragePurger | None,
    *,
    reason: str,
    now: datetime,
) -> Purge:
    """The second step of a termination: the operator confirms, and the members' storage is
    purged (with the record of what was deleted). Refused while a server of the project is
    still metered, or where the service has no storage to purge."""
    violations.require_operator(operator)
    if sanction.kind != SK.TERMINATE:
        raise Conflict("只有終止服務的處分需要確認清除", "only a termination purges storage")
    if purger is None:
        raise Conflict(
            "本服務未設定儲存空間（homes_dir 或 volumes_namespace），無法清除",
            "this service has no storage to purge (homes_dir or volumes_namespace)",
        )
    project = ledger.lock_project(db, sanction.project_id)
    if lifecycle.still_metered(db, project.id):
        raise Conflict(
            "計畫仍有伺服器在停止中，請稍後再確認", "a server of the project is still stopping"
        )
    violations.change_sanction_status(
        db, sanction, SS.COMPLETED, actor=operator.username, reason=reason, now=now
    )
    record = lifecycle.purge_project(db, purger, project, actor=operator.username, now=now)
    db.flush()
    sanction.purge_id = record.id
    zh_label, en_label = _label(sanction)
    violations.tell(
        db,
        project,
        f"sanction-{sanction.id}-purged",
        subject=f"{zh_label}：儲存空間已清除 / {en_label}: storage purged",
        zh=f"營運單位確認清除計畫「{project.name}」的儲存空間（共 {record.bytes_deleted} 位元組）。",
        en=f"The operator confirmed the purge of the storage of {project.name} "
        f"({record.bytes_deleted} bytes).",
        link=PAGE.format(id=sanction.violation_id),
        now=now,
    )
    return record


def get(db: Session, sanction_id: int) -> Sanction:
    sanction = db.get(Sanction, sanction_id)
    if sanction is None:
        raise violations.NotFound("沒有這個處分", "no such sanction")
    return sanction
