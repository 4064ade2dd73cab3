"""Awards: tier, points on the ledger, the window from the notice date, the project and its
members, trusted networks (training) and the company's API key (inference).

Accounts for the lead, the contact person and trainees are found by e-mail (case-insensitive,
the oldest account with that address) or created with a username derived from the address
(:func:`username_for_email`). An API key is ``aip_`` and 43 URL-safe characters of a 256-bit
random token; only its SHA-256 is stored (a slow hash adds nothing against a 256-bit secret
and would make every API request slow), compared by a unique-index look-up.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import applications as apps
from . import audit, ledger, projects, validation
from .models import (
    Account,
    ApiKey,
    Application,
    ApplicationStatus,
    Award,
    Category,
    Company,
    Membership,
    Project,
    ProjectStatus,
)
from .timewindow import last_second, taipei, window_for_notice

AWARD_NOTICE = "application-award"
KEY_PREFIX = "aip_"


@dataclass(frozen=True)
class AwardSettings:
    tier_points: dict[str, int] = field(
        default_factory=lambda: {"L1": 1000, "L2": 2000, "L3": 6000}
    )
    window_months: int = 3


@dataclass
class AwardResult:
    award: Award
    project: Project
    api_key: str | None = None  # inference: shown once, here, and never again


# ---- people ----------------------------------------------------------------------------------


def username_for_email(email: str) -> str:
    """Deterministic: the local part lowercased, runs of anything but a-z, 0-9 made one
    hyphen (at most 40 characters), then a hyphen and the first 8 hex digits of the SHA-256
    of the whole lowercased address, so that two addresses never share a name in practice:
    ``Lead.Lin@startup.example.tw`` → ``lead-lin-3f1c…``."""
    address = email.strip().lower()
    local = re.sub(r"[^a-z0-9]+", "-", address.split("@", 1)[0]).strip("-")[:40] or "user"
    return f"{local}-{hashlib.sha256(address.encode()).hexdigest()[:8]}"


def account_for_email(db: Session, email: str, display_name: str, *, now: datetime) -> Account:
    address = email.strip()
    existing = db.scalar(
        select(Account)
        .where(func.lower(Account.email) == address.lower())
        .order_by(Account.id)
        .limit(1)
    )
    if existing is not None:
        return existing
    # the person may have visited under the name made from the address before the award
    # (the sign-in side computes it too): that account is theirs
    named = db.scalar(
        select(Account).where(Account.username == username_for_email(address), Account.email == "")
    )
    if named is not None:
        named.email = address
        return named
    account = Account(
        username=username_for_email(address),
        email=address,
        display_name=display_name,
        created_at=now,
    )
    db.add(account)
    db.flush()
    return account


def _add_member(db: Session, project: Project, account: Account, role: str, now: datetime) -> bool:
    """Whether the account became a member (False: it already was one)."""
    exists = db.scalar(
        select(Membership).where(
            Membership.project_id == project.id, Membership.account_id == account.id
        )
    )
    if exists is not None:
        return False
    db.add(Membership(project=project, account=account, role=role, created_at=now))
    db.flush()
    return True


# ---- trusted networks ----------------------------------------------------------------------


def parse_networks(values: list[str]) -> list[str]:
    """IPv4 or IPv6 addresses or CIDR blocks, normalised (``203.0.113.7`` → ``203.0.113.7/32``);
    host bits set in a block are refused, since they usually mean a typing mistake."""
    result, bad = [], []
    for value in values:
        try:
            result.append(str(ipaddress.ip_network(str(value).strip(), strict=True)))
        except ValueError:
            bad.append(str(value))
    if bad:
        raise apps.ApplicationError(
            f"IP 位址或網段格式不正確：{', '.join(bad)}",
            f"not an IP address or CIDR block: {', '.join(bad)}",
            field="trusted_networks",
        )
    return list(dict.fromkeys(result))


def set_trusted_networks(
    db: Session, operator: Account, award: Award, networks: list[str], *, now: datetime
) -> list[str]:
    apps.require_operator(operator)
    project = db.get(Project, award.project_id)
    if project.category != Category.TRAINING:
        raise apps.StateConflict("僅訓練類需登錄固定 IP", "only training uses trusted networks")
    parsed = parse_networks(networks)
    if not parsed:
        raise apps.ApplicationError(
            "請至少登錄一個固定 IP", "give at least one trusted address", field="trusted_networks"
        )
    old = json.loads(award.trusted_networks)
    award.trusted_networks = json.dumps(parsed)
    audit.record(
        db,
        actor=operator.username,
        action="award.trusted_networks",
        subject_type="project",
        subject_id=project.id,
        at=now,
        old=old,
        new=parsed,
    )
    return parsed


def trusted_networks(db: Session, project_id: int) -> list[str]:
    """The project's trusted networks, for the enforcement (``access.trusted_networks_of``)."""
    value = db.scalar(select(Award.trusted_networks).where(Award.project_id == project_id))
    return json.loads(value) if value else []


# ---- API keys ------------------------------------------------------------------------------


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_key(db: Session, award: Award, company_id: int, actor: str, now: datetime) -> str:
    token = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits
    db.add(
        ApiKey(
            award_id=award.id,
            company_id=company_id,
            key_hash=hash_key(token),
            prefix=token[:12],
            created_by=actor,
            created_at=now,
        )
    )
    db.flush()
    return token


def _active_keys(db: Session, award: Award) -> list[ApiKey]:
    return list(
        db.scalars(select(ApiKey).where(ApiKey.award_id == award.id, ApiKey.revoked_at.is_(None)))
    )


def active_key(db: Session, award: Award) -> ApiKey | None:
    """The company's key in use (at most one: a new key revokes the old)."""
    return next(iter(_active_keys(db, award)), None)


def members_of(db: Session, project_id: int) -> list[dict]:
    """The project's members in the order they joined: username, e-mail and role."""
    rows = db.execute(
        select(Account.username, Account.email, Membership.role)
        .join(Membership, Membership.account_id == Account.id)
        .where(Membership.project_id == project_id)
        .order_by(Membership.id)
    )
    return [{"username": username, "email": email, "role": role} for username, email, role in rows]


def _role(db: Session, award: Award, actor: Account) -> str | None:
    """The actor's role in the awarded project (lead, contact, trainee), or None."""
    return db.scalar(
        select(Membership.role).where(
            Membership.project_id == award.project_id, Membership.account_id == actor.id
        )
    )


def manages(db: Session, actor: Account, award: Award) -> bool:
    """The company's side of an award is managed by its lead and contact, and operators."""
    return actor.is_operator or _role(db, award, actor) in ("lead", "contact")


def _check_emails(emails: list[str], field: str) -> None:
    bad = [e for e in emails if validation.check_email(e)]
    if bad:
        raise apps.ApplicationError(
            f"學員電子郵件格式不正確：{', '.join(bad)}",
            f"not e-mail addresses: {bad}",
            field=field,
        )


def takes_trainees(project: Project) -> bool:
    return project.status in (ProjectStatus.APPROVED, ProjectStatus.SUSPENDED)


def add_trainees(
    db: Session, actor: Account, award: Award, emails: list[str], *, now: datetime
) -> list[str]:
    """Trainees join an awarded project after the award (a company's team changes): the
    lead, the contact or an operator adds them by e-mail, as the award does. The usernames
    added; someone already a member is left as they are."""
    if not manages(db, actor, award):
        raise apps.PermissionDenied(
            "只有計畫主持人、聯絡人或營運單位可以新增學員",
            "only the project lead, the contact person or an operator may add trainees",
        )
    addresses = [e.strip() for e in emails if e.strip()]
    if not addresses:
        raise apps.ApplicationError(
            "請至少填一個電子郵件", "give at least one e-mail address", field="trainees"
        )
    _check_emails(addresses, "trainees")
    project = db.get(Project, award.project_id)
    if not takes_trainees(project):
        raise apps.StateConflict(
            "計畫已結束，不能新增學員", "the project has ended: no trainees can be added"
        )
    added = []
    for address in addresses:
        account = account_for_email(db, address, "", now=now)
        if _add_member(db, project, account, "trainee", now):
            added.append(account.username)
    audit.record(
        db,
        actor=actor.username,
        action="award.trainees_added",
        subject_type="project",
        subject_id=project.id,
        at=now,
        emails=addresses,
        added=added,
    )
    return added


def regenerate_api_key(db: Session, actor: Account, award: Award, *, now: datetime) -> str:
    """The company's lead or contact (or an operator) replaces the key: the old one stops
    working at once; the new one is returned once."""
    if not manages(db, actor, award):
        raise apps.PermissionDenied(
            "只有計畫主持人、聯絡人或營運單位可以更換金鑰",
            "only the project lead, the contact person or an operator may replace the key",
        )
    if db.get(Project, award.project_id).category != Category.INFERENCE:
        raise apps.StateConflict("僅推論類使用 API 金鑰", "only inference uses an API key")
    for key in _active_keys(db, award):
        key.revoked_at, key.revoked_by = now, actor.username
    company_id = db.get(Project, award.project_id).company_id
    token = _new_key(db, award, company_id, actor.username, now)
    audit.record(
        db,
        actor=actor.username,
        action="api_key.regenerate",
        subject_type="project",
        subject_id=award.project_id,
        at=now,
        prefix=token[:12],
    )
    return token


def revoke_api_key(db: Session, operator: Account, award: Award, *, now: datetime) -> int:
    apps.require_operator(operator)
    keys = _active_keys(db, award)
    for key in keys:
        key.revoked_at, key.revoked_by = now, operator.username
    audit.record(
        db,
        actor=operator.username,
        action="api_key.revoke",
        subject_type="project",
        subject_id=award.project_id,
        at=now,
        revoked=len(keys),
    )
    return len(keys)


def verify_api_key(db: Session, token: str) -> ApiKey | None:
    """The active key ``token`` is, or None."""
    if not token.startswith(KEY_PREFIX):
        return None
    return db.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(token), ApiKey.revoked_at.is_(None))
    )


# ---- reading an award -----------------------------------------------------------------------


def award_of(db: Session, project_id: int, *, lock: bool = False) -> Award | None:
    """The project's award; ``lock`` serialises changes to it (two regenerations at once
    would otherwise leave two active keys)."""
    query = select(Award).where(Award.project_id == project_id)
    return db.scalar(query.with_for_update() if lock else query)


def view(db: Session, actor: Account, project_id: int) -> dict:
    """A project's award as its members and the operators see it: tier, points, window,
    members, trusted networks and the active API key's prefix (never a key)."""
    record = award_of(db, project_id)
    if record is None or not (actor.is_operator or _role(db, record, actor)):
        raise apps.PermissionDenied(
            "找不到核定資料或無權查看", "no such award, or not yours to see"
        )
    key = active_key(db, record)
    return {
        "application_id": record.application_id,
        "project_id": record.project_id,
        "category": db.get(Project, project_id).category,
        "tier": record.tier,
        "points": record.points,
        "window_start": record.window_start,
        "window_end": record.window_end,
        "trusted_networks": json.loads(record.trusted_networks),
        "members": members_of(db, project_id),
        "api_key": None if key is None else {"prefix": key.prefix, "created_at": key.created_at},
        "awarded_by": record.awarded_by,
        "created_at": record.created_at,
    }


# ---- the award -----------------------------------------------------------------------------


def award(
    db: Session,
    operator: Account,
    application: Application,
    *,
    notice_date: date,
    now: datetime,
    trusted: list[str] | None = None,
    trainees: list[str] = (),
    settings: AwardSettings = AwardSettings(),
) -> AwardResult:
    """A selected application becomes an approved project with its points, window and
    members, in one transaction; the award notice goes to the outbox."""
    apps.require_operator(operator)
    if application.status != ApplicationStatus.SELECTED:
        raise apps.TransitionNotAllowed(
            "只有入選的申請案可以核定", "only a selected application can be awarded"
        )
    tier = application.tier
    points = settings.tier_points[tier]
    category = Category(application.category)
    networks = parse_networks(trusted or [])
    if category is Category.TRAINING and not networks:
        raise apps.ApplicationError(
            "訓練類請登錄公司的固定 IP",
            "training needs the company's trusted fixed addresses",
            field="trusted_networks",
        )
    _check_emails(list(trainees), "trainees")
    docs = apps.documents(application)
    company = db.scalar(
        select(Company).where(Company.business_number == application.business_number)
    )
    if company is None:
        company = Company(
            name=application.company_name,
            business_number=application.business_number,
            created_at=now,
        )
        db.add(company)
    start, end = window_for_notice(notice_date, settings.window_months)
    project = Project(
        company=company,
        name=str(docs["proposal"].get("title") or application.company_name)[:200],
        category=category,
        status=ProjectStatus.PENDING,
        tier=tier,
        window_start=start,
        window_end=end,
        created_at=now,
    )
    db.add(project)
    db.flush()
    projects.change_status(
        db,
        project,
        ProjectStatus.APPROVED,
        actor=operator.username,
        reason=f"申請案 {application.id} 核定 {tier} / application {application.id} awarded {tier}",
        now=now,
    )
    ledger.grant(
        db,
        project,
        points * 1000,
        actor=operator.username,
        reason=f"{tier} 核定點數 {points} 點（申請案 {application.id}） / tier {tier} award of "
        f"{points} points (application {application.id})",
        now=now,
    )
    record = Award(
        application_id=application.id,
        project_id=project.id,
        tier=tier,
        points=points,
        notice_date=start,
        window_start=start,
        window_end=end,
        trusted_networks=json.dumps(networks),
        awarded_by=operator.username,
        created_at=now,
    )
    db.add(record)
    db.flush()
    people = docs["company"]
    for role in ("lead", "contact"):
        person = people.get(role) or {}
        account = account_for_email(db, person["email"], person.get("name", ""), now=now)
        _add_member(db, project, account, role, now)
    for email in trainees:
        _add_member(db, project, account_for_email(db, email, "", now=now), "trainee", now)
    api_key = None
    if category is Category.INFERENCE:
        api_key = _new_key(db, record, company.id, operator.username, now)
    application.project_id = project.id
    apps.change_status(
        db,
        application,
        ApplicationStatus.AWARDED,
        actor=operator.username,
        reason=f"核定 {tier}，{points} 點 / awarded {tier}, {points} points",
        now=now,
        project=project.id,
    )
    last = taipei(last_second(end)).strftime("%Y-%m-%d %H:%M:%S")
    first = taipei(start).date()
    apps.notify(
        db,
        application,
        AWARD_NOTICE,
        "award",
        subject=f"{apps.SUBJECT_PREFIX} 核定通知 / award notice: {application.company_name}",
        body=(
            f"恭喜！您的申請案核定為 {tier} 級，{points} 點，使用期間自 {first} 起至 {last}"
            f"（台北時間）止，共 {settings.window_months} 個月。\n"
            f"Your application is awarded tier {tier}, {points} points; the window runs from "
            f"{first} to {last} (Asia/Taipei), {settings.window_months} months.\n\n"
            f"計畫 Project: {project.name}\n"
        ),
        now=now,
    )
    return AwardResult(record, project, api_key)
