"""Text rendering shared by every result that prints as a rich table."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from rich.console import Console

__all__ = ["format_number", "render_text"]


def render_text(renderable: Any, width: int = 110) -> str:
    """Render a rich renderable to plain text (no colour codes)."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(renderable)
    return buffer.getvalue().rstrip("\n")


def format_number(value: float, fmt: str = ".3f") -> str:
    """``value`` formatted with ``fmt``; an en dash for NaN or missing; never ``-0.000``."""
    if value is None or not np.isfinite(value):
        return "–"
    text = format(value, fmt)
    # A value that rounds to zero prints as 0, not as -0.000 beside +0.000.
    return format(0.0, fmt) if float(text) == 0 else text
