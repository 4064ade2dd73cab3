"""The points burn-down chart: inline SVG drawn on the server (no script, no external asset).

Coordinates are computed from the exact figures with fractions and written with one
decimal; the numbers shown as text come from the same exact values.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from fractions import Fraction

from markupsafe import Markup, escape

from spawner.points import to_points

from .timewindow import last_second, taipei
from .usage import Day, Forecast, microseconds

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 40


def _coord(value: Fraction) -> str:
    """A pixel coordinate with one decimal, from an exact fraction (no float involved)."""
    tenths = (value * 10 + Fraction(1, 2)).__floor__()
    return (
        f"{tenths // 10}.{tenths % 10}" if tenths >= 0 else f"-{(-tenths) // 10}.{(-tenths) % 10}"
    )


def burn_down_svg(
    gettext: Callable[[str], str],
    *,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    days: list[Day],
    forecast: Forecast | None,
) -> Markup:
    """Balance at the end of each day (solid line, dots) and the forecast from now (dashed),
    its text in the language of ``gettext`` (the page's)."""
    span = microseconds(window_end - window_start) or 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    values = [d.balance_millipoints for d in days]
    forecast_to: tuple[datetime, int] | None = None
    if forecast is not None and now < window_end:
        if forecast.before_window_end and forecast.runs_out_at is not None:
            forecast_to = (forecast.runs_out_at, 0)
        elif forecast.left_at_window_end_millipoints is not None:
            forecast_to = (window_end, forecast.left_at_window_end_millipoints)
        if forecast_to:
            values.append(forecast_to[1])
    top_value = max([1000, *values])  # at least one point of scale
    bottom_value = min([0, *values])

    def x(moment: datetime) -> str:
        offset = min(max(microseconds(moment - window_start), 0), span)
        return _coord(LEFT + Fraction(plot_w * offset, span))

    def y(millipoints: int) -> str:
        return _coord(TOP + Fraction(plot_h * (top_value - millipoints), top_value - bottom_value))

    # outside the f-strings, where the message extraction (tests/test_i18n.py) finds them
    title, today = escape(gettext("Points burn-down")), escape(gettext("today"))
    balance, forecast_label = escape(gettext("Balance")), escape(gettext("Forecast"))
    parts = [
        f'<svg id="burn-down" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" style="max-width:{WIDTH}px" role="img" '
        'aria-labelledby="burn-down-title burn-down-desc">',
        f'<title id="burn-down-title">{title}</title>',
    ]
    last = days[-1] if days else None
    desc = (
        gettext("Balance at the end of each day, latest {points} points").format(
            points=to_points(last.balance_millipoints)
        )
        if last
        else gettext("The window has not started.")
    )
    parts.append(f'<desc id="burn-down-desc">{escape(desc)}</desc>')
    # axes and the zero line
    parts.append(
        f'<g stroke="#57606a" stroke-width="1" fill="none">'
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/>'
        f'<line x1="{LEFT}" y1="{y(bottom_value)}" x2="{LEFT + plot_w}" y2="{y(bottom_value)}"/>'
        "</g>"
    )
    if bottom_value < 0:
        parts.append(
            f'<line x1="{LEFT}" y1="{y(0)}" x2="{LEFT + plot_w}" y2="{y(0)}" '
            'stroke="#b3261e" stroke-width="1"/>'
        )
    label = 'font-size="11" fill="#57606a" font-family="system-ui, sans-serif"'
    for value in sorted({top_value, 0, bottom_value}):
        parts.append(
            f'<text x="{LEFT - 6}" y="{y(value)}" text-anchor="end" dominant-baseline="middle" '
            f"{label}>{to_points(value)}</text>"
        )
    start_label = taipei(window_start).strftime("%Y-%m-%d")
    end_label = taipei(last_second(window_end)).strftime("%Y-%m-%d")
    base = TOP + plot_h + 16
    parts.append(f'<text x="{LEFT}" y="{base}" {label}>{start_label}</text>')
    parts.append(
        f'<text x="{LEFT + plot_w}" y="{base}" text-anchor="end" {label}>{end_label}</text>'
    )
    if window_start < now < window_end:
        parts.append(
            f'<line x1="{x(now)}" y1="{TOP}" x2="{x(now)}" y2="{TOP + plot_h}" '
            'stroke="#d0d7de" stroke-width="1"/>'
            f'<text x="{x(now)}" y="{base + 14}" text-anchor="middle" {label}>'
            f"{today}</text>"
        )
    if days:
        points = " ".join(f"{x(d.end)},{y(d.balance_millipoints)}" for d in days)
        parts.append(
            f'<polyline class="balance-line" points="{points}" fill="none" stroke="#0b3d91" '
            'stroke-width="2"/>'
        )
        for d in days:
            parts.append(
                f'<circle cx="{x(d.end)}" cy="{y(d.balance_millipoints)}" r="2.5" '
                f'fill="#0b3d91"><title>{d.day.isoformat()}: '
                f"{to_points(d.balance_millipoints)}</title></circle>"
            )
    if forecast_to and last is not None:
        parts.append(
            f'<line class="forecast-line" x1="{x(last.end)}" y1="{y(last.balance_millipoints)}" '
            f'x2="{x(forecast_to[0])}" y2="{y(forecast_to[1])}" stroke="#bf8700" '
            'stroke-width="2" stroke-dasharray="6 4"/>'
        )
    # legend
    parts.append(
        f"<g {label}>"
        f'<line x1="{LEFT + 10}" y1="{TOP + 6}" x2="{LEFT + 34}" y2="{TOP + 6}" '
        'stroke="#0b3d91" stroke-width="2"/>'
        f'<text x="{LEFT + 40}" y="{TOP + 10}">{balance}</text>'
        f'<line x1="{LEFT + 140}" y1="{TOP + 6}" x2="{LEFT + 164}" y2="{TOP + 6}" '
        'stroke="#bf8700" stroke-width="2" stroke-dasharray="6 4"/>'
        f'<text x="{LEFT + 170}" y="{TOP + 10}">{forecast_label}</text>'
        "</g>"
    )
    parts.append("</svg>")
    return Markup("".join(parts))
