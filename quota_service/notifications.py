"""Notices to people: decided once per (project, kind, key), then delivered by e-mail.

Deciding and delivering are separate steps. ``plan`` writes what is due into the
``notices`` outbox; the unique key makes a re-run, or a run after missed ones, decide
nothing twice, and a run after a gap decides every notice that fell due meanwhile (none
is skipped). ``deliver`` sends what is pending, one transaction per notice, so a notice
that went out is never sent again by a later run.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from spawner.points import to_points

from . import closing, ledger
from .db import transaction
from .models import (
    Account,
    ClosingReport,
    LedgerEntry,
    LedgerKind,
    Membership,
    Notice,
    NoticeStatus,
    Project,
    ProjectStatus,
)
from .timewindow import last_second, taipei

log = logging.getLogger(__name__)

LOW_BALANCE = "low-balance"
WINDOW_ENDING = "window-ending"
REPORT_DUE = "report-due"
SUBJECT_PREFIX = "[AI 算力平台 AI Power Platform]"


def awarded(db: Session, project_ids: list[int]) -> dict[int, int]:
    """Points put into each project (grants and adjustments), the base of the percentages."""
    rows = db.execute(
        select(LedgerEntry.project_id, func.sum(LedgerEntry.amount_millipoints))
        .where(LedgerEntry.project_id.in_(project_ids), LedgerEntry.kind != LedgerKind.USAGE)
        .group_by(LedgerEntry.project_id)
    )
    found = {pid: int(total) for pid, total in rows}
    return {pid: found.get(pid, 0) for pid in project_ids}


def low_balance_percent(balance: int, granted: int, thresholds: Iterable[int]) -> int | None:
    """The most urgent threshold (a percentage of the points awarded) the balance is at or
    below, e.g. 1000 points awarded, 150 left, thresholds (20, 5) → 20."""
    crossed = [p for p in thresholds if granted > 0 and balance * 100 <= granted * p]
    return min(crossed) if crossed else None


def low_balance_message(balance: int, granted: int, percent: int) -> tuple[str, str]:
    points, total = to_points(balance), to_points(granted)
    return (
        f"計畫點數剩餘 {points} 點，已不到核定點數 {total} 點的 {percent}%。",
        f"The project has {points} points left, at or below {percent}% of the {total} awarded.",
    )


def current_warnings(db: Session, project: Project, percents: Iterable[int]) -> list[dict]:
    """What the hub's pages show the project's members now (not only when a mail went out)."""
    balance = ledger.balance(db, project.id)
    granted = awarded(db, [project.id])[project.id]
    percent = low_balance_percent(balance, granted, percents)
    if percent is None:
        return []
    zh, en = low_balance_message(balance, granted, percent)
    return [{"code": LOW_BALANCE, "zh": zh, "en": en}]


@dataclass(frozen=True)
class Planned:
    project_id: int
    kind: str
    key: str
    status: NoticeStatus
    subject: str
    body: str


def plan(
    db: Session,
    *,
    now: datetime,
    low_balance_percents: Iterable[int] = (20, 5),
    reminder_days: Iterable[int] = (14, 7, 1),
) -> list[Notice]:
    """Decide the notices due at ``now``: low-balance warnings and window reminders for
    every project inside its window, closing-report reminders for every project whose
    window is over and whose report is not complete."""
    projects = list(
        db.scalars(
            select(Project).where(
                Project.status == ProjectStatus.APPROVED,
                Project.window_start <= now,
                Project.window_end > now,
            )
        )
    )
    ended = _report_owed(db, now)
    ids = [p.id for p in projects] + [p.id for p in ended]
    if not ids:
        return []
    existing = {
        (n.project_id, n.kind, n.key)
        for n in db.execute(
            select(Notice.project_id, Notice.kind, Notice.key).where(Notice.project_id.in_(ids))
        )
    }
    balances, grants = ledger.balances(db, ids), awarded(db, ids)
    planned: list[Planned] = []
    for project in projects:
        planned += _low_balance(
            project, balances[project.id], grants[project.id], low_balance_percents
        )
        planned += _window_ending(project, now, reminder_days)
    for project in ended:
        planned += _report_due(project, closing.report_of(db, project.id), now)
    created = []
    for item in planned:
        if (item.project_id, item.kind, item.key) in existing:
            continue
        notice = Notice(
            project_id=item.project_id,
            kind=item.kind,
            key=item.key,
            status=item.status,
            recipients=",".join(recipients_of(db, item.project_id)),
            subject=item.subject,
            body=item.body,
            created_at=now,
        )
        db.add(notice)
        created.append(notice)
    db.flush()
    return created


def _low_balance(
    project: Project, balance: int, granted: int, percents: Iterable[int]
) -> list[Planned]:
    percents = sorted(set(percents), reverse=True)
    urgent = low_balance_percent(balance, granted, percents)
    if urgent is None:
        return []
    zh, en = low_balance_message(balance, granted, urgent)
    body = f"{zh}\n{en}\n\n計畫 Project: {project.name}\n"
    subject = f"{SUBJECT_PREFIX} 點數不足 {urgent}% / points below {urgent}%: {project.name}"
    # every threshold crossed is recorded once; only the most urgent one is sent
    return [
        Planned(
            project.id,
            LOW_BALANCE,
            str(p),
            NoticeStatus.PENDING if p == urgent else NoticeStatus.SUPERSEDED,
            subject,
            body,
        )
        for p in percents
        if p >= urgent
    ]


def _window_ending(project: Project, now: datetime, days: Iterable[int]) -> list[Planned]:
    end = project.window_end
    last = taipei(last_second(end)).strftime("%Y-%m-%d %H:%M:%S")
    report_due = closing.due_date(end).isoformat()
    planned = []
    for d in sorted(set(days), reverse=True):
        if now >= end - timedelta(days=d):
            planned.append(
                Planned(
                    project.id,
                    WINDOW_ENDING,
                    str(d),
                    NoticeStatus.PENDING,
                    f"{SUBJECT_PREFIX} 使用期間將於 {d} 天內結束 / window ends within {d} days: "
                    f"{project.name}",
                    f"計畫「{project.name}」的使用期間到 {last}（台北時間）為止，屆時將停止伺服器、"
                    f"收回權限並清除儲存空間。結案報告、簡報與展示影片請於 {report_due} 前繳交。\n"
                    f"The usage window of {project.name} ends at {last} (Asia/Taipei): servers "
                    f"stop, access is revoked and storage is cleared. The final report, slides "
                    f"and demo video are due by {report_due}.\n",
                )
            )
    return planned


def _report_owed(db: Session, now: datetime) -> list[Project]:
    """Projects whose window is over, that were approved (whatever they are now: closed,
    suspended), whose report is not complete and that have not had every reminder yet."""
    complete = select(ClosingReport.project_id).where(
        ClosingReport.final_report_path != "",
        ClosingReport.slides_path != "",
        ClosingReport.video_url != "",
    )
    all_sent = select(Notice.project_id).where(
        Notice.kind == REPORT_DUE, Notice.key == closing.OVERDUE
    )
    return list(
        db.scalars(
            select(Project)
            .where(
                Project.status.in_(
                    [ProjectStatus.APPROVED, ProjectStatus.SUSPENDED, ProjectStatus.CLOSED]
                ),
                Project.window_end.is_not(None),
                Project.window_end <= now,
                Project.id.not_in(complete),
                Project.id.not_in(all_sent),
            )
            .order_by(Project.id)
        )
    )


def _report_due(project: Project, report: ClosingReport | None, now: datetime) -> list[Planned]:
    """Closing-report reminders 14, 7 and 1 days before the due date and "overdue" the day
    after it; each decided once, every one that fell due (none skipped after missed runs)."""
    if closing.is_complete(report):
        return []
    due = closing.due_at(project.window_end).strftime("%Y-%m-%d %H:%M:%S")
    missing = closing.missing_parts(report)
    zh_missing = "、".join(closing.PART_NAMES[p][0] for p in missing)
    en_missing = ", ".join(closing.PART_NAMES[p][1] for p in missing)
    page = f"/services/quota/projects/{project.id}/closing"
    planned = []
    for key in closing.reminders_due(project.window_end, now):
        if key == closing.OVERDUE:
            subject = f"{SUBJECT_PREFIX} 結案報告逾期 / closing report overdue: {project.name}"
            zh = f"計畫「{project.name}」的結案資料已於 {due}（台北時間）到期，尚未繳交：{zh_missing}。"
            en = (
                f"The closing documents of {project.name} were due by {due} (Asia/Taipei); "
                f"still missing: {en_missing}."
            )
        else:
            subject = (
                f"{SUBJECT_PREFIX} 結案報告 {key} 天後到期 / closing report due in {key} "
                f"day{'s' if key != '1' else ''}: {project.name}"
            )
            zh = (
                f"計畫「{project.name}」的結案報告、簡報與展示影片連結請於 {due}（台北時間）前"
                f"繳交，尚缺：{zh_missing}。"
            )
            en = (
                f"The final report, slides and demo video link of {project.name} are due by "
                f"{due} (Asia/Taipei); missing: {en_missing}."
            )
        body = f"{zh}\n{en}\n\n繳交頁面 Upload page: {page}\n"
        planned.append(Planned(project.id, REPORT_DUE, key, NoticeStatus.PENDING, subject, body))
    return planned


def enqueue(
    db: Session,
    project_id: int,
    kind: str,
    key: str,
    *,
    recipients: list[str],
    subject: str,
    body: str,
    now: datetime,
    status: NoticeStatus = NoticeStatus.PENDING,
) -> Notice | None:
    """One notice about a project into the outbox, unless (project, kind, key) is there
    already; the subject gets the platform's prefix."""
    exists = db.scalar(
        select(Notice.id).where(
            Notice.project_id == project_id, Notice.kind == kind, Notice.key == key
        )
    )
    if exists is not None:
        return None
    notice = Notice(
        project_id=project_id,
        kind=kind,
        key=key,
        status=status,
        recipients=",".join(recipients),
        subject=f"{SUBJECT_PREFIX} {subject}",
        body=body,
        created_at=now,
    )
    db.add(notice)
    db.flush()
    return notice


def recipients_of(db: Session, project_id: int) -> list[str]:
    """The project lead and contact person; every member when the project names neither."""
    rows = db.execute(
        select(Account.email, Membership.role)
        .join(Membership)
        .where(Membership.project_id == project_id, Account.email != "")
        .order_by(Account.id)
    ).all()
    leads = [email for email, role in rows if role in ("lead", "contact")]
    return leads or [email for email, _ in rows]


def contact_persons(db: Session, project_id: int) -> list[str]:
    """The project's contact person (專案聯絡人), whom the rules of use say is notified;
    the lead and contact, or every member, when the project names no contact."""
    contacts = db.scalars(
        select(Account.email)
        .join(Membership)
        .where(
            Membership.project_id == project_id,
            Membership.role == "contact",
            Account.email != "",
        )
        .order_by(Account.id)
    ).all()
    return list(contacts) or recipients_of(db, project_id)


class Mailer:
    """SMTP delivery. ``host`` empty means no mail server: deliver() leaves notices pending."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        starttls: bool = False,
        username: str = "",
        password: str = "",
        timeout: float = 30,
    ):
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.username, self._password = starttls, username, password
        self.timeout = timeout

    def send(self, recipients: list[str], subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message.set_content(body)
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self._password)
            smtp.send_message(message)


def deliver(
    factory: sessionmaker[Session], mailer: Mailer, *, now: datetime, limit: int = 100
) -> int:
    """Send pending notices; returns how many went out. A failure is recorded and retried
    by the next run; a notice is marked sent in the same transaction that sent it."""
    if not mailer.host:
        return 0
    with factory() as db:
        pending = db.scalars(
            select(Notice.id)
            .where(Notice.status == NoticeStatus.PENDING)
            .order_by(Notice.id)
            .limit(limit)
        ).all()
    sent = 0
    for notice_id in pending:
        with transaction(factory) as db:
            notice = db.get(Notice, notice_id, with_for_update=True)
            if notice.status != NoticeStatus.PENDING:
                continue
            notice.attempts += 1
            recipients = [r for r in notice.recipients.split(",") if r]
            if not recipients:
                notice.last_error = "no recipient with an e-mail address"
                continue
            try:
                mailer.send(recipients, notice.subject, notice.body)
            except (OSError, smtplib.SMTPException) as e:
                notice.last_error = f"{type(e).__name__}: {e}"
                log.warning(
                    "notice %s not delivered (attempt %s): %s", notice_id, notice.attempts, e
                )
                continue
            notice.status, notice.sent_at, notice.last_error = NoticeStatus.SENT, now, ""
            sent += 1
            log.info(
                "notice %s (%s %s) sent to %d recipient(s)",
                notice_id,
                notice.kind,
                notice.key,
                len(recipients),
            )
    return sent
