"""Project status: every change goes through one table of allowed transitions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from . import audit
from .models import Project, ProjectStatus

S = ProjectStatus
ALLOWED_TRANSITIONS: dict[ProjectStatus, frozenset[ProjectStatus]] = {
    S.PENDING: frozenset({S.APPROVED, S.REJECTED}),
    S.APPROVED: frozenset({S.SUSPENDED, S.CLOSED, S.TERMINATED}),
    S.SUSPENDED: frozenset({S.APPROVED, S.CLOSED, S.TERMINATED}),
    S.REJECTED: frozenset(),
    S.CLOSED: frozenset(),
    S.TERMINATED: frozenset(),
}


class TransitionNotAllowed(ValueError):
    pass


def change_status(
    db: Session,
    project: Project,
    new_status: ProjectStatus,
    *,
    actor: str,
    reason: str,
    now: datetime,
) -> None:
    old = ProjectStatus(project.status)
    if new_status not in ALLOWED_TRANSITIONS[old]:
        raise TransitionNotAllowed(
            f"計畫狀態不能從 {old} 改為 {new_status} / a project cannot go from {old} to {new_status}"
        )
    if not reason.strip():
        raise ValueError("請填寫原因 / a reason is required")
    project.status = new_status
    audit.record(
        db,
        actor=actor,
        action="project.status",
        subject_type="project",
        subject_id=project.id,
        at=now,
        old=old.value,
        new=new_status.value,
        reason=reason,
    )
