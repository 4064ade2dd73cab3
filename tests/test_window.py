"""The usage window: 3 calendar months from the notice date, Asia/Taipei, end exclusive."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from quota_service.timewindow import (
    TAIPEI,
    add_months,
    is_open,
    last_second,
    taipei,
    window_for_notice,
)
from tests.conftest import at

SECOND = timedelta(seconds=1)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_window_for_a_notice_on_2026_11_28():
    start, end = window_for_notice(date(2026, 11, 28))
    assert start.isoformat() == "2026-11-28T00:00:00+08:00"
    assert end.isoformat() == "2027-02-28T00:00:00+08:00"
    # the same instants in UTC: 16:00 of the day before
    assert start == utc("2026-11-27 16:00:00")
    assert end == utc("2027-02-27 16:00:00")
    assert last_second(end) == at("2027-02-27 23:59:59")


@pytest.mark.parametrize("notice_day", [29, 30])
def test_window_end_is_clipped_to_the_end_of_february(notice_day):
    # 2027 is not a leap year: 30 November + 3 months has no 30 February
    start, end = window_for_notice(date(2026, 11, notice_day))
    assert start.isoformat() == f"2026-11-{notice_day}T00:00:00+08:00"
    assert end.isoformat() == "2027-02-28T00:00:00+08:00"


def test_window_in_a_leap_year_ends_on_29_february():
    _, end = window_for_notice(date(2027, 11, 30))
    assert end.isoformat() == "2028-02-29T00:00:00+08:00"


def test_window_crossing_the_year_and_other_lengths():
    assert window_for_notice(date(2026, 12, 15))[1].isoformat() == "2027-03-15T00:00:00+08:00"
    assert window_for_notice(date(2026, 10, 31))[1].isoformat() == "2027-01-31T00:00:00+08:00"
    assert window_for_notice(date(2026, 8, 31))[1].isoformat() == "2026-11-30T00:00:00+08:00"
    assert (
        window_for_notice(date(2026, 11, 28), months=1)[1].isoformat()
        == "2026-12-28T00:00:00+08:00"
    )
    assert (
        window_for_notice(date(2026, 11, 28), months=12)[1].isoformat()
        == "2027-11-28T00:00:00+08:00"
    )


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (date(2026, 1, 31), 1, date(2026, 2, 28)),
        (date(2028, 1, 31), 1, date(2028, 2, 29)),
        (date(2026, 3, 31), 1, date(2026, 4, 30)),
        (date(2026, 11, 30), 3, date(2027, 2, 28)),
        (date(2026, 12, 1), 1, date(2027, 1, 1)),
        (date(2026, 10, 30), 3, date(2027, 1, 30)),
        (date(2026, 5, 15), 0, date(2026, 5, 15)),
        (date(2026, 5, 15), 24, date(2028, 5, 15)),
    ],
)
def test_add_months(day, months, expected):
    assert add_months(day, months) == expected


def test_window_start_and_end_are_taipei_midnights_whatever_the_local_zone():
    start, end = window_for_notice(date(2026, 11, 28))
    for moment in (start, end):
        local = taipei(moment)
        assert (local.hour, local.minute, local.second) == (0, 0, 0)
        assert local.utcoffset() == timedelta(hours=8)
        assert local.tzinfo is TAIPEI


# --- open or closed, at the edges ---------------------------------------------------------

START, END = window_for_notice(date(2026, 11, 28))


@pytest.mark.parametrize(
    ("moment", "open_"),
    [
        (at("2026-11-27 23:59:59"), False),  # one second before the first second
        (at("2026-11-28 00:00:00"), True),  # the first second
        (at("2026-12-31 12:00:00"), True),
        (at("2027-02-27 23:59:59"), True),  # the last second
        (at("2027-02-27 23:59:59") + timedelta(microseconds=999_999), True),
        (at("2027-02-28 00:00:00"), False),  # the next second: closed
        (at("2027-03-01 00:00:00"), False),
    ],
)
def test_is_open_in_taipei_time(moment, open_):
    assert is_open(START, END, moment) is open_


@pytest.mark.parametrize(
    ("moment", "open_"),
    [
        (utc("2026-11-27 15:59:59"), False),
        (utc("2026-11-27 16:00:00"), True),  # 00:00:00 Taipei of the notice date
        (utc("2027-02-27 15:59:59"), True),  # 23:59:59 Taipei of the last day
        (utc("2027-02-27 16:00:00"), False),  # 00:00:00 Taipei of the end date
    ],
)
def test_is_open_with_the_same_instants_in_utc(moment, open_):
    assert is_open(START, END, moment) is open_


def test_at_helper_and_utc_agree_on_the_edges():
    assert at("2027-02-27 23:59:59") == utc("2027-02-27 15:59:59")
    assert at("2026-11-28 00:00:00") == utc("2026-11-27 16:00:00")


def test_a_window_not_set_is_never_open():
    now = at("2026-12-01 12:00:00")
    assert is_open(None, END, now) is False
    assert is_open(START, None, now) is False
    assert is_open(None, None, now) is False


def test_last_second():
    assert last_second(END) == END - SECOND
    assert taipei(last_second(END)).isoformat() == "2027-02-27T23:59:59+08:00"
