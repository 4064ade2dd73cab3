"""Points arithmetic, exact.

1 point = 0.5 GPU-hour, so a server with ``g`` GPUs costs ``2·g`` points an hour.
The ledger counts in integer millipoints (1 point = 1000 millipoints).

Rounding rule (docs/points.md): the charge for a session after ``t`` whole seconds is
``ceil(g · t · 2 · 1000 / 3600)`` millipoints, a started second counting as a whole
second. Each metering interval charges the difference between two such cumulative
amounts, so rounding never accumulates: whatever the interval, the total charged for a
session is the cumulative amount for its whole duration, at most 0.001 point above the
exact figure.
"""

from __future__ import annotations

import math
from decimal import Decimal, Inexact, localcontext

MILLIPOINTS_PER_POINT = 1000
POINTS_PER_GPU_HOUR = 2
SECONDS_PER_HOUR = 3600
MAX_MILLIPOINTS = 2**63 - 1  # one ledger row (BIGINT)


def cumulative_millipoints(gpu_count: int, seconds: int) -> int:
    """Millipoints owed by ``gpu_count`` GPUs after ``seconds`` whole seconds."""
    if gpu_count < 0 or seconds < 0:
        raise ValueError("gpu_count and seconds must not be negative")
    numerator = gpu_count * seconds * POINTS_PER_GPU_HOUR * MILLIPOINTS_PER_POINT
    return -(-numerator // SECONDS_PER_HOUR)  # ceiling division on integers


def period_charge(gpu_count: int, from_seconds: int, to_seconds: int) -> int:
    """Millipoints for the span ``[from_seconds, to_seconds)`` of a session."""
    if to_seconds < from_seconds:
        raise ValueError("a period cannot end before it starts")
    return cumulative_millipoints(gpu_count, to_seconds) - cumulative_millipoints(
        gpu_count, from_seconds
    )


def interval_cost(gpu_count: int, interval_seconds: int) -> int:
    """The most one metering interval of ``gpu_count`` GPUs can cost, in millipoints.

    The first interval of a session is the dearest (its ceiling rounds from zero), so
    this is what a balance must hold to start a server or keep one running.
    """
    return cumulative_millipoints(gpu_count, interval_seconds)


def whole_seconds(elapsed_seconds: float) -> int:
    """Billable whole seconds: a started second counts."""
    return max(0, math.ceil(round(elapsed_seconds, 6)))


def to_points(millipoints: int) -> Decimal:
    """Millipoints as an exact Decimal number of points (three places)."""
    return (Decimal(millipoints) / MILLIPOINTS_PER_POINT).quantize(Decimal("0.001"))


def points_to_millipoints(points: Decimal | int | str) -> int:
    """Parse a number of points (as typed by an operator) into millipoints, exactly.

    Raises ValueError for anything that is not a finite number with at most three
    decimal places, or too large for the ledger.
    """
    try:
        value = Decimal(str(points).strip())
    except ArithmeticError as e:
        raise ValueError(f"not a number of points: {points!r}") from e
    if not value.is_finite():
        raise ValueError(f"not a number of points: {points!r}")
    # before any arithmetic: "1e999990" would take half a minute to turn into an int
    if value.copy_abs() > Decimal(MAX_MILLIPOINTS) / MILLIPOINTS_PER_POINT:
        raise ValueError(f"too many points: {points!r}")
    with localcontext() as context:
        context.traps[Inexact] = True  # a fourth decimal place is never rounded away
        try:
            scaled = value * MILLIPOINTS_PER_POINT
        except Inexact:
            raise ValueError("points have at most three decimal places") from None
    if scaled != scaled.to_integral_value():
        raise ValueError("points have at most three decimal places")
    return int(scaled)


def burn_rate_points_per_hour(gpu_count: int) -> int:
    return POINTS_PER_GPU_HOUR * gpu_count
