"""The README's Python example runs as written (with fewer draws)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_example_runs():
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert 12 <= len(block.strip().splitlines()) <= 20
    pooling = 'hierps.pool_catt(post, group_covariates=["v1", "v2"])'
    assert pooling in block
    fast = block.replace("draws=1000", "draws=150, tune=150").replace(
        pooling, pooling[:-1] + ", draws=200, tune=200)"
    )
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(fast, str(README), "exec"), namespace)
    assert namespace["post"].catt.shape[0] == 30
    assert set(namespace["pooled"].moderators.index) >= {"v1", "v2"}
