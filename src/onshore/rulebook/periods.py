"""Calendar arithmetic the law uses: years and months that end on anniversaries, working days,
and the counting windows (calendar year, trailing 12 months).

Kept apart because approvals (validity, renewal deadlines) and evaluation (windows) both need the
same answers, and an off-by-one here moves a threshold.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, timedelta
from typing import Literal

__all__ = ["WINDOWS", "Window", "shift_months", "shift_working_days", "window_start"]

Window = Literal["calendar_year", "trailing_12_months", "none"]
"""A counting window: since 1 January of the request's year (China), the 12 months up to the
request's date (US), or no window (this transfer alone)."""

WINDOWS: tuple[Window, ...] = ("calendar_year", "trailing_12_months", "none")


def shift_months(day: date, months: int, *, overflow: Literal["next", "clamp"]) -> date:
    """``day`` moved by ``months`` (negative: back). Where the target month has no such day
    (29 February in a common year, 31 April), ``overflow="next"`` gives the 1st of the month
    after, ``"clamp"`` the month's last day."""
    index = day.year * 12 + day.month - 1 + months
    year, month0 = divmod(index, 12)
    try:
        return day.replace(year=year, month=month0 + 1)
    except ValueError:
        first_of_next = date(year + (month0 + 1) // 12, (month0 + 1) % 12 + 1, 1)
        return first_of_next if overflow == "next" else first_of_next - timedelta(days=1)


def shift_working_days(day: date, count: int, holidays: Collection[date] = ()) -> date:
    """The day ``count`` working days after ``day`` (before it when ``count`` is negative).
    Working days are Monday to Friday except ``holidays``; public holidays (and China's swapped
    weekend working days) are not known to onshore, so pass them for an exact figure."""
    step = timedelta(days=1 if count >= 0 else -1)
    left = abs(count)
    current = day
    while left:
        current += step
        if current.weekday() < 5 and current not in holidays:
            left -= 1
    return current


def window_start(window: Window, on: date) -> date | None:
    """First day counted by ``window`` for a transfer on ``on`` (inclusive), or ``None`` for
    no window (only the transfer itself counts).

    ``calendar_year``: 1 January of ``on``'s year. ``trailing_12_months``: the same day 12 months
    earlier, itself included, so a transfer exactly one year (365 or 366 days) before still
    counts; where that day does not exist (29 February) the day before it. Both choices count
    the earlier, wider way: a window that is a day too wide can only make a decision stricter.
    """
    match window:
        case "calendar_year":
            return date(on.year, 1, 1)
        case "trailing_12_months":
            return shift_months(on, -12, overflow="clamp")
        case "none":
            return None
