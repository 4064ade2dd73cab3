"""The idle-allocation rule (rules of use, item 6): 未使用算力時間達核定申請時間過半週數，經通知
專案聯絡人改善後隔日起算 3 個日曆天內若無繼續使用算力之行為.

The reading (docs/rules-of-use.md; the parts in *italics* are settings, defaults shown):

- The weeks are the window's weeks (``usage.window_weeks``: 7 calendar days each from the
  window's start, Asia/Taipei; a short last week counts as a week). A week is judged once it
  has ended. It is **used** when the project's metered GPU time in it is more than zero and at
  least *min_gpu_minutes* (0: any use); **excused** when unused but the project was suspended
  at some moment of it (it could not be used); otherwise **unused**.
- The unused weeks are counted *cumulatively* over the ended weeks, or, read the other way,
  as the current run of *consecutive* unused weeks (excused weeks neither extend nor break it).
- The threshold is more than half of the window's weeks: 7 of 13, 8 of 14.
- *Nudges* before it, at fractions of the window's weeks unused (1/4 and 3/8: at 4 and 5 of 13).
- Crossing the threshold sends the notice to the contact person. The grace: *3* calendar days
  counted from the day after the notice was sent (Taipei): sent on day D, use must start by
  D+3 23:59:59. Any metered GPU time from the notice to then clears it (a server running when
  the notice goes counts); the company is told so. None: a violation, recorded by the job.
- A grace during which the project was suspended at some moment, or that reaches past the
  window's end, records nothing (use could not resume).

Every notice is decided once (the outbox's unique key), the violation once (its source key),
so the job can run again, or late, and decides what fell due meanwhile.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from fractions import Fraction

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import notifications, reports, usage, violations
from .models import (
    AuditEvent,
    Notice,
    NoticeStatus,
    Project,
    ProjectStatus,
    Violation,
    ViolationKind,
)
from .timewindow import TAIPEI, taipei

CUMULATIVE, CONSECUTIVE = "cumulative", "consecutive"
USED, UNUSED, EXCUSED, OPEN = "used", "unused", "excused", "open"
IDLE_NOTICE = "idle-allocation"
NOTICE_KEY = "notice"
CLEARED_KEY = "cleared"
ACTOR = "idle-rule"
SUBJECT = "閒置算力 / idle allocation"

Span = tuple[datetime, datetime]


@dataclass(frozen=True)
class Reading:
    counting: str = CUMULATIVE
    min_gpu_minutes: int = 0
    nudges: tuple[Fraction, ...] = (Fraction(1, 4), Fraction(3, 8))
    grace_days: int = 3

    def as_dict(self) -> dict:
        return {
            "counting": self.counting,
            "min_gpu_minutes": self.min_gpu_minutes,
            "nudges": [str(n) for n in self.nudges],
            "grace_days": self.grace_days,
        }


# ---- pure evaluation ---------------------------------------------------------------------


@dataclass(frozen=True)
class JudgedWeek:
    week: usage.Week
    gpu_microseconds: int
    state: str  # used, unused, excused, or open (not ended)

    def as_dict(self) -> dict:
        return {
            "week": self.week.number,
            "first_day": self.week.first_day.isoformat(),
            "last_day": self.week.last_day.isoformat(),
            "gpu_hours": str(usage.gpu_hours(self.gpu_microseconds)),
            "state": self.state,
        }


@dataclass(frozen=True)
class Evaluation:
    weeks: list[JudgedWeek]
    unused: int  # by the reading's counting
    threshold: int
    nudges: list[Fraction] = field(default_factory=list)  # the nudge levels reached

    @property
    def crossed(self) -> bool:
        return self.unused >= self.threshold

    @property
    def unused_numbers(self) -> list[int]:
        return [w.week.number for w in self.weeks if w.state == UNUSED]

    def as_evidence(self) -> dict:
        return {
            "window_weeks": len(self.weeks),
            "unused_weeks": self.unused,
            "threshold": self.threshold,
            "weeks": [w.as_dict() for w in self.weeks],
        }


def threshold(total_weeks: int) -> int:
    """More than half of the window's weeks, in whole weeks: 13 → 7, 14 → 8."""
    return total_weeks // 2 + 1


def nudge_at(level: Fraction, total_weeks: int) -> int:
    """The unused weeks at which a nudge at ``level`` of the weeks is due: 1/4 of 13 → 4."""
    return max(1, math.ceil(level * total_weeks))


def overlaps(start: datetime, end: datetime, spans: Iterable[Span]) -> bool:
    return any(s < end and start < e for s, e in spans)


def judge_weeks(
    weeks: list[usage.Week],
    sessions: Iterable[usage.SessionSpan],
    suspended: list[Span],
    now: datetime,
    reading: Reading,
) -> list[JudgedWeek]:
    minimum = reading.min_gpu_minutes * 60_000_000
    judged = []
    for week_usage in usage.weekly_usage(weeks, sessions, now)[0]:
        week, micro = week_usage.week, week_usage.gpu_microseconds
        if week.end > now:
            state = OPEN
        elif micro > 0 and micro >= minimum:
            state = USED
        elif overlaps(week.start, week.end, suspended):
            state = EXCUSED
        else:
            state = UNUSED
        judged.append(JudgedWeek(week, micro, state))
    return judged


def count_unused(judged: list[JudgedWeek], counting: str) -> int:
    ended = [w for w in judged if w.state != OPEN]
    if counting == CUMULATIVE:
        return sum(w.state == UNUSED for w in ended)
    run = 0
    for w in reversed(ended):
        if w.state == USED:
            break
        run += w.state == UNUSED
    return run


def evaluate(
    weeks: list[usage.Week],
    sessions: Iterable[usage.SessionSpan],
    suspended: list[Span],
    now: datetime,
    reading: Reading,
) -> Evaluation:
    judged = judge_weeks(weeks, sessions, suspended, now, reading)
    unused = count_unused(judged, reading.counting)
    reached = [n for n in sorted(reading.nudges) if unused >= nudge_at(n, len(weeks))]
    return Evaluation(judged, unused, threshold(len(weeks)), reached)


def grace_deadline(notified_at: datetime, grace_days: int) -> datetime:
    """The exclusive end of the grace: counted from the day after the notice, Taipei. Sent
    on 2027-05-20 at any hour → use must start by 2027-05-23 23:59:59, so 2027-05-24 00:00."""
    day = taipei(notified_at).date() + timedelta(days=grace_days + 1)
    return datetime.combine(day, time(0), TAIPEI)


def used_between(sessions: Iterable[usage.SessionSpan], start: datetime, end: datetime) -> int:
    """GPU-microseconds of metered use in [start, end)."""
    total = 0
    for s in sessions:
        overlap = min(s.end(end), end) - max(s.started_at, start)
        if overlap > timedelta(0):
            total += usage.microseconds(overlap) * s.gpu_count
    return total


# ---- the job -----------------------------------------------------------------------------


def suspended_spans(db: Session, project: Project, now: datetime) -> list[Span]:
    """When the project was suspended, from its status changes in the audit trail."""
    changes = db.execute(
        select(AuditEvent.at, AuditEvent.detail)
        .where(
            AuditEvent.action == "project.status",
            AuditEvent.subject_type == "project",
            AuditEvent.subject_id == str(project.id),
        )
        .order_by(AuditEvent.at, AuditEvent.id)
    ).all()
    details = [(at, json.loads(detail)) for at, detail in changes]
    status = details[0][1]["old"] if details else project.status
    since = datetime.min.replace(tzinfo=UTC)
    spans = []
    for at, detail in details:
        if status == ProjectStatus.SUSPENDED:
            spans.append((since, at))
        status, since = detail["new"], at
    if status == ProjectStatus.SUSPENDED:
        spans.append((since, now))
    return spans


def _weeks_text(numbers: list[int]) -> str:
    return "、".join(str(n) for n in numbers) or "—"


def _last_second(deadline: datetime) -> str:
    return taipei(deadline - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")


def _nudge(project: Project, evaluation: Evaluation) -> tuple[str, str]:
    n, unused, weeks = len(evaluation.weeks), evaluation.unused, evaluation.unused_numbers
    return (
        f"{SUBJECT} 提醒 / reminder: {project.name}",
        f"計畫「{project.name}」使用期間共 {n} 週，已有 {unused} 週未使用算力（第 {_weeks_text(weeks)} "
        f"週）。未使用週數超過一半（{evaluation.threshold} 週）時，將正式通知專案聯絡人；通知隔日起算 "
        f"3 個日曆天內仍未使用者，依平台使用規範列為違規。\n"
        f"{unused} of the {n} weeks of {project.name}'s window went unused (weeks "
        f"{', '.join(map(str, weeks)) or '-'}). Once more than half of them ({evaluation.threshold} "
        f"weeks) are unused, the contact person gets a formal notice, and no use within 3 "
        f"calendar days from the day after it is a violation of the rules of use.\n",
    )


def _notice(project: Project, evaluation: Evaluation, deadline: datetime) -> tuple[str, str]:
    n, unused, weeks = len(evaluation.weeks), evaluation.unused, evaluation.unused_numbers
    last = _last_second(deadline)
    return (
        f"{SUBJECT} 通知 / notice: {project.name}",
        f"計畫「{project.name}」使用期間共 {n} 週，已有 {unused} 週未使用算力（第 {_weeks_text(weeks)} "
        f"週），超過核定週數的一半。請於通知隔日起算 3 個日曆天內，即 {last}（台北時間）前恢復使用"
        f"算力；屆時仍未使用者，依平台使用規範列為違規（閒置算力）。\n"
        f"{unused} of the {n} weeks of {project.name}'s window went unused (weeks "
        f"{', '.join(map(str, weeks)) or '-'}): more than half. Resume using the GPUs within 3 "
        f"calendar days from the day after this notice, by {last} (Asia/Taipei); otherwise it "
        f"is a violation of the rules of use (idle allocation).\n",
    )


@dataclass
class Outcome:
    planned: list[Notice] = field(default_factory=list)
    recorded: list[Violation] = field(default_factory=list)
    cleared: list[int] = field(default_factory=list)  # projects whose use resumed in time


def run(db: Session, *, now: datetime, reading: Reading = Reading()) -> Outcome:
    """Decide the nudges and notices due at ``now``, and settle every grace that has ended:
    use resumed (the company is told) or a violation recorded."""
    outcome = Outcome()
    in_service = list(
        db.scalars(
            select(Project)
            .where(
                Project.status.in_([ProjectStatus.APPROVED, ProjectStatus.SUSPENDED]),
                Project.window_start <= now,
            )
            .order_by(Project.id)
        )
    )
    if not in_service:
        return outcome
    ids = [p.id for p in in_service]
    notices: dict[tuple[int, str], Notice] = {
        (n.project_id, n.key): n
        for n in db.scalars(
            select(Notice).where(Notice.project_id.in_(ids), Notice.kind == IDLE_NOTICE)
        )
    }
    recorded = set(
        db.scalars(
            select(Violation.project_id).where(
                Violation.project_id.in_(ids), Violation.kind == ViolationKind.IDLE_ALLOCATION
            )
        )
    )
    spans = reports.session_spans(db, ids)
    for project in in_service:
        notice = notices.get((project.id, NOTICE_KEY))
        if notice is None:
            if project.status == ProjectStatus.APPROVED and now < project.window_end:
                outcome.planned += _plan(db, project, spans[project.id], notices, now, reading)
        elif (
            notice.sent_at is not None
            and project.id not in recorded
            and (project.id, CLEARED_KEY) not in notices
        ):
            _settle(db, project, notice, spans[project.id], now, reading, outcome)
    db.flush()
    return outcome


def _plan(
    db: Session,
    project: Project,
    sessions: list[usage.SessionSpan],
    notices: dict[tuple[int, str], Notice],
    now: datetime,
    reading: Reading,
) -> list[Notice]:
    """The nudges reached and the notice, each once; when several fall due together only the
    most urgent is sent (the others are recorded as superseded)."""
    weeks = usage.window_weeks(project.window_start, project.window_end)
    evaluation = evaluate(weeks, sessions, suspended_spans(db, project, now), now, reading)
    due = [(f"nudge-{level}", _nudge(project, evaluation)) for level in evaluation.nudges]
    if evaluation.crossed:
        due.append(
            (NOTICE_KEY, _notice(project, evaluation, grace_deadline(now, reading.grace_days)))
        )
    recipients = notifications.contact_persons(db, project.id)
    created = []
    for i, (key, (subject, body)) in enumerate(due):
        if (project.id, key) in notices:
            continue
        created.append(
            notifications.enqueue(
                db,
                project.id,
                IDLE_NOTICE,
                key,
                recipients=recipients,
                subject=subject,
                body=body,
                now=now,
                status=NoticeStatus.PENDING if i == len(due) - 1 else NoticeStatus.SUPERSEDED,
            )
        )
    return created


def _settle(
    db: Session,
    project: Project,
    notice: Notice,
    sessions: list[usage.SessionSpan],
    now: datetime,
    reading: Reading,
    outcome: Outcome,
) -> None:
    deadline = grace_deadline(notice.sent_at, reading.grace_days)
    if now < deadline or deadline > project.window_end:
        return
    if overlaps(notice.sent_at, deadline, suspended_spans(db, project, now)):
        return
    used = used_between(sessions, notice.sent_at, deadline)
    last = _last_second(deadline)
    if used > 0:
        notifications.enqueue(
            db,
            project.id,
            IDLE_NOTICE,
            CLEARED_KEY,
            recipients=notifications.contact_persons(db, project.id),
            subject=f"{SUBJECT} 已恢復使用 / use resumed: {project.name}",
            body=f"計畫「{project.name}」已於 {last}（台北時間）前恢復使用算力，不列違規。\n"
            f"{project.name} resumed using the GPUs by {last} (Asia/Taipei): no violation.\n",
            now=now,
        )
        outcome.cleared.append(project.id)
        return
    weeks = usage.window_weeks(project.window_start, project.window_end)
    evaluation = evaluate(weeks, sessions, suspended_spans(db, project, now), now, reading)
    evidence = evaluation.as_evidence() | {
        "reading": reading.as_dict(),
        "notice": {
            "id": notice.id,
            "decided_at": taipei(notice.created_at).isoformat(),
            "sent_at": taipei(notice.sent_at).isoformat(),
            "to": notice.recipients.split(",") if notice.recipients else [],
        },
        "grace_last_second": last,
        "gpu_hours_in_grace": str(usage.gpu_hours(used)),
    }
    outcome.recorded.append(
        violations.record(
            db,
            project,
            ViolationKind.IDLE_ALLOCATION,
            summary=f"未使用週數 {evaluation.unused}/{len(weeks)} 週超過一半，通知後至 {last} 仍未"
            f"恢復使用 / {evaluation.unused} of {len(weeks)} weeks unused, more than half, and no "
            f"use by {last} after the notice",
            evidence=evidence,
            actor=ACTOR,
            now=now,
            source_key=f"project-{project.id}",
            automatic=True,
        )
    )
