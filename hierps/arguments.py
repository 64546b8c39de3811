"""Checks of function arguments where they enter hierps: type and range, named in the error.

Each checker returns the value in the form the caller uses (a Python ``int`` or ``float``)
and raises :class:`~hierps.exceptions.ArgumentTypeError` for a wrong type or
:class:`~hierps.exceptions.ArgumentError` for a value out of range. Booleans are not numbers
here (``True`` as a prior scale is a mistake, not 1.0) and neither are strings (``"1"``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

from hierps.exceptions import ArgumentError, ArgumentTypeError

__all__ = [
    "check_column",
    "check_columns",
    "check_flag",
    "check_integer",
    "check_number",
    "check_probability",
    "check_seed",
]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def check_integer(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an ``int`` of at least ``minimum``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ArgumentTypeError(
            f"{name} must be an integer (at least {minimum}), not {type(value).__name__} {value!r}"
        )
    if value < minimum:
        raise ArgumentError(f"{name} must be at least {minimum}, not {value}")
    return int(value)


def check_number(
    name: str, value: object, positive: bool = True, allow_zero: bool = False
) -> float:
    """``value`` as a finite ``float``; by default strictly positive."""
    if not _is_number(value):
        raise ArgumentTypeError(f"{name} must be a number, not {type(value).__name__} {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ArgumentError(f"{name} must be finite, not {number}")
    if positive and (number < 0 or (number == 0 and not allow_zero)):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ArgumentError(f"{name} must be {bound}, not {number:g}")
    return number


def check_probability(name: str, value: object) -> float:
    """A number strictly between 0 and 1."""
    number = check_number(name, value, positive=False)
    if not 0 < number < 1:
        raise ArgumentError(f"{name} must lie strictly between 0 and 1, not {number:g}")
    return number


def check_flag(name: str, value: object) -> bool:
    """``True`` or ``False`` (a NumPy bool too); not 0/1 or a string such as ``"no"``."""
    if not isinstance(value, bool | np.bool_):
        raise ArgumentTypeError(
            f"{name} must be True or False, not {type(value).__name__} {value!r}"
        )
    return bool(value)


def check_seed(
    name: str, value: object
) -> int | np.random.SeedSequence | np.random.Generator | None:
    """A seed: ``None``, a non-negative integer, a ``SeedSequence`` or a ``Generator``."""
    if value is None or isinstance(value, np.random.SeedSequence | np.random.Generator):
        return value
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ArgumentTypeError(
            f"{name} must be None, a non-negative integer or a numpy.random.Generator, not "
            f"{type(value).__name__} {value!r}"
        )
    if value < 0:
        raise ArgumentError(f"{name} must be a non-negative integer, not {value}")
    return int(value)


def seed_sequence(name: str, value: object) -> np.random.SeedSequence:
    """The :class:`numpy.random.SeedSequence` of a checked seed (a Generator gives one draw)."""
    value = check_seed(name, value)
    if isinstance(value, np.random.SeedSequence):
        return value
    if isinstance(value, np.random.Generator):
        # The generator advances, as any use of a user's generator would.
        return np.random.SeedSequence(int(value.integers(0, 2**63)))
    return np.random.SeedSequence(value)


def check_column(name: str, value: object, optional: bool = False) -> Hashable | None:
    """A column label: a string (or another hashable scalar label); ``None`` if optional."""
    if value is None and optional:
        return None
    if (
        value is None
        or isinstance(value, list | tuple | set | dict | np.ndarray)
        or not isinstance(value, Hashable)
    ):
        kind = "a column name or None" if optional else "a column name"
        raise ArgumentTypeError(f"{name} must be {kind}, not {type(value).__name__} {value!r}")
    return value


def check_columns(name: str, value: object, optional: bool = False) -> tuple | None:
    """A list of column labels; a lone string is refused (``["x"]``, not ``"x"``)."""
    if value is None and optional:
        return None
    if isinstance(value, str):
        raise ArgumentTypeError(
            f"{name} must be a list of column names, not the string {value!r}; write [{value!r}]"
        )
    if not isinstance(value, Sequence | np.ndarray | set | frozenset | pd.Index | pd.Series) or (
        isinstance(value, bytes)
    ):
        raise ArgumentTypeError(
            f"{name} must be a list of column names, not {type(value).__name__} {value!r}"
        )
    for item in value:
        check_column(f"{name} entry", item)
    return tuple(value)


def check_sampling(
    draws: object, tune: object, chains: object, random_seed: object
) -> dict[str, object]:
    """The usual arguments of a sampling call: ``draws``, ``chains`` ≥ 1, ``tune`` ≥ 0 and a
    seed (not a ``SeedSequence``, which the samplers do not take).

    Returns them as the keyword arguments of ``pm.sample`` and Bambi's ``fit``.
    """
    check_integer("draws", draws)
    check_integer("tune", tune, minimum=0)
    check_integer("chains", chains)
    if isinstance(random_seed, np.random.SeedSequence):
        raise ArgumentTypeError("random_seed must be None, an integer or a Generator here")
    check_seed("random_seed", random_seed)
    return {"draws": draws, "tune": tune, "chains": chains, "random_seed": random_seed}
