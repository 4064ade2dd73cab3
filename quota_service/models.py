"""The platform's tables (SQLAlchemy 2). Every schema change is an Alembic migration."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect):
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class ProjectStatus(enum.StrEnum):
    PENDING = "pending"  # the application is still being reviewed
    APPROVED = "approved"
    REJECTED = "rejected"
    SUSPENDED = "suspended"
    CLOSED = "closed"
    TERMINATED = "terminated"  # a sanction ended the service before the window did


class Category(enum.StrEnum):
    TRAINING = "training"
    INFERENCE = "inference"


class LedgerKind(enum.StrEnum):
    GRANT = "grant"
    USAGE = "usage"
    ADJUSTMENT = "adjustment"


class Company(Base):
    __tablename__ = "companies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    business_number: Mapped[str] = mapped_column(String(8), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    projects: Mapped[list[Project]] = relationship(back_populates="company")


class Account(Base):
    """A person who signs in; ``username`` is their JupyterHub name."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str] = mapped_column(String(320), default="")
    display_name: Mapped[str] = mapped_column(String(200), default="")
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    is_reviewer: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    memberships: Mapped[list[Membership]] = relationship(back_populates="account")


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"))
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(20), default=Category.TRAINING)
    status: Mapped[str] = mapped_column(String(20), default=ProjectStatus.PENDING)
    tier: Mapped[str | None] = mapped_column(String(4), nullable=True)
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    max_gpus_per_server: Mapped[int] = mapped_column(Integer, default=2)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    company: Mapped[Company] = relationship(back_populates="projects")
    memberships: Mapped[list[Membership]] = relationship(back_populates="project")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("project_id", "account_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    role: Mapped[str] = mapped_column(String(20), default="trainee")  # lead, contact, trainee
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    project: Mapped[Project] = relationship(back_populates="memberships")
    account: Mapped[Account] = relationship(back_populates="memberships")


class UsageSession(Base):
    """One running server, metered from its start to its stop."""

    __tablename__ = "usage_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    username: Mapped[str] = mapped_column(String(255))
    server_name: Mapped[str] = mapped_column(String(255), default="")
    gpu_vendor: Mapped[str] = mapped_column(String(10))
    gpu_count: Mapped[int] = mapped_column(Integer)
    devices: Mapped[str] = mapped_column(Text, default="")
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    # fixed at the start, so that a configuration change never re-cuts a running session
    interval_seconds: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    # the last metering pass that found the server running in the hub
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # how far the ledger has charged this session, in whole seconds from started_at
    charged_seconds: Mapped[int] = mapped_column(Integer, default=0)
    charged_periods: Mapped[int] = mapped_column(Integer, default=0)
    stop_reason: Mapped[str] = mapped_column(Text, default="")


class LedgerEntry(Base):
    """Append-only: rows are inserted, never updated or deleted. Balance = sum(amount)."""

    __tablename__ = "ledger_entries"
    __table_args__ = (UniqueConstraint("session_id", "period_index", name="uq_ledger_period"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    amount_millipoints: Mapped[int] = mapped_column(BigInteger)
    session_id: Mapped[int | None] = mapped_column(ForeignKey("usage_sessions.id"), nullable=True)
    period_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the span of the session this charge covers, in whole seconds from its start
    covers_from_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    covers_to_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(100))
    subject_type: Mapped[str] = mapped_column(String(50))
    subject_id: Mapped[str] = mapped_column(String(100))
    detail: Mapped[str] = mapped_column(Text, default="{}")


class NoticeStatus(enum.StrEnum):
    PENDING = "pending"  # decided, not yet delivered
    SENT = "sent"
    SUPERSEDED = "superseded"  # a more urgent notice of the same kind went instead


class Notice(Base):
    """A notice decided once per (project, kind, key) and delivered from this outbox:
    the unique key is what makes a re-run, or a run after a missed one, send nothing twice."""

    __tablename__ = "notices"
    __table_args__ = (
        UniqueConstraint("project_id", "kind", "key", name="uq_notice_once"),
        UniqueConstraint("application_id", "kind", "key", name="uq_application_notice_once"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # a notice is about a project, or about an application that has no project yet
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id"), index=True, nullable=True
    )
    application_id: Mapped[int | None] = mapped_column(
        ForeignKey("applications.id"), index=True, nullable=True
    )
    kind: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default=NoticeStatus.PENDING, index=True)
    recipients: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")


class ClosingReport(Base):
    """What a project owes after its window: final report, slides, demo video (a link),
    due 30 calendar days after the window ends. Files live outside the database."""

    __tablename__ = "closing_reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), unique=True)
    final_report_path: Mapped[str] = mapped_column(Text, default="")
    slides_path: Mapped[str] = mapped_column(Text, default="")
    video_url: Mapped[str] = mapped_column(Text, default="")
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    submitted_by: Mapped[str] = mapped_column(String(255), default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Purge(Base):
    """A record of what the end-of-window purge deleted (kept with the audit trail)."""

    __tablename__ = "purges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(255))
    # JSON list of {"path", "files", "bytes"} for what was deleted
    deleted: Mapped[str] = mapped_column(Text, default="[]")
    bytes_deleted: Mapped[int] = mapped_column(BigInteger, default=0)


# ---- applications and review (issue 3) ------------------------------------------------------


class ApplicationStatus(enum.StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    QUALIFICATION = "qualification"  # the operator's qualification review
    SUPPLEMENT_REQUESTED = "supplement_requested"  # 補件
    RESUBMITTED = "resubmitted"
    PROFESSIONAL_REVIEW = "professional_review"  # reviewers score
    SELECTED = "selected"  # training: the meeting picked it; inference: over the pass mark
    AWARDED = "awarded"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


class Round(Base):
    """A batch (梯次) of one category: applications are accepted in [opens_at, closes_at)."""

    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(20))
    opens_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # exclusive: 2026-10-31 00:00:00 Taipei for "until 2026-10-30 23:59"
    closes_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Application(Base):
    """One company's application to one round: Attachment 1 and the proposal (Attachment 2
    or 3) as JSON documents, validated by ``quota_service.validation``; the few fields that
    are queried or constrained are columns."""

    __tablename__ = "applications"
    __table_args__ = (
        # one open application per company, round and category: ``open_key`` is the business
        # number while the application is open and NULL once withdrawn or rejected (NULLs
        # never collide, on SQLite and PostgreSQL alike)
        UniqueConstraint("round_id", "category", "open_key", name="uq_application_open"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    category: Mapped[str] = mapped_column(String(20))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    status: Mapped[str] = mapped_column(String(30), default=ApplicationStatus.DRAFT, index=True)
    business_number: Mapped[str] = mapped_column(String(8), default="")
    company_name: Mapped[str] = mapped_column(String(200), default="")
    open_key: Mapped[str | None] = mapped_column(String(8), nullable=True)
    company_data: Mapped[str] = mapped_column(Text, default="{}")  # Attachment 1
    consent: Mapped[str] = mapped_column(Text, default="{}")  # personal-data consent
    declarations: Mapped[str] = mapped_column(Text, default="{}")
    proposal: Mapped[str] = mapped_column(Text, default="{}")  # Attachment 2 or 3
    startup_priority: Mapped[bool] = mapped_column(Boolean, default=False)
    tier: Mapped[str | None] = mapped_column(String(4), nullable=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), nullable=True)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApplicationStatusChange(Base):
    """The application's history, as its applicant sees it (the audit trail has it too)."""

    __tablename__ = "application_status_changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(255))
    old_status: Mapped[str] = mapped_column(String(30))
    new_status: Mapped[str] = mapped_column(String(30))
    reason: Mapped[str] = mapped_column(Text, default="")


class QualificationResult(Base):
    """One criterion of the qualification review: the automatic check with its evidence,
    and the operator's pass or fail."""

    __tablename__ = "qualification_results"
    __table_args__ = (UniqueConstraint("application_id", "criterion"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    criterion: Mapped[str] = mapped_column(String(40))
    automatic: Mapped[str] = mapped_column(String(10), default="")  # pass, fail, flag, ""
    evidence: Mapped[str] = mapped_column(Text, default="{}")
    passed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[str] = mapped_column(String(255), default="")
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SupplementRequest(Base):
    """補件: what is missing (field names) and until when [requested_at, due_before)."""

    __tablename__ = "supplement_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    fields: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of field names
    message: Mapped[str] = mapped_column(Text, default="")
    due_before: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    requested_by: Mapped[str] = mapped_column(String(255))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ReviewerProfile(Base):
    """Where a reviewer works: the business number used to detect obvious conflicts."""

    __tablename__ = "reviewer_profiles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), unique=True)
    affiliation: Mapped[str] = mapped_column(String(200), default="")
    business_number: Mapped[str] = mapped_column(String(8), default="")


class ReviewerAssignment(Base):
    __tablename__ = "reviewer_assignments"
    __table_args__ = (UniqueConstraint("application_id", "reviewer_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    assigned_by: Mapped[str] = mapped_column(String(255))
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime())
    conflict_declared: Mapped[str] = mapped_column(Text, default="")  # the reviewer's words
    recused_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ScoreSheet(Base):
    """One reviewer's scores (criterion → 0..100, JSON), the bonus items counted and the
    weighted total in hundredths of a point (exact: integer weights times integer scores)."""

    __tablename__ = "score_sheets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("reviewer_assignments.id"), unique=True)
    scores: Mapped[str] = mapped_column(Text, default="{}")
    bonus_items: Mapped[str] = mapped_column(Text, default="[]")
    total_hundredths: Mapped[int] = mapped_column(Integer)
    comment_to_applicant: Mapped[str] = mapped_column(Text, default="")
    private_comment: Mapped[str] = mapped_column(Text, default="")
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Award(Base):
    __tablename__ = "awards"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), unique=True)
    tier: Mapped[str] = mapped_column(String(4))
    points: Mapped[int] = mapped_column(Integer)
    notice_date: Mapped[datetime] = mapped_column(UTCDateTime())
    window_start: Mapped[datetime] = mapped_column(UTCDateTime())
    window_end: Mapped[datetime] = mapped_column(UTCDateTime())
    # training: JSON list of CIDR strings (IPv4 or IPv6) the members must connect from
    trusted_networks: Mapped[str] = mapped_column(Text, default="[]")
    awarded_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """Inference: a company's API key, stored only as the SHA-256 of a 256-bit token.
    Regenerating revokes the active key and adds a row; at most one is active."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    award_id: Mapped[int] = mapped_column(ForeignKey("awards.id"), index=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown to tell keys apart
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str] = mapped_column(String(255), default="")


# ---- rules of use: the violations register and sanctions (issue 6) ---------------------------


class ViolationKind(enum.StrEnum):
    """The rules of use (柒、二、(一)), one kind per item, and anything else."""

    PROHIBITED_USE = "prohibited_use"  # 1. mining, peer-to-peer sharing, for-profit use
    BANNED_REGION = "banned_region"  # 2. connections from mainland China, Hong Kong, Macau
    INFRINGEMENT = "infringement"  # 3. infringing the agency's or others' rights
    UNLAWFUL = "unlawful"  # 4. against the law or public order
    BANNED_MODEL = "banned_model"  # 5. models or tools from Chinese or Chinese-funded makers
    IDLE_ALLOCATION = "idle_allocation"  # 6. more than half the weeks unused, no use after notice
    OBLIGATIONS = "obligations"  # 7. the user obligations
    OTHER = "other"


class ViolationStatus(enum.StrEnum):
    RECORDED = "recorded"
    APPEALED = "appealed"  # the company contests it; the operator decides
    UPHELD = "upheld"
    WITHDRAWN = "withdrawn"


class Violation(Base):
    """One violation of the rules of use, counted against the company, found in a project."""

    __tablename__ = "violations"
    __table_args__ = (
        # what an automatic rule found is recorded once: (idle_allocation, "project-7")
        UniqueConstraint("kind", "source_key", name="uq_violation_source"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    status: Mapped[str] = mapped_column(String(20), default=ViolationStatus.RECORDED)
    summary: Mapped[str] = mapped_column(Text)
    evidence: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    source_key: Mapped[str | None] = mapped_column(String(80), nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recorded_by: Mapped[str] = mapped_column(String(255))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    decided_by: Mapped[str] = mapped_column(String(255), default="")


class ViolationEntryKind(enum.StrEnum):
    NOTE = "note"  # the operator's
    APPEAL = "appeal"  # the company's
    STATUS = "status"  # a change of status, with its reason


class ViolationEntry(Base):
    """A violation's history: notes, the appeal, decisions (the audit trail has them too)."""

    __tablename__ = "violation_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    violation_id: Mapped[int] = mapped_column(ForeignKey("violations.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(20))
    text: Mapped[str] = mapped_column(Text, default="")
    internal: Mapped[bool] = mapped_column(Boolean, default=False)  # operators only
    old_status: Mapped[str] = mapped_column(String(20), default="")
    new_status: Mapped[str] = mapped_column(String(20), default="")


class SanctionKind(enum.StrEnum):
    SUSPEND = "suspend"  # the project's service, until lifted
    BAR_NEXT_ROUND = "bar_next_round"  # the company's next round, once
    TERMINATE = "terminate"  # the project's service ends; storage purged after confirmation


class SanctionStatus(enum.StrEnum):
    ACTIVE = "active"
    LIFTED = "lifted"  # suspension or bar taken back
    USED = "used"  # the bar was applied to a round
    COMPLETED = "completed"  # termination: the purge was confirmed and done


class Sanction(Base):
    __tablename__ = "sanctions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    violation_id: Mapped[int] = mapped_column(ForeignKey("violations.id"), index=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=SanctionStatus.ACTIVE)
    reason: Mapped[str] = mapped_column(Text)
    # termination with fewer than two violations: why it is urgent (empty otherwise)
    urgent_reason: Mapped[str] = mapped_column(Text, default="")
    imposed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    imposed_by: Mapped[str] = mapped_column(String(255))
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_by: Mapped[str] = mapped_column(String(255), default="")
    end_reason: Mapped[str] = mapped_column(Text, default="")
    # the bar: the round it was applied to, and the application that met it first
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"), nullable=True)
    application_id: Mapped[int | None] = mapped_column(ForeignKey("applications.id"), nullable=True)
    # termination: the record of what the confirmed purge deleted
    purge_id: Mapped[int | None] = mapped_column(ForeignKey("purges.id"), nullable=True)
