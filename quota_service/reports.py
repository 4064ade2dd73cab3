"""Read models for pages and the API: what a project looks like to its members."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, selectinload

from spawner.points import burn_rate_points_per_hour, to_points

from . import charts, closing, ledger, lifecycle, metering, usage
from .models import (
    Account,
    ClosingReport,
    LedgerEntry,
    LedgerKind,
    Membership,
    Project,
    UsageSession,
)
from .timewindow import last_second, taipei


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else taipei(moment).isoformat()


def server_summary(session: UsageSession) -> dict:
    return {
        "session_id": session.id,
        "username": session.username,
        "server_name": session.server_name,
        "gpu_vendor": session.gpu_vendor,
        "gpu_count": session.gpu_count,
        "devices": [d for d in session.devices.split(",") if d],
        "simulated": session.simulated,
        "started_at": _iso(session.started_at),
        "burn_rate_points_per_hour": str(burn_rate_points_per_hour(session.gpu_count)),
    }


def project_summary(db: Session, project: Project, balance_millipoints: int | None = None) -> dict:
    if balance_millipoints is None:
        balance_millipoints = ledger.balance(db, project.id)
    running = metering.open_sessions(db, project.id)
    return {
        "id": project.id,
        "name": project.name,
        "company": project.company.name,
        "category": project.category,
        "status": project.status,
        "tier": project.tier,
        "balance_points": str(to_points(balance_millipoints)),
        "window_start": _iso(project.window_start),
        "window_end": _iso(project.window_end),
        "window_last_second": _iso(last_second(project.window_end)) if project.window_end else None,
        "max_gpus_per_server": project.max_gpus_per_server,
        "running_servers": [server_summary(s) for s in running],
        "burn_rate_points_per_hour": str(
            sum(burn_rate_points_per_hour(s.gpu_count) for s in running)
        ),
    }


def projects_of(db: Session, username: str) -> list[Project]:
    return list(
        db.scalars(
            select(Project)
            .join(Membership)
            .join(Account)
            .where(Account.username == username)
            .options(selectinload(Project.company))
            .order_by(Project.id)
        )
    )


def all_projects(db: Session) -> list[Project]:
    return list(
        db.scalars(select(Project).options(selectinload(Project.company)).order_by(Project.id))
    )


def usage_history(db: Session, project_id: int, limit: int = 200) -> list[dict]:
    entries = db.scalars(
        select(LedgerEntry)
        .where(LedgerEntry.project_id == project_id)
        .order_by(LedgerEntry.id.desc())
        .limit(limit)
    )
    return [
        {
            "at": _iso(e.created_at),
            "kind": e.kind,
            "points": str(to_points(e.amount_millipoints)),
            "session_id": e.session_id,
            "covers_seconds": None
            if e.covers_from_seconds is None
            else [e.covers_from_seconds, e.covers_to_seconds],
            "reason": e.reason,
            "actor": e.actor,
        }
        for e in entries
    ]


def recent_sessions(db: Session, project_id: int, limit: int = 50) -> list[dict]:
    sessions = db.scalars(
        select(UsageSession)
        .where(UsageSession.project_id == project_id)
        .order_by(UsageSession.id.desc())
        .limit(limit)
    )
    return [
        server_summary(s)
        | {
            "stopped_at": _iso(s.stopped_at),
            "charged_seconds": s.charged_seconds,
            "stop_reason": s.stop_reason,
        }
        for s in sessions
    ]


def last_stop_notice(db: Session, username: str) -> str:
    """Why this person's most recent server was stopped by the platform, if it was."""
    session = db.scalar(
        select(UsageSession)
        .where(UsageSession.username == username)
        .order_by(UsageSession.id.desc())
        .limit(1)
    )
    if session is None or not session.stop_reason or session.stop_reason.startswith("superseded"):
        return ""
    return session.stop_reason


# ---- usage: weeks, burn-down, forecast, breakdowns ---------------------------------------


def session_spans(db: Session, project_ids: list[int]) -> dict[int, list[usage.SessionSpan]]:
    spans: dict[int, list[usage.SessionSpan]] = {pid: [] for pid in project_ids}
    rows = db.execute(
        select(
            UsageSession.project_id,
            UsageSession.id,
            UsageSession.username,
            UsageSession.server_name,
            UsageSession.gpu_count,
            UsageSession.started_at,
            UsageSession.stopped_at,
        )
        .where(UsageSession.project_id.in_(project_ids))
        .order_by(UsageSession.id)
    )
    for pid, sid, username, server_name, gpus, started, stopped in rows:
        spans[pid].append(usage.SessionSpan(sid, username, server_name, gpus, started, stopped))
    return spans


def spent_by_session(db: Session, project_id: int) -> dict[int | None, int]:
    """Millipoints each session's usage rows spent (positive)."""
    rows = db.execute(
        select(LedgerEntry.session_id, func.sum(LedgerEntry.amount_millipoints))
        .where(LedgerEntry.project_id == project_id, LedgerEntry.kind == LedgerKind.USAGE)
        .group_by(LedgerEntry.session_id)
    )
    return {sid: -int(total) for sid, total in rows}


def spent_between(db: Session, project_id: int, start: datetime, end: datetime) -> int:
    """Millipoints the usage rows written in [start, end) spent (positive)."""
    total = db.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_millipoints), 0)).where(
            LedgerEntry.project_id == project_id,
            LedgerEntry.kind == LedgerKind.USAGE,
            LedgerEntry.created_at >= start,
            LedgerEntry.created_at < end,
        )
    )
    return -int(total)


def balances_before(db: Session, project_id: int, moments: list[datetime]) -> list[int]:
    """The balance just before each moment (rows written before it), in one round trip
    per 400 moments: one conditional sum per moment."""
    result: list[int] = []
    for i in range(0, len(moments), 400):
        chunk = moments[i : i + 400]
        sums = [
            func.coalesce(
                func.sum(
                    case((LedgerEntry.created_at < m, LedgerEntry.amount_millipoints), else_=0)
                ),
                0,
            )
            for m in chunk
        ]
        row = db.execute(select(*sums).where(LedgerEntry.project_id == project_id)).one()
        result += [int(v) for v in row]
    return result


def _breakdown_row(b: usage.Breakdown) -> dict:
    return {
        "key": b.key,
        "sessions": b.sessions,
        "gpu_hours": str(b.gpu_hours),
        "points": str(to_points(b.used_millipoints)),
    }


def project_usage(db: Session, project: Project, now: datetime) -> dict | None:
    """Weeks, the burn-down, the forecast and the breakdowns of a project's window; None
    for a project without a window."""
    if project.window_start is None or project.window_end is None:
        return None
    start, end = project.window_start, project.window_end
    spans = session_spans(db, [project.id])[project.id]
    weeks = usage.window_weeks(start, end)
    week_rows, outside = usage.weekly_usage(weeks, spans, now)
    current = usage.week_containing(weeks, now)
    boundaries = usage.day_boundaries(start, end, now)
    balance = ledger.balance(db, project.id)
    at_ends = balances_before(db, project.id, boundaries)
    if boundaries and boundaries[-1] == now:
        at_ends[-1] = balance  # today: everything written so far
    days = [
        usage.Day(taipei(b - timedelta(microseconds=1)).date(), b, v)
        for b, v in zip(boundaries, at_ends, strict=True)
    ]
    span = usage.average_span(now, start)
    forecast = usage.forecast(
        balance_millipoints=balance,
        now=now,
        window_start=start,
        window_end=end,
        running_gpus=sum(s.gpu_count for s in spans if s.stopped_at is None),
        used_recently_millipoints=spent_between(db, project.id, now - span, now),
    )
    spent = spent_by_session(db, project.id)
    members, servers = usage.breakdowns(spans, spent, now, lifecycle.members_of(db, project.id))
    total_micro = sum(w.gpu_microseconds for w in week_rows) + outside
    return {
        "weeks": [
            {
                "number": w.week.number,
                "first_day": w.week.first_day.isoformat(),
                "last_day": w.week.last_day.isoformat(),
                "days": w.week.days,
                "full": w.week.full,
                "gpu_hours": str(w.gpu_hours),
                "started": w.started,
                "current": current is not None and w.week.number == current.number,
            }
            for w in week_rows
        ],
        "outside_window_gpu_hours": str(usage.gpu_hours(outside)) if outside else None,
        "total_gpu_hours": str(usage.gpu_hours(total_micro)),
        "total_points_used": str(to_points(sum(spent.values()))),
        "days": [
            {"day": d.day.isoformat(), "balance_points": str(to_points(d.balance_millipoints))}
            for d in days
        ],
        # drawn by the page, in its language: ``usage.chart(_)``
        "chart": partial(
            charts.burn_down_svg,
            window_start=start,
            window_end=end,
            now=now,
            days=days,
            forecast=forecast,
        ),
        "forecast": {
            "basis": forecast.basis,
            "points_per_hour": str(forecast.points_per_hour),
            "average_days": usage.days_label(span) if forecast.basis == usage.AVERAGE else None,
            "runs_out_at": _iso(forecast.runs_out_at),
            "before_window_end": forecast.before_window_end,
            "used_up": forecast.used_up,
            "left_at_window_end": None
            if forecast.left_at_window_end_millipoints is None
            else str(to_points(forecast.left_at_window_end_millipoints)),
            "window_over": now >= end,
        },
        "members": [_breakdown_row(b) for b in members],
        "servers": [_breakdown_row(b) for b in servers],
    }


def usage_csv_rows(db: Session, project_id: int, now: datetime) -> Iterator[list[object]]:
    """One row per session (its GPU-hours and the points its charges add up to), then one
    per usage row of the ledger. Points are ledger amounts: usage is negative. Summing
    either kind of row gives the total; never add both."""
    sessions = list(
        db.scalars(
            select(UsageSession)
            .where(UsageSession.project_id == project_id)
            .order_by(UsageSession.id)
        )
    )
    spent = spent_by_session(db, project_id)
    by_id = {s.id: s for s in sessions}
    for s in sessions:
        end = s.stopped_at if s.stopped_at is not None else max(now, s.started_at)
        micro = max(0, usage.microseconds(end - s.started_at)) * s.gpu_count
        yield [
            "session",
            s.id,
            s.id,
            usage.csv_text(s.username),
            usage.csv_text(s.server_name),
            s.gpu_vendor,
            s.gpu_count,
            _iso(s.started_at),
            _iso(s.stopped_at) or "",
            usage.exact_gpu_hours(micro),
            "",
            "",
            "",
            str(to_points(-spent.get(s.id, 0))),
            usage.csv_text(s.stop_reason),
        ]
    entries = db.scalars(
        select(LedgerEntry)
        .where(LedgerEntry.project_id == project_id, LedgerEntry.kind == LedgerKind.USAGE)
        .order_by(LedgerEntry.id)
        .execution_options(yield_per=1000)
    )
    for e in entries:
        s = by_id.get(e.session_id)
        yield [
            "usage",
            e.id,
            e.session_id or "",
            usage.csv_text(s.username if s else ""),
            usage.csv_text(s.server_name if s else ""),
            s.gpu_vendor if s else "",
            s.gpu_count if s else "",
            "",
            "",
            "",
            _iso(e.created_at),
            "" if e.covers_from_seconds is None else e.covers_from_seconds,
            "" if e.covers_to_seconds is None else e.covers_to_seconds,
            str(to_points(e.amount_millipoints)),
            usage.csv_text(e.reason),
        ]


# ---- closing obligations and the operator dashboard --------------------------------------


def closing_view(db: Session, project: Project, now: datetime) -> dict | None:
    report = closing.report_of(db, project.id)
    state = closing.state(project, report, now)
    if state is None:
        return None
    return {
        "due_date": state.due_date.isoformat(),
        "due_at": _iso(state.due_at),
        "window_ended": state.window_ended,
        "complete": state.complete,
        "overdue": state.overdue,
        "late": state.late,
        "missing": state.missing_names,
        "submitted_at": _iso(state.submitted_at),
        "submitted_by": report.submitted_by if report and state.complete else "",
        "updated_at": _iso(report.updated_at) if report else None,
        "final_report": closing.download_name(report.final_report_path)
        if report and report.final_report_path
        else "",
        "slides": closing.download_name(report.slides_path)
        if report and report.slides_path
        else "",
        "video_url": report.video_url if report else "",
    }


def dashboard(db: Session, now: datetime) -> dict:
    """Every project with its balance, GPU-hours this week of its window and in total,
    status, window and closing report; and the overdue reports."""
    projects = all_projects(db)
    ids = [p.id for p in projects]
    balances = ledger.balances(db, ids)
    spans = session_spans(db, ids)
    owed = {r.project_id: r for r in db.scalars(select(ClosingReport))}
    rows, overdue = [], []
    for p in projects:
        row = project_summary(db, p, balances[p.id])
        week_micro, total_micro, week = 0, 0, None
        if p.window_start is not None and p.window_end is not None:
            week = usage.week_containing(usage.window_weeks(p.window_start, p.window_end), now)
        for s in spans[p.id]:
            total_micro += max(0, usage.microseconds(s.end(now) - s.started_at)) * s.gpu_count
            if week is not None:
                per_week, _ = usage.split_by_weeks([week], s.started_at, s.end(now), s.gpu_count)
                week_micro += per_week.get(week.number, 0)
        state = closing.state(p, owed.get(p.id), now)
        row |= {
            "week_number": week.number if week else None,
            "gpu_hours_week": str(usage.gpu_hours(week_micro)) if week else None,
            "gpu_hours_total": str(usage.gpu_hours(total_micro)),
            "window_over": p.window_end is not None and now >= p.window_end,
            "closing": None
            if state is None
            else {
                "due_date": state.due_date.isoformat(),
                "window_ended": state.window_ended,
                "complete": state.complete,
                "overdue": state.overdue,
                "late": state.late,
                "missing": state.missing_names,
                "days_overdue": (taipei(now).date() - state.due_date).days,
            },
        }
        rows.append(row)
        if state is not None and state.overdue:
            overdue.append(row)
    overdue.sort(key=lambda r: (r["closing"]["due_date"], r["id"]))
    return {"projects": rows, "overdue": overdue}
