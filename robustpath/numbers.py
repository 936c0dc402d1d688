"""Parsing of numeric flags such as ``--eps 8/255``."""

from __future__ import annotations

from fractions import Fraction

from robustpath.errors import UserError


def parse_fraction(text: str | float | int, *, name: str = "value", minimum: float = 0.0,
                   allow_zero: bool = True) -> float:
    """Parse ``"8/255"``, ``"0.031"`` or a number into a float.

    Raises :class:`UserError` for anything else, for negative values, and for zero
    when ``allow_zero`` is false.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip()
        try:
            value = float(Fraction(s))
        except (ValueError, ZeroDivisionError):
            raise UserError(f"{name} must be a number or a fraction like 8/255, got {text!r}") from None
        except OverflowError:  # 1e309: beyond float range
            raise UserError(f"{name} must be finite, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise UserError(f"{name} must be finite, got {text!r}")
    if value < minimum or (not allow_zero and value == 0):
        bound = f"> {minimum}" if not allow_zero else f">= {minimum}"
        raise UserError(f"{name} must be {bound}, got {text!r}")
    return value


def parse_int_list(text: str, *, name: str) -> list[int]:
    """Parse ``"0,1"`` or ``"0 1"`` into a list of ints."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise UserError(f"{name} must be a comma-separated list of integers, got {text!r}") from None


def parse_float_list(text: str, *, name: str) -> list[float]:
    """Parse ``"0.5,1,2"`` (fractions like ``8/255`` allowed) into positive floats."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    if not parts:
        raise UserError(f"{name} needs at least one number, got {text!r}")
    return [parse_fraction(p, name=name, allow_zero=False) for p in parts]
