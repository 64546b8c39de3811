"""Domain errors and warnings, and the helpers that raise them where bad input enters."""

from __future__ import annotations

import warnings
from pathlib import Path

# Warnings point at the first frame outside the package: the user's call.
_PACKAGE_DIRECTORY = (str(Path(__file__).resolve().parent),)


class HierpsError(Exception):
    """Base class of every error hierps raises on purpose."""


class DataError(HierpsError, ValueError):
    """The data frame or the column roles given to hierps are not usable."""


class FormulaError(HierpsError, ValueError):
    """A model or balance formula cannot be parsed or refers to unusable terms."""


class ConvergenceError(HierpsError, RuntimeError):
    """A fit did not reach its convergence criterion."""


class ArgumentError(HierpsError, ValueError):
    """An argument of a hierps function has a value it cannot take (out of range, unknown)."""


class ArgumentTypeError(HierpsError, TypeError):
    """An argument of a hierps function has the wrong type."""


class ResultFileError(HierpsError, ValueError):
    """A file is not a complete result written by hierps (truncated, foreign or newer)."""


class HierpsWarning(UserWarning):
    """A problem with a defined result: the data or fit is usable but deserves a look."""


def warn(message: str, category: type[Warning] = HierpsWarning) -> None:
    """Issue ``message`` as a warning attributed to the user's code that called into hierps."""
    warnings.warn(message, category, skip_file_prefixes=_PACKAGE_DIRECTORY)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise :class:`ArgumentError` naming the argument and the valid choices unless ``value``
    is one."""
    if not isinstance(value, str) or value not in choices:
        valid = ", ".join(repr(choice) for choice in choices)
        raise ArgumentError(f"{name}={value!r} is not one of {valid}")
