"""Points arithmetic: 1 point = 0.5 GPU-hour, integer millipoints, cumulative ceiling."""

from __future__ import annotations

import random
from decimal import Decimal
from fractions import Fraction

import pytest

from spawner.points import (
    MAX_MILLIPOINTS,
    burn_rate_points_per_hour,
    cumulative_millipoints,
    interval_cost,
    period_charge,
    points_to_millipoints,
    to_points,
    whole_seconds,
)


def exact_millipoints(gpus: int, seconds: int) -> Fraction:
    """The exact (unrounded) amount: g GPUs × t s × 2 points/GPU-hour × 1000 / 3600 s."""
    return Fraction(gpus * seconds * 2 * 1000, 3600)


# --- the rate -----------------------------------------------------------------------------


@pytest.mark.parametrize(("gpus", "points_per_hour"), [(0, 0), (1, 2), (2, 4), (8, 16)])
def test_burn_rate_is_two_points_per_gpu_hour(gpus, points_per_hour):
    assert burn_rate_points_per_hour(gpus) == points_per_hour


@pytest.mark.parametrize(
    ("gpus", "seconds", "millipoints"),
    [
        (1, 3600, 2000),  # 1 GPU-hour = 2 points exactly
        (1, 1800, 1000),  # 0.5 GPU-hour = 1 point
        (2, 3600, 4000),
        (8, 3600, 16000),
        (1, 9, 5),  # 9 s × 5/9 = 5 exactly
        (1, 1, 1),  # 5/9 → 1 (a started millipoint is charged)
        (1, 2, 2),  # 10/9 → 2
        (2, 60, 67),  # 600/9 = 66.67 → 67
        (2, 120, 134),  # 1200/9 = 133.33 → 134
        (2, 150, 167),  # 1500/9 = 166.67 → 167
        (1, 0, 0),
        (0, 3600, 0),
        (1, 500 * 3600, 1_000_000),  # 500 GPU-hours = L1's 1000 points
    ],
)
def test_cumulative_millipoints_worked_examples(gpus, seconds, millipoints):
    assert cumulative_millipoints(gpus, seconds) == millipoints


def test_cumulative_is_the_ceiling_of_g_t_5_9_and_at_most_one_millipoint_above():
    for gpus in range(0, 9):
        for seconds in [*range(0, 100), 3599, 3600, 3601, 86_399, 86_400, 7_776_000]:
            exact = exact_millipoints(gpus, seconds)
            assert exact == Fraction(gpus * seconds * 5, 9)
            charged = cumulative_millipoints(gpus, seconds)
            assert exact <= charged < exact + 1, (gpus, seconds)


def test_cumulative_is_exact_for_large_values_where_floats_would_drift():
    # 8 GPUs for 90 days and a second: integer arithmetic, no float rounding
    seconds = 90 * 86_400 + 1
    assert cumulative_millipoints(8, seconds) == -(-(8 * seconds * 5) // 9)
    assert cumulative_millipoints(8, seconds) == 34_560_005  # 34_560_000 + ceil(40/9)=5


@pytest.mark.parametrize(("gpus", "seconds"), [(-1, 60), (1, -1)])
def test_negative_inputs_are_refused(gpus, seconds):
    with pytest.raises(ValueError):
        cumulative_millipoints(gpus, seconds)


def test_interval_cost_is_the_first_interval_which_is_the_dearest():
    assert interval_cost(2, 60) == 67
    assert interval_cost(1, 3600) == 2000
    for gpus in (1, 2, 3, 7):
        for interval in (1, 7, 60, 61, 300):
            first = interval_cost(gpus, interval)
            for k in range(1, 40):
                later = period_charge(gpus, k * interval, (k + 1) * interval)
                assert later <= first, (gpus, interval, k)


# --- periods sum to the cumulative amount: no drift ---------------------------------------


def test_period_charge_worked_example_two_gpus_150_seconds_in_60_second_intervals():
    # 2 GPUs cost 10/9 millipoints a second. Cumulative: ceil(600/9)=67, ceil(1200/9)=134,
    # ceil(1500/9)=167; each period charges the difference: 67, 134-67=67, 167-134=33.
    charges = [period_charge(2, 0, 60), period_charge(2, 60, 120), period_charge(2, 120, 150)]
    assert charges == [67, 67, 33]
    assert sum(charges) == cumulative_millipoints(2, 150) == 167


def test_period_charge_of_an_empty_span_is_zero_and_a_reversed_span_is_refused():
    assert period_charge(3, 100, 100) == 0
    with pytest.raises(ValueError):
        period_charge(1, 61, 60)


def split_charges(gpus: int, total: int, interval: int) -> list[int]:
    """Charge [0, total) as the metering does: full intervals, then the partial rest."""
    charges, done = [], 0
    while done + interval <= total:
        charges.append(period_charge(gpus, done, done + interval))
        done += interval
    if done < total:
        charges.append(period_charge(gpus, done, total))
    return charges


def test_sixty_second_intervals_over_an_odd_duration_sum_to_the_cumulative_amount():
    # 1 GPU for 3601 s: 60 full intervals and one of 1 s
    charges = split_charges(1, 3601, 60)
    assert len(charges) == 61
    assert sum(charges) == cumulative_millipoints(1, 3601) == 2001  # ceil(18005/9)
    # a naive per-interval ceiling would drift: 60 × ceil(300/9)=34 → 2040, + 1
    assert 60 * cumulative_millipoints(1, 60) + cumulative_millipoints(1, 1) == 2041


@pytest.mark.parametrize("interval", [1, 7, 13, 59, 60, 61, 300, 3600])
def test_any_interval_length_sums_to_the_cumulative_amount(interval):
    for gpus in (1, 2, 3, 8):
        for total in (0, 1, 59, 150, 3599, 3601, 7919, 86_401):
            charges = split_charges(gpus, total, interval)
            assert all(c >= 0 for c in charges)
            assert sum(charges) == cumulative_millipoints(gpus, total), (gpus, total, interval)


def test_random_cut_points_sum_to_the_cumulative_amount():
    rng = random.Random(20261030)  # fixed seed: the same cases every run
    for _ in range(2000):
        gpus = rng.randint(1, 8)
        cuts = sorted(rng.sample(range(1, 200_000), rng.randint(1, 30)))
        points = [0, *cuts]
        total = sum(period_charge(gpus, a, b) for a, b in zip(points, points[1:], strict=False))
        assert total == cumulative_millipoints(gpus, points[-1])
        assert total - exact_millipoints(gpus, points[-1]) < 1


# --- whole seconds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "seconds"),
    [
        (0, 0),
        (0.0, 0),
        (0.001, 1),  # a started second counts
        (0.4, 1),
        (1.0, 1),
        (1.000001, 2),  # one microsecond over (timedelta's resolution) starts a second
        (59.5, 60),
        (60.0, 60),
        (150.0, 150),
        # float noise below a microsecond is rounded away before the ceiling
        (2.0000000001, 2),
        (2.0000004, 2),
        (0.0000004, 0),
        (2.9999999999, 3),
        (-0.5, 0),  # a clock that went backwards charges nothing
        (-3.0, 0),
    ],
)
def test_whole_seconds(elapsed, seconds):
    assert whole_seconds(elapsed) == seconds


def test_whole_seconds_returns_an_int():
    assert type(whole_seconds(2.5)) is int


# --- parsing and showing points -----------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "millipoints"),
    [
        ("1000", 1_000_000),
        ("0.001", 1),
        ("1.5", 1500),
        ("1.000", 1000),
        (" 12.5 ", 12_500),
        ("-3", -3000),  # negative amounts are for adjustments; the ledger decides
        ("1e3", 1_000_000),
        (6000, 6_000_000),
        (Decimal("2.125"), 2125),
        ("0", 0),
    ],
)
def test_points_to_millipoints_accepts(typed, millipoints):
    assert points_to_millipoints(typed) == millipoints


@pytest.mark.parametrize(
    "typed",
    ["1.0005", "0.0001", "abc", "", "  ", "NaN", "nan", "Infinity", "-Infinity", "sNaN", "1,000"],
)
def test_points_to_millipoints_refuses(typed):
    with pytest.raises(ValueError):
        points_to_millipoints(typed)


@pytest.mark.parametrize(
    "typed",
    [
        "1e30",  # would overflow the ledger's BIGINT column on insert
        "-1e30",
        "9223372036854775.808",  # one millipoint above 2**63 - 1
        "1e999990",  # used to take half a minute to become an int
        "1e10000000",  # used to raise decimal.Overflow, not ValueError
        "1e-999999999",  # used to underflow silently to 0 and be accepted
        "1000.0000000000000000000000001",  # 29 digits: used to be rounded to 1000 and accepted
    ],
)
def test_points_to_millipoints_refuses_what_the_ledger_cannot_hold_exactly(typed):
    with pytest.raises(ValueError):
        points_to_millipoints(typed)


def test_points_to_millipoints_limits_and_exact_long_inputs():
    assert points_to_millipoints("9223372036854775.807") == MAX_MILLIPOINTS == 2**63 - 1
    assert points_to_millipoints("-9223372036854775.807") == -(2**63 - 1)
    assert points_to_millipoints("1.0000000000000000000000000000000") == 1000  # zeros only
    assert points_to_millipoints("0.0010000000000000000000000000000000") == 1


@pytest.mark.parametrize(
    ("millipoints", "shown"),
    [
        (1_000_000, "1000.000"),
        (1, "0.001"),
        (0, "0.000"),
        (167, "0.167"),
        (-67, "-0.067"),
        (6_000_000, "6000.000"),
    ],
)
def test_to_points_formats_three_places(millipoints, shown):
    assert str(to_points(millipoints)) == shown


def test_parse_and_format_round_trip():
    for millipoints in (0, 1, 999, 1000, 1001, 2_000_000, 123_456_789):
        assert points_to_millipoints(to_points(millipoints)) == millipoints
