"""The usage window: from the notice date, for a number of calendar months, in Asia/Taipei."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

TAIPEI = ZoneInfo("Asia/Taipei")


def utcnow() -> datetime:
    return datetime.now(UTC)


def add_months(day: date, months: int) -> date:
    """Calendar months, clipped to the month's last day (2026-11-30 + 3 → 2027-02-28)."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def window_for_notice(notice_date: date, months: int = 3) -> tuple[datetime, datetime]:
    """[start, end): from 00:00:00 of the notice date to 00:00:00 of the same date
    ``months`` later, Taipei time. The last second of use is 23:59:59 of the day before."""
    start = datetime.combine(notice_date, time(0), TAIPEI)
    end = datetime.combine(add_months(notice_date, months), time(0), TAIPEI)
    return start, end


def is_open(window_start: datetime | None, window_end: datetime | None, now: datetime) -> bool:
    return window_start is not None and window_end is not None and window_start <= now < window_end


def taipei(moment: datetime) -> datetime:
    return moment.astimezone(TAIPEI)


def last_second(window_end: datetime) -> datetime:
    return window_end - timedelta(seconds=1)
