"""Checks on user input, shared by every layer: the library functions, the CLI's argparse types and the app.

Each check either returns the value in its proper type or raises one sentence that names the bad value and
the fix. :class:`UserError` marks a mistake in the user's input (printed without a traceback, exit code 2);
it is a ``ValueError``, so it reads naturally from Python too.
Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["UserError", "Progress", "check_finite", "check_int", "check_range", "finite_float", "int_at_least"]

#: A progress callback: ``progress(stage, done, total, info)`` (``info``: a dict of extra figures, e.g. the loss).
Progress = Callable[[str, int, int, dict], None]


class UserError(ValueError):
    """An error caused by the user's input; printed as one sentence, exit code 2. It is a ``ValueError``, so
    code that calls the library and catches ``ValueError`` catches it too."""


def check_finite(value, what: str = "weight") -> float:
    """A finite float, or one clear error naming the bad value."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise UserError(f"{what} must be a finite number, got {value!r}")
    return v


def check_int(value, what: str, minimum: int, maximum: int | None = None) -> int:
    """A whole number in ``[minimum, maximum]`` (``3.0`` is accepted, ``3.5`` and ``"x"`` are not)."""
    try:
        v = int(value)
        ok = v == float(value)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if maximum is not None and (not ok or not minimum <= v <= maximum):
        raise UserError(f"{what} must be a whole number from {minimum} to {maximum}, got {value!r}")
    if not ok:
        raise UserError(f"{what} must be a whole number, got {value!r}")
    if v < minimum:
        raise UserError(f"{what} must be at least {minimum}, got {v}")
    return v


def check_range(value, what: str, lo: float, hi: float, meaning: str = "") -> float:
    """A finite number in ``[lo, hi]``; ``meaning`` explains the ends, e.g. ``"0 keeps the photo, 1 ignores it"``."""
    v = check_finite(value, what)
    if not lo <= v <= hi:
        raise UserError(f"{what} must be between {lo:g} and {hi:g}, got {v:g}" + (f" ({meaning})" if meaning else ""))
    return v


# ----------------------------------------------------------------------------------------------------------
# argparse types: the same checks, reported by argparse as "argument --flag: <sentence>"
def finite_float(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        return v

    parse.__name__ = f"int_at_least_{minimum}"
    return parse

