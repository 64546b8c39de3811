"""Shared fixtures (shared helper functions live in ``helpers.py``)."""

from __future__ import annotations

import pytest
from helpers import make_frame


@pytest.fixture(scope="session")
def small_study():
    return make_frame(seed=3, sizes=(5, 60), n_groups=6, n_unit=2, n_group=1)
