"""Who may do what: the decision that the hub's authenticator and spawner ask for."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from . import audit, awards, validation
from .models import Account, Category, Membership, Project, ProjectStatus

OPERATORS_GROUP = "operators"
REVIEWERS_GROUP = "reviewers"
GPU_USERS_GROUP = "gpu-users"


@dataclass(frozen=True)
class Refusal:
    code: str
    zh: str
    en: str

    @property
    def message(self) -> str:
        return f"{self.zh} / {self.en}"


NOT_A_MEMBER = Refusal(
    "not-a-member",
    "你的帳號尚未加入任何計畫，無法啟動 GPU 伺服器。",
    "Your account is not a member of any project, so it cannot start GPU servers.",
)
PENDING = Refusal(
    "application-pending",
    "你的公司申請案尚在審查中，核定後才能啟動 GPU 伺服器。",
    "Your company's application is still under review; servers can start once it is approved.",
)
REJECTED = Refusal(
    "application-rejected",
    "你的公司申請案未獲核定。",
    "Your company's application was not approved.",
)
SUSPENDED = Refusal(
    "project-suspended",
    "你的計畫已被營運單位停權，暫時無法使用 GPU。",
    "Your project is suspended by the operator; GPUs cannot be used for now.",
)
CLOSED = Refusal(
    "project-closed",
    "你的計畫已結束。",
    "Your project has ended.",
)
TERMINATED = Refusal(
    "project-terminated",
    "你的計畫因違反平台使用規範，已被營運單位終止算力服務。",
    "Your project's service was terminated by the operator for violating the rules of use.",
)
WINDOW_NOT_OPEN = Refusal(
    "window-not-open",
    "你的計畫使用期間尚未開始。",
    "Your project's usage window has not opened yet.",
)
WINDOW_ENDED = Refusal(
    "window-ended",
    "你的計畫使用期間已結束。",
    "Your project's usage window has ended.",
)

_STATUS_REFUSALS = {
    ProjectStatus.PENDING: PENDING,
    ProjectStatus.REJECTED: REJECTED,
    ProjectStatus.SUSPENDED: SUSPENDED,
    ProjectStatus.CLOSED: CLOSED,
    ProjectStatus.TERMINATED: TERMINATED,
}


@dataclass
class AccessDecision:
    username: str
    groups: list[str] = field(default_factory=list)
    project: Project | None = None
    refusal: Refusal | None = None

    @property
    def may_spawn(self) -> bool:
        return self.refusal is None and self.project is not None


def project_refusal(project: Project, now: datetime) -> Refusal | None:
    """Why members of ``project`` may not run servers now, or None when they may."""
    status = ProjectStatus(project.status)
    if status in (ProjectStatus.PENDING, ProjectStatus.REJECTED):
        return _STATUS_REFUSALS[status]
    # an ended window says so, whether the project is still approved, suspended, or
    # already closed by the end-of-window job
    if project.window_end is not None and now >= project.window_end:
        return WINDOW_ENDED
    if status is not ProjectStatus.APPROVED:
        return _STATUS_REFUSALS[status]
    if project.window_start is None or now < project.window_start:
        return WINDOW_NOT_OPEN
    if project.window_end is None:
        return WINDOW_ENDED
    return None


def decide(db: Session, username: str, now: datetime) -> AccessDecision:
    """A person may start servers when a project of theirs is approved, inside its
    window and not suspended. With several such projects, the one approved first
    (lowest id) is charged; otherwise the refusal shown is that of their latest project."""
    account = db.scalar(
        select(Account)
        .where(Account.username == username)
        .options(selectinload(Account.memberships).selectinload(Membership.project))
    )
    decision = AccessDecision(username)
    if account is None:
        decision.refusal = NOT_A_MEMBER
        return decision
    if account.is_operator:
        decision.groups.append(OPERATORS_GROUP)
    if account.is_reviewer:
        decision.groups.append(REVIEWERS_GROUP)
    projects = sorted((m.project for m in account.memberships), key=lambda p: p.id)
    if not projects:
        decision.refusal = NOT_A_MEMBER
        return decision
    for project in projects:
        if project_refusal(project, now) is None:
            decision.project = project
            decision.groups.append(GPU_USERS_GROUP)
            return decision
    decision.project = projects[-1]
    decision.refusal = project_refusal(projects[-1], now)
    return decision


def is_member(db: Session, project_id: int, username: str) -> bool:
    return (
        db.scalar(
            select(Membership.id)
            .join(Account)
            .where(Membership.project_id == project_id, Account.username == username)
        )
        is not None
    )


def trusted_networks_of(db: Session, project: Project | None) -> list[str]:
    """The trusted fixed addresses (CIDR strings) that a training project's members must
    connect from, as recorded with its award; the hub enforces them (``network``)."""
    if project is None or project.category != Category.TRAINING:
        return []
    return awards.trusted_networks(db, project.id)


def link_sign_in(db: Session, username: str, email: str, *, now: datetime) -> Account:
    """Tie a hub sign-in to the person's account by the e-mail address the identity provider
    vouches for. An award adds the lead, the contact and trainees by e-mail before they ever
    sign in, under a name made from the address (``awards.username_for_email``): at the
    person's first sign-in that account takes their hub username, or, when they already had
    an account (they applied before the award), its memberships move to that account. An
    account named by someone else keeps its own address: one address, one person."""
    address = email.strip()
    if validation.check_email(address) is not None:
        address = ""  # a provider that puts a bare name in the claim vouches for no address
    account = db.scalar(select(Account).where(Account.username == username))
    holder = None
    if address:
        holder = db.scalar(
            select(Account)
            .where(func.lower(Account.email) == address.lower(), Account.username != username)
            .order_by(Account.id)
            .limit(1)
        )
    placeholder = holder is not None and holder.username == awards.username_for_email(address)
    if account is None and placeholder:
        old_name, holder.username = holder.username, username
        audit.record(
            db, actor=username, action="account.linked", subject_type="account",
            subject_id=username, at=now, old=old_name, new=username, email=address,
        )  # fmt: skip
        return holder
    if account is None:
        account = Account(username=username, email="" if holder else address, created_at=now)
        db.add(account)
        db.flush()
    elif address and not account.email and (holder is None or placeholder):
        account.email = address
    if placeholder:
        moved = _move_memberships(db, holder, account)
        audit.record(
            db, actor=username, action="account.merged", subject_type="account",
            subject_id=username, at=now, merged=holder.username, email=address,
            projects=moved,
        )  # fmt: skip
        db.delete(holder)
    return account


def _move_memberships(db: Session, source: Account, target: Account) -> list[int]:
    held = {m.project_id for m in target.memberships}
    moved = []
    for membership in list(source.memberships):
        if membership.project_id in held:
            db.delete(membership)
        else:
            membership.account_id = target.id
            moved.append(membership.project_id)
    db.flush()
    db.expire(source, ["memberships"])
    db.expire(target, ["memberships"])
    return moved


def account_of(db: Session, username: str, *, now: datetime) -> Account:
    """The account of a person signed in to the hub, made at their first visit: a company's
    first step (an application) comes before it is a member of anything."""
    account = db.scalar(select(Account).where(Account.username == username))
    if account is None:
        account = Account(username=username, created_at=now)
        db.add(account)
        db.flush()
    return account
