"""Usage arithmetic: weeks of the window, GPU-hours split at week boundaries, the burn-down,
the forecast and the breakdowns, with worked examples in Asia/Taipei time (``at``).

The database tests run on SQLite and on PostgreSQL (the ``db`` fixture)."""

from __future__ import annotations

import csv
import io
import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from quota_service import i18n, ledger, reports, usage
from quota_service.models import (
    Account,
    Company,
    LedgerEntry,
    LedgerKind,
    Membership,
    Project,
    ProjectStatus,
    UsageSession,
)
from quota_service.timewindow import window_for_notice
from quota_service.usage import SessionSpan, window_weeks
from tests.conftest import at

START, END = window_for_notice(date(2026, 11, 28))  # 2026-11-28 00:00 → 2027-02-28 00:00 Taipei
HOUR = 3_600_000_000  # microseconds
_numbers = itertools.count(20_000_000)


# ---- weeks ---------------------------------------------------------------------------------


def test_weeks_are_counted_from_the_window_start_in_taipei():
    weeks = window_weeks(START, END)
    # 92 days: 13 full weeks and a 14th of one day
    assert len(weeks) == 14
    assert (weeks[0].first_day, weeks[0].last_day) == (date(2026, 11, 28), date(2026, 12, 4))
    assert weeks[0].start == at("2026-11-28 00:00:00")
    assert weeks[1].start == at("2026-12-05 00:00:00")  # 2026-12-04 16:00 UTC
    assert weeks[1].start == datetime(2026, 12, 4, 16, 0, tzinfo=UTC)
    assert (weeks[12].first_day, weeks[12].last_day) == (date(2027, 2, 20), date(2027, 2, 26))
    assert (weeks[13].first_day, weeks[13].last_day, weeks[13].days) == (
        date(2027, 2, 27),
        date(2027, 2, 27),
        "1",
    )
    assert [w.full for w in weeks] == [True] * 13 + [False]
    assert weeks[13].end == END


def test_a_three_month_window_from_new_year_has_13_weeks_the_last_of_6_days():
    start, end = window_for_notice(date(2026, 1, 1))  # 90 days
    weeks = window_weeks(start, end)
    assert len(weeks) == 13
    assert weeks[-1].days == "6" and weeks[-1].last_day == date(2026, 3, 31)
    assert usage.week_containing(weeks, at("2026-03-31 23:59:59")).number == 13
    assert usage.week_containing(weeks, at("2026-04-01 00:00:00")) is None
    assert usage.week_containing(weeks, at("2026-01-07 23:59:59")).number == 1
    assert usage.week_containing(weeks, at("2026-01-08 00:00:00")).number == 2


def test_a_session_across_a_week_boundary_at_taipei_midnight_is_split_exactly():
    weeks = window_weeks(START, END)
    # 2 GPUs from Friday 22:30 to Saturday 01:15 Taipei; week 2 starts Saturday 00:00
    per_week, outside = usage.split_by_weeks(
        weeks, at("2026-12-04 22:30:00"), at("2026-12-05 01:15:00"), 2
    )
    assert per_week == {1: 3 * HOUR, 2: 5 * HOUR // 2}  # 1.5 h × 2 GPUs, 1.25 h × 2 GPUs
    assert outside == 0
    # a UTC-midnight split would have put all of it in week 1 (boundary 16:00 UTC differs)
    assert usage.gpu_hours(per_week[1]) == Decimal("3.00")
    assert usage.gpu_hours(per_week[2]) == Decimal("2.50")


def test_the_last_second_of_the_window_counts_in_the_last_week_and_nothing_after():
    weeks = window_weeks(START, END)
    per_week, outside = usage.split_by_weeks(
        weeks, at("2027-02-27 23:59:59"), at("2027-02-28 00:00:00"), 1
    )
    assert per_week == {14: 1_000_000} and outside == 0
    # a server stopped a little after the end: the part after it is outside the window
    per_week, outside = usage.split_by_weeks(
        weeks, at("2027-02-27 23:59:59.500000"), at("2027-02-28 00:00:00.250000"), 4
    )
    assert per_week == {14: 4 * 500_000} and outside == 4 * 250_000


def test_a_window_opened_in_the_afternoon_has_weeks_from_that_time():
    weeks = window_weeks(at("2026-11-08 12:15:12"), at("2027-02-07 12:15:12"))
    assert len(weeks) == 13 and all(w.full for w in weeks)
    assert weeks[1].start == at("2026-11-15 12:15:12") and weeks[1].days == "7"
    assert (weeks[0].first_day, weeks[0].last_day) == (date(2026, 11, 8), date(2026, 11, 15))


def test_weekly_usage_counts_running_sessions_to_now_and_marks_future_weeks():
    weeks = window_weeks(START, END)
    now = at("2026-12-06 10:00:00")
    spans = [
        SessionSpan(1, "amy", "", 1, at("2026-12-06 09:00:00"), None),  # running: 1 h so far
        SessionSpan(2, "ben", "big", 2, at("2026-11-28 00:00:00"), at("2026-11-28 00:30:00")),
    ]
    rows, outside = usage.weekly_usage(weeks, spans, now)
    assert [(r.week.number, r.gpu_microseconds, r.started) for r in rows[:3]] == [
        (1, HOUR, True),
        (2, HOUR, True),
        (3, 0, False),
    ]
    assert outside == 0


# ---- forecast --------------------------------------------------------------------------------


def forecast(balance, now, *, gpus=0, recent=0, start=START, end=END):
    return usage.forecast(
        balance_millipoints=balance,
        now=now,
        window_start=start,
        window_end=end,
        running_gpus=gpus,
        used_recently_millipoints=recent,
    )


def test_forecast_at_the_running_servers_rate_is_exact():
    now = at("2027-01-10 12:00:00")
    # 10.001 points, 3 GPUs (6 points an hour): 10.001 / 6 h = 6000.6 s exactly
    f = forecast(10_001, now, gpus=3)
    assert f.basis == "running" and f.points_per_hour == Decimal("6.000")
    assert f.runs_out_at == now + timedelta(seconds=6000, microseconds=600_000)
    assert f.before_window_end
    # 1 millipoint at 14 points an hour: 3600/14000 s = 257142.857… µs, cut to 257142 µs
    assert forecast(1, now, gpus=7).runs_out_at == now + timedelta(microseconds=257_142)
    # 1000 points, one 2-GPU server: 250 hours
    f = forecast(1_000_000, now, gpus=2)
    assert f.runs_out_at == at("2027-01-20 22:00:00")
    # points left when the window ends (48.5 days = 1164 h at 4 points/h = 4656 points)
    assert f.left_at_window_end_millipoints == 1_000_000 - 4_656_000


def test_without_running_servers_the_average_of_the_last_7_days_is_used():
    now = at("2027-01-10 12:00:00")
    # 168 points in the last 168 hours: 1 point an hour; 500.5 points last 500.5 hours
    f = forecast(500_500, now, recent=168_000)
    assert f.basis == "average" and f.points_per_hour == Decimal("1.000")
    assert f.runs_out_at == now + timedelta(hours=500, minutes=30)
    assert f.runs_out_at == at("2027-01-31 08:30:00") and f.before_window_end
    # points last past the end: 1164 h at 0.1 point/h = 116.4 points used by the end
    f = forecast(500_500, now, recent=16_800)
    assert not f.before_window_end and f.left_at_window_end_millipoints == 500_500 - 116_400


def test_a_window_younger_than_7_days_is_averaged_since_its_start():
    now = START + timedelta(days=3)
    assert usage.average_span(now, START) == timedelta(days=3)
    f = forecast(100_000, now, recent=36_000)  # 36 points in 72 hours: 0.5 an hour
    assert f.points_per_hour == Decimal("0.500")
    assert f.runs_out_at == now + timedelta(hours=200)
    assert usage.days_label(usage.average_span(now, START)) == "3"


def test_no_use_no_forecast_and_nothing_left_nothing_runs_out():
    now = at("2027-01-10 12:00:00")
    f = forecast(5_000, now)
    assert f.basis == "none" and f.runs_out_at is None and not f.before_window_end
    assert f.left_at_window_end_millipoints == 5_000
    f = forecast(-28, now, gpus=1)
    assert f.used_up and f.runs_out_at is None
    assert forecast(5_000, END + timedelta(days=1), gpus=1).left_at_window_end_millipoints is None


# ---- CSV ---------------------------------------------------------------------------------------


def test_csv_is_utf8_with_a_bom_and_formulas_are_defused():
    rows = [["session", 1, 1, usage.csv_text("=HYPERLINK(1)"), usage.csv_text("資料")]]
    data = b"".join(usage.csv_chunks(rows, rows_per_chunk=1))
    assert data.startswith(b"\xef\xbb\xbf") and data.count(b"\xef\xbb\xbf") == 1
    text = data.decode("utf-8-sig")
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == usage.CSV_HEADER
    assert parsed[1] == ["session", "1", "1", "'=HYPERLINK(1)", "資料"]
    assert text.endswith("\r\n")


# ---- on the database ----------------------------------------------------------------------------


def make_project(db, members=("amy", "ben")) -> Project:
    created = at("2026-11-28 09:00:00")
    company = Company(name="用量測試", business_number=str(next(_numbers)), created_at=created)
    project = Project(
        company=company,
        name="用量計畫",
        status=ProjectStatus.APPROVED,
        window_start=START,
        window_end=END,
        created_at=created,
    )
    db.add(project)
    for name in members:
        account = Account(username=f"{name}{next(_numbers)}", created_at=created)
        db.add(Membership(project=project, account=account, created_at=created))
    db.flush()
    ledger.grant(db, project, 1_000_000, actor="operator", reason="L1", now=created)
    return project


def session(db, project, username, server, gpus, started, stopped=None) -> UsageSession:
    account_id = db.scalar(select(Account.id).where(Account.username == username))
    if account_id is None:
        account = Account(username=username, created_at=started)
        db.add(account)
        db.flush()
        account_id = account.id
    s = UsageSession(
        project_id=project.id,
        account_id=account_id,
        username=username,
        server_name=server,
        gpu_vendor="nvidia",
        gpu_count=gpus,
        interval_seconds=60,
        started_at=started,
        stopped_at=stopped,
    )
    db.add(s)
    db.flush()
    return s


def charge(db, project, millipoints, when, session_id=None) -> None:
    db.add(
        LedgerEntry(
            project_id=project.id,
            kind=LedgerKind.USAGE,
            amount_millipoints=-millipoints,
            session_id=session_id,
            reason="usage",
            actor="metering",
            created_at=when,
        )
    )
    db.flush()


def member(project, name: str) -> str:
    return next(
        m.account.username for m in project.memberships if m.account.username.startswith(name)
    )


def test_project_usage_weeks_breakdowns_and_daily_balances(db):
    project = make_project(db)
    amy, ben = member(project, "amy"), member(project, "ben")
    # amy: 2 GPUs across the week 1 → 2 boundary (3.00 + 2.50 GPU-hours), charged 11 points
    s1 = session(db, project, amy, "", 2, at("2026-12-04 22:30:00"), at("2026-12-05 01:15:00"))
    charge(db, project, 6_000, at("2026-12-04 23:59:59.999999"), s1.id)
    charge(db, project, 5_000, at("2026-12-05 01:15:00"), s1.id)
    # ben: 1 GPU on a named server, still running since 09:00 (1.5 GPU-hours at 10:30)
    s2 = session(db, project, ben, "big", 1, at("2026-12-06 09:00:00"))
    charge(db, project, 2_000, at("2026-12-06 10:00:00"), s2.id)
    now = at("2026-12-06 10:30:00")

    view = reports.project_usage(db, project, now)

    weeks = {w["number"]: w for w in view["weeks"]}
    assert weeks[1]["gpu_hours"] == "3.00" and weeks[2]["gpu_hours"] == "4.00"  # 2.50 + 1.50
    assert weeks[2]["current"] and weeks[3]["gpu_hours"] == "0.00" and not weeks[3]["started"]
    assert view["total_gpu_hours"] == "7.00" and view["total_points_used"] == "13.000"
    by_member = {m["key"][0]: m for m in view["members"]}
    assert by_member[amy] == {
        "key": (amy,),
        "sessions": 1,
        "gpu_hours": "5.50",
        "points": "11.000",
    }
    assert by_member[ben]["gpu_hours"] == "1.50" and by_member[ben]["points"] == "2.000"
    assert [s["key"] for s in view["servers"]] == sorted([(amy, ""), (ben, "big")])
    days = {d["day"]: d["balance_points"] for d in view["days"]}
    assert days["2026-11-28"] == "1000.000"
    assert days["2026-12-04"] == "994.000"  # the charge at 23:59:59.999999 is that day's
    assert days["2026-12-05"] == "989.000"
    assert days["2026-12-06"] == "987.000"  # today: the balance now
    assert list(days)[-1] == "2026-12-06" and len(days) == 9
    # ben's 1-GPU server runs: 2 points an hour from 987 → 493.5 hours
    f = view["forecast"]
    assert f["basis"] == "running" and f["points_per_hour"] == "2.000"
    assert (
        f["runs_out_at"]
        == (now + timedelta(hours=493, minutes=30)).astimezone(usage.TAIPEI).isoformat()
    )
    # the page draws the chart in its language
    translators = i18n.read_catalogues()
    chart = view["chart"](translators["zh_TW"].gettext)
    assert 'id="burn-down"' in chart and "forecast-line" in chart
    assert '<desc id="burn-down-desc">每日結束時的餘額，最新 987.000 點</desc>' in chart
    english = view["chart"](translators["en"].gettext)
    assert "balance at the end of each day, latest 987.000 points" in english.lower()
    assert ">today</text>" in english and "今天" not in english


def test_average_forecast_reads_only_the_last_7_days_of_usage(db):
    project = make_project(db, members=("amy",))
    now = at("2027-01-10 12:00:00")
    charge(db, project, 500_000, now - timedelta(days=7, seconds=1))  # too old
    charge(db, project, 84_000, now - timedelta(days=7))  # the first moment that counts
    charge(db, project, 84_000, now - timedelta(seconds=1))
    # 168 points in 7 days: 1 point an hour; 1000 - 668 = 332 points last 332 hours
    f = reports.project_usage(db, project, now)["forecast"]
    assert f["basis"] == "average" and f["points_per_hour"] == "1.000"
    assert f["average_days"] == "7"
    assert f["runs_out_at"] == "2027-01-24T08:00:00+08:00"
    # the usage rows without a session are listed under no member
    members = {m["key"][0]: m for m in reports.project_usage(db, project, now)["members"]}
    assert members[""]["points"] == "668.000"


def test_csv_rows_one_per_session_and_per_usage_row(db):
    project = make_project(db, members=("amy",))
    amy = member(project, "amy")
    s1 = session(db, project, amy, "", 2, at("2026-12-04 22:30:00"), at("2026-12-05 01:15:00"))
    charge(db, project, 6_000, at("2026-12-04 23:30:00"), s1.id)
    charge(db, project, 5_112, at("2026-12-05 01:15:00"), s1.id)
    rows = list(reports.usage_csv_rows(db, project.id, at("2026-12-06 00:00:00")))
    assert [r[0] for r in rows] == ["session", "usage", "usage"]
    header = dict(zip(usage.CSV_HEADER, rows[0], strict=True))
    assert header["started_at"] == "2026-12-04T22:30:00+08:00"
    assert header["gpu_hours"] == "5.500000" and header["points"] == "-11.112"
    first = dict(zip(usage.CSV_HEADER, rows[1], strict=True))
    assert first["points"] == "-6.000" and first["session_id"] == s1.id
    assert first["username"] == amy and first["charged_at"] == "2026-12-04T23:30:00+08:00"
    assert sum(Decimal(r[13]) for r in rows if r[0] == "usage") == Decimal("-11.112")


def test_dashboard_counts_this_week_of_each_window_and_the_total(db):
    project = make_project(db, members=("amy",))
    amy = member(project, "amy")
    session(db, project, amy, "", 2, at("2026-12-04 22:30:00"), at("2026-12-05 01:15:00"))
    board = reports.dashboard(db, at("2026-12-06 10:30:00"))
    row = next(r for r in board["projects"] if r["id"] == project.id)
    assert row["week_number"] == 2 and row["gpu_hours_week"] == "2.50"
    assert row["gpu_hours_total"] == "5.50"
    assert row["closing"]["due_date"] == "2027-03-30" and not row["closing"]["overdue"]
    assert board["overdue"] == []
    later = reports.dashboard(db, at("2027-03-31 00:00:00"))
    assert [r["id"] for r in later["overdue"]] == [project.id]
    assert later["overdue"][0]["closing"]["days_overdue"] == 1


@pytest.mark.parametrize("now", ["2026-11-27 23:59:59", "2026-11-28 00:00:00"])
def test_no_days_before_the_window_opens(db, now):
    project = make_project(db, members=())
    view = reports.project_usage(db, project, at(now))
    assert view["days"] == [] and view["total_gpu_hours"] == "0.00"
