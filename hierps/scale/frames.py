"""Recognizing Dask input without importing Dask (``import hierps`` must stay cheap)."""

from __future__ import annotations

__all__ = ["is_dask_frame"]


def is_dask_frame(data: object) -> bool:
    """Whether ``data`` is a Dask DataFrame, judged by its type's module and name."""
    kind = type(data)
    return kind.__module__.split(".")[0] == "dask" and kind.__name__ == "DataFrame"
