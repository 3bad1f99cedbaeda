"""Query-string parameters shared by pages and the JSON API: windows, steps, refresh."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fleetscope.config import parse_duration_ms

WINDOWS = ("1h", "6h", "24h", "7d", "14d")  # the time-range picker
REFRESH = {"off": 0, "30s": 30, "1m": 60}  # auto-refresh choices → seconds
MAX_WINDOW_MS = 400 * 86_400_000
_NICE_STEPS_S = (15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
POINTS = 240  # target points per line chart


def parse_duration(text: str) -> int:
    """Milliseconds of a window given as a Prometheus duration (``30m``, ``7d``, ``2w``).

    Raises ``ValueError`` with a message for anything else, zero, or more than 400 days.
    """
    ms = parse_duration_ms(text)
    if ms > MAX_WINDOW_MS:
        raise ValueError(f"window {text!r} is longer than 400d")
    return ms


def step_for(window_ms: int) -> int:
    """A round step (ms) giving at most about :data:`POINTS` points over the window."""
    want = window_ms / POINTS
    for s in _NICE_STEPS_S:
        if s * 1000 >= want:
            return s * 1000
    return _NICE_STEPS_S[-1] * 1000 * -(-int(want) // (_NICE_STEPS_S[-1] * 1000))


def bucket_for(window_ms: int) -> int:
    """Bucket (ms) of the stacked GPU-hours chart: 5 minutes up to 1h, an hour up to 24h, else a
    day."""
    if window_ms <= 3_600_000:
        return 300_000
    return 3_600_000 if window_ms <= 86_400_000 else 86_400_000


def view_state(window: str, refresh: str) -> int:
    """Check a page's ``window`` and ``refresh`` parameters; the window in milliseconds.

    Raises ``ValueError`` with a message for the page's error response.
    """
    window_ms = parse_duration(window)
    if refresh not in REFRESH:
        raise ValueError(f"refresh must be one of {', '.join(REFRESH)}, not {refresh!r}")
    return window_ms


def nav_context(path: str, window: str, refresh: str, at_ms: int) -> dict[str, Any]:
    """What the pickers of ``_nav.html`` need: the window and refresh choices, ``link`` (this
    page's URL with one of them changed; the default refresh is left out) and the update time."""

    def link(**change: str) -> str:
        state = {"window": window, "refresh": refresh} | change
        query = {k: v for k, v in state.items() if not (k == "refresh" and v == "off")}
        return f"{path}?{urlencode(query)}"

    updated = datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%H:%M:%S")
    nav: dict[str, Any] = {
        "window": window,
        "windows": WINDOWS,
        "refresh": refresh,
        "refresh_choices": list(REFRESH),
        "refresh_s": REFRESH[refresh],
        "link": link,
        "updated": updated,
    }
    return nav
