"""Usage arithmetic for the project pages, the operator dashboard and the rules of use.

Pure functions: no database, no clock. Times are aware datetimes; points are integer
millipoints; durations are integer microseconds (the resolution of every stored time), so
nothing here is ever rounded before it is shown. ``window_weeks`` is the one definition of a
window's weeks, shared with the idle-allocation rule.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from fractions import Fraction

from spawner.points import MILLIPOINTS_PER_POINT, POINTS_PER_GPU_HOUR

from .timewindow import TAIPEI, taipei

MICROSECONDS_PER_HOUR = 3_600_000_000
MILLIPOINTS_PER_GPU_HOUR = POINTS_PER_GPU_HOUR * MILLIPOINTS_PER_POINT  # 2000
AVERAGE_SPAN = timedelta(days=7)


def microseconds(delta: timedelta) -> int:
    """A timedelta as an exact integer number of microseconds."""
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def gpu_hours(gpu_microseconds: int, places: int = 2) -> Decimal:
    """GPU-microseconds as GPU-hours, rounded half up to ``places`` only for display."""
    exact = Decimal(gpu_microseconds) / Decimal(MICROSECONDS_PER_HOUR)
    return exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


# ---- weeks of a window -------------------------------------------------------------------


@dataclass(frozen=True)
class Week:
    """Week ``number`` (1-based) of a window: [start, end), end clipped to the window's end."""

    number: int
    start: datetime
    end: datetime

    @property
    def first_day(self) -> date:
        return taipei(self.start).date()

    @property
    def last_day(self) -> date:
        return taipei(self.end - timedelta(microseconds=1)).date()

    @property
    def days(self) -> str:
        """Its length in days, as shown: "7", or "1" for a last week of one day."""
        return days_label(self.end - self.start)

    @property
    def full(self) -> bool:
        return self.end - self.start == timedelta(days=7)


def window_weeks(window_start: datetime, window_end: datetime) -> list[Week]:
    """The weeks of a window, counted from its start in Asia/Taipei: week 1 is the first
    7 calendar days (from the start's wall-clock time, 00:00 for every window the platform
    creates), week 2 the next 7, and so on; the last week ends with the window and may be
    shorter. A 92-day window (2026-11-28 to 2027-02-27) has 13 full weeks and a 14th of
    one day."""
    if window_end <= window_start:
        return []
    local = taipei(window_start)
    weeks = []
    number = 1
    while True:
        start = datetime.combine(local.date() + timedelta(days=7 * (number - 1)), local.time())
        start = start.replace(tzinfo=TAIPEI)
        if start >= window_end:
            return weeks
        end = min(
            datetime.combine(local.date() + timedelta(days=7 * number), local.time()).replace(
                tzinfo=TAIPEI
            ),
            window_end,
        )
        weeks.append(Week(number, start, end))
        number += 1


def week_containing(weeks: list[Week], moment: datetime) -> Week | None:
    return next((w for w in weeks if w.start <= moment < w.end), None)


def split_by_weeks(
    weeks: list[Week], started: datetime, stopped: datetime, gpu_count: int
) -> tuple[dict[int, int], int]:
    """GPU-microseconds of one session [started, stopped) in each week, split exactly at
    the week boundaries, and what fell outside the window (before its start or after its
    end) as the second value."""
    total = max(0, microseconds(stopped - started)) * gpu_count
    per_week: dict[int, int] = {}
    for week in weeks:
        overlap = min(stopped, week.end) - max(started, week.start)
        if overlap > timedelta(0):
            per_week[week.number] = microseconds(overlap) * gpu_count
    return per_week, total - sum(per_week.values())


@dataclass(frozen=True)
class SessionSpan:
    """What the arithmetic needs of one usage session."""

    session_id: int
    username: str
    server_name: str
    gpu_count: int
    started_at: datetime
    stopped_at: datetime | None

    def end(self, now: datetime) -> datetime:
        """Where the session's time stops counting: its stop, or now while it runs."""
        return self.stopped_at if self.stopped_at is not None else max(now, self.started_at)


@dataclass(frozen=True)
class WeekUsage:
    week: Week
    gpu_microseconds: int
    started: bool  # the week has begun (future weeks are shown, not counted as unused)

    @property
    def gpu_hours(self) -> Decimal:
        return gpu_hours(self.gpu_microseconds)


def weekly_usage(
    weeks: list[Week], sessions: Iterable[SessionSpan], now: datetime
) -> tuple[list[WeekUsage], int]:
    """GPU-microseconds per week of the window, and the part outside the window."""
    totals = {w.number: 0 for w in weeks}
    outside = 0
    for s in sessions:
        per_week, rest = split_by_weeks(weeks, s.started_at, s.end(now), s.gpu_count)
        for number, amount in per_week.items():
            totals[number] += amount
        outside += rest
    return [WeekUsage(w, totals[w.number], w.start <= now) for w in weeks], outside


# ---- breakdowns ------------------------------------------------------------------------


@dataclass
class Breakdown:
    """Usage of one member or one server: time from the sessions, points from the ledger."""

    key: tuple[str, ...]
    sessions: int = 0
    gpu_microseconds: int = 0
    used_millipoints: int = 0  # positive: points spent

    @property
    def gpu_hours(self) -> Decimal:
        return gpu_hours(self.gpu_microseconds)


def breakdowns(
    sessions: Iterable[SessionSpan],
    used_by_session: dict[int | None, int],
    now: datetime,
    members: Iterable[str] = (),
) -> tuple[list[Breakdown], list[Breakdown]]:
    """Per member (``members`` listed even without use) and per server (user, server
    name). ``used_by_session`` maps a session id to the millipoints its usage rows spent;
    a usage row without a session is listed under the member ``""``."""
    by_member = {(m,): Breakdown((m,)) for m in members}
    by_server: dict[tuple[str, ...], Breakdown] = {}
    seen: set[int] = set()
    for s in sessions:
        seen.add(s.session_id)
        spent = used_by_session.get(s.session_id, 0)
        micro = max(0, microseconds(s.end(now) - s.started_at)) * s.gpu_count
        for table, key in ((by_member, (s.username,)), (by_server, (s.username, s.server_name))):
            row = table.setdefault(key, Breakdown(key))
            row.sessions += 1
            row.gpu_microseconds += micro
            row.used_millipoints += spent
    orphans = sum(v for k, v in used_by_session.items() if k is None or k not in seen)
    if orphans:
        by_member.setdefault(("",), Breakdown(("",))).used_millipoints += orphans
    return sorted(by_member.values(), key=lambda b: b.key), sorted(
        by_server.values(), key=lambda b: b.key
    )


# ---- burn-down ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Day:
    day: date
    end: datetime  # 00:00 Taipei of the next day, or now for today
    balance_millipoints: int  # the balance at ``end``


def day_boundaries(window_start: datetime, window_end: datetime, now: datetime) -> list[datetime]:
    """The end of each Taipei calendar day from the window's first day through today
    (or through the window's last day once it is over); today's end is ``now``."""
    last = min(now, window_end)
    if last <= window_start:
        return []
    first_day = taipei(window_start).date()
    ends = []
    day = first_day
    while True:
        end = datetime.combine(day + timedelta(days=1), time(0), TAIPEI)
        if end >= last:
            ends.append(last)
            return ends
        ends.append(end)
        day += timedelta(days=1)


# ---- forecast ------------------------------------------------------------------------------

RUNNING = "running"
AVERAGE = "average"
NONE = "none"


def days_label(span: timedelta) -> str:
    """A span in days with at most one decimal, for display: 7 days → "7", 3.5 days → "3.5"."""
    days = (Decimal(microseconds(span)) / Decimal(86_400_000_000)).quantize(
        Decimal("0.1"), rounding=ROUND_HALF_UP
    )
    return str(int(days)) if days == days.to_integral() else str(days)


def average_span(now: datetime, window_start: datetime) -> timedelta:
    """The span the average rate is taken over: the last 7 days, or since the window
    opened when that is shorter."""
    return max(timedelta(0), min(AVERAGE_SPAN, now - window_start))


@dataclass(frozen=True)
class Forecast:
    """When the points run out at the current rate.

    ``basis`` is ``running`` (the servers running now), ``average`` (no server runs: the
    average use over ``average_span``) or ``none`` (nothing to extrapolate). The rate is
    kept exact, as ``rate_millipoints`` spent per ``rate_microseconds``."""

    basis: str
    balance_millipoints: int
    rate_millipoints: int
    rate_microseconds: int
    runs_out_at: datetime | None  # None: no use, or nothing left
    before_window_end: bool
    left_at_window_end_millipoints: int | None  # None once the window is over

    @property
    def points_per_hour(self) -> Decimal:
        """The rate in points per hour, rounded half up to the millipoint (display)."""
        if not self.rate_microseconds:
            return Decimal("0.000")
        exact = Fraction(
            self.rate_millipoints * MICROSECONDS_PER_HOUR,
            self.rate_microseconds * MILLIPOINTS_PER_POINT,
        )
        return (Decimal(exact.numerator) / Decimal(exact.denominator)).quantize(
            Decimal("0.001"), rounding=ROUND_HALF_UP
        )

    @property
    def used_up(self) -> bool:
        return self.balance_millipoints <= 0


def forecast(
    *,
    balance_millipoints: int,
    now: datetime,
    window_start: datetime,
    window_end: datetime,
    running_gpus: int,
    used_recently_millipoints: int,
) -> Forecast:
    """``running_gpus``: the GPUs of the servers running now (2 points per GPU-hour);
    ``used_recently_millipoints``: what the usage rows over ``average_span`` spent, the
    basis when no server runs. The points run out at ``now + balance / rate``, computed with
    integers and cut to the microsecond (rounded down, so never later than exact)."""
    if running_gpus > 0:
        basis = RUNNING
        spent, span = running_gpus * MILLIPOINTS_PER_GPU_HOUR, MICROSECONDS_PER_HOUR
    else:
        span = microseconds(average_span(now, window_start))
        if used_recently_millipoints > 0 and span > 0:
            basis, spent = AVERAGE, used_recently_millipoints
        else:
            basis, spent, span = NONE, 0, 0
    runs_out_at = None
    if spent and balance_millipoints > 0:
        runs_out_at = now + timedelta(microseconds=balance_millipoints * span // spent)
    left_at_end = None
    if now < window_end:
        burned = Fraction(spent * microseconds(window_end - now), span) if span else 0
        left = Fraction(balance_millipoints) - burned
        left_at_end = left.numerator // left.denominator  # floor: never promise too much
    return Forecast(
        basis=basis,
        balance_millipoints=balance_millipoints,
        rate_millipoints=spent,
        rate_microseconds=span,
        runs_out_at=runs_out_at,
        before_window_end=runs_out_at is not None and runs_out_at < window_end,
        left_at_window_end_millipoints=left_at_end,
    )


# ---- CSV ------------------------------------------------------------------------------------

CSV_HEADER = [
    "record",
    "id",
    "session_id",
    "username",
    "server_name",
    "gpu_vendor",
    "gpu_count",
    "started_at",
    "stopped_at",
    "gpu_hours",
    "charged_at",
    "covers_from_seconds",
    "covers_to_seconds",
    "points",
    "reason",
]
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: object) -> str:
    """A free-text cell that spreadsheet programs will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def exact_gpu_hours(gpu_microseconds: int) -> str:
    """GPU-hours with six places, rounded down (the CSV's exact-enough figure)."""
    return str(
        (Decimal(gpu_microseconds) / Decimal(MICROSECONDS_PER_HOUR)).quantize(
            Decimal("0.000001"), rounding=ROUND_FLOOR
        )
    )


def csv_chunks(rows: Iterable[list[object]], rows_per_chunk: int = 1000) -> Iterator[bytes]:
    """The CSV file in pieces: UTF-8 with a byte-order mark first (so that Excel reads the
    Chinese text), a header line, CRLF line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    first, count = True, 0
    for row in rows:
        writer.writerow(row)
        count += 1
        if count % rows_per_chunk == 0:
            yield ("\ufeff" if first else "").encode() + buffer.getvalue().encode()
            first = False
            buffer.seek(0)
            buffer.truncate()
    yield ("\ufeff" if first else "").encode() + buffer.getvalue().encode()
