"""Parameter errors of the phantoms: one exception type, messages that name the parameter.

Every phantom config validates itself in ``__post_init__`` and raises
:class:`PhantomParameterError` (a :class:`ValueError`) with a message of the form
``"gls_pct=-55 is outside -40..+20 %"`` so that the CLI can print it as it is.
"""

from __future__ import annotations

import math


class PhantomParameterError(ValueError):
    """A phantom parameter is invalid; the message names it, its value and what is allowed."""


def _fmt(x: float) -> str:
    return f"{x:g}"


def require_range(name: str, value: float, lo: float, hi: float, unit: str = "") -> float:
    """Return ``value`` as float if ``lo <= value <= hi`` (and finite), else raise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PhantomParameterError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(v) or v < lo or v > hi:
        hi_s = f"{hi:+g}" if lo < 0 else _fmt(hi)
        msg = f"{name}={_fmt(v) if math.isfinite(v) else value} is outside {_fmt(lo)}..{hi_s}"
        raise PhantomParameterError(msg + (f" {unit}" if unit else ""))
    return v


def require_positive(name: str, value: float, unit: str = "") -> float:
    """Return ``value`` as float if it is finite and > 0, else raise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PhantomParameterError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        shown = _fmt(v) if math.isfinite(v) else value
        raise PhantomParameterError(f"{name}={shown} must be > 0" + (f" ({unit})" if unit else ""))
    return v


def require_int_range(name: str, value: int, lo: int, hi: int) -> int:
    """Return ``value`` as int if it is an integer in ``lo..hi``, else raise."""
    if isinstance(value, bool) or not float(value).is_integer():
        raise PhantomParameterError(f"{name}={value!r} must be an integer")
    v = int(value)
    if v < lo or v > hi:
        raise PhantomParameterError(f"{name}={v} is outside {lo}..{hi}")
    return v


def require_choice(name: str, value: str, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming the choices."""
    if value not in choices:
        raise PhantomParameterError(f"{name}={value!r} is unknown; choose one of {', '.join(choices)}")
    return value
