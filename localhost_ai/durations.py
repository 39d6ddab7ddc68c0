"""Parses human durations ("15m", "30s", "1h30m", 90, "-1") into seconds, as Ollama's keep_alive does."""

from __future__ import annotations

import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: str | float | int) -> float:
    """Seconds for a duration; a negative value means "forever" and is returned as -1."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '15m'")
    if isinstance(value, (int, float)):
        return -1.0 if value < 0 else float(value)
    text = value.strip().lower()
    if text in {"never", "forever", "inf"}:
        return -1.0
    try:
        number = float(text)
        return -1.0 if number < 0 else number
    except ValueError:
        pass
    if text.startswith("-"):
        return -1.0
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {value!r}: use seconds or a string like '30s', '15m', '1h'")
    return total
