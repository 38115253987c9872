"""Parsing and printing human-sized counts such as ``2M`` or ``500k``."""

from __future__ import annotations

import re

from jsaectl.errors import ConfigError

MAX_COUNT = 1e18  # far beyond any store, and well inside int64
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_COUNT = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kmbgt]?)\s*$", re.IGNORECASE)


def parse_count(text: str | int, what: str = "count") -> int:
    """``"2M"`` -> 2_000_000, ``"500k"`` -> 500_000, ``"1.5e6"`` -> 1_500_000.

    Suffixes are decimal (k = 1e3, M = 1e6, B/G = 1e9, T = 1e12) and case-insensitive.
    """
    if isinstance(text, int):
        value = text
    else:
        match = _COUNT.match(str(text))
        if not match:
            raise ConfigError(
                f"{what} must be a number like 2000000, 2M or 500k, not {text!r}",
                hint="suffixes k, M, B mean thousand, million, billion",
            )
        number, suffix = match.groups()
        scaled = float(number.replace("_", "")) * _SUFFIX[suffix.lower()]
        if not scaled < MAX_COUNT:  # 1e400 is inf: no count at all
            raise ConfigError(f"{what} {text!r} is beyond any count jsaectl can hold (at most {MAX_COUNT:.0e})",
                              hint="give a count such as 300M")
        value = int(round(scaled))
    if value <= 0:
        raise ConfigError(f"{what} must be positive, not {text!r}")
    return value


def format_count(n: float) -> str:
    """2_000_000 -> '2M', 1_536 -> '1.5k' (for names and tables, not for parsing back exactly)."""
    for factor, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k")):
        if abs(n) >= factor:
            value = n / factor
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return f"{n:.3g}"
