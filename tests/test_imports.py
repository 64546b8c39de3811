"""What importing hierps costs: heavy dependencies load only when used, and imports change
no global state. Each check runs in a fresh interpreter so that other tests' imports cannot hide
a regression."""

from __future__ import annotations

import json
import subprocess
import sys
from textwrap import dedent

import pytest

# The posterior, formula-model and plotting stack: never needed to import hierps.
HEAVY = ("pymc", "pytensor", "bambi", "arviz", "matplotlib", "nutpie")
# Public names that need PyMC or matplotlib by design.
# Names that build or read PyMC models (calibration shares its module with the prior
# predictive, and a posterior to check has loaded PyMC already).
HEAVY_NAMES = {"build_pymc", "sample", "sample_prior_predictive", "calibration", "plots"}


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run(
        [sys.executable, "-c", dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def loaded(modules: tuple[str, ...]) -> str:
    """Code for the list of ``modules`` (or their submodules) present in ``sys.modules``."""
    return (
        f"[m for m in {list(modules)!r} "
        "if any(k == m or k.startswith(m + '.') for k in sys.modules)]"
    )


def test_import_hierps_loads_no_heavy_dependency():
    found = run_python(
        f"""
        import json, sys
        import hierps
        print(json.dumps({loaded((*HEAVY, "scipy.optimize"))}))
        """
    )
    assert found == []


def test_map_mode_loads_no_posterior_or_plotting_stack():
    found = run_python(
        f"""
        import json, sys
        import hierps
        study = hierps.datasets.simulate_multisite(n_groups=5, seed=1)
        model = hierps.Model(
            study.data, treatment=study.treatment, group=study.group, outcome=study.outcome,
            unit_covariates=study.unit_covariates, group_covariates=study.group_covariates,
        )
        fit = model.fit_map()
        assert fit.iterations > 0 and abs(fit.att) < 10, fit
        print(json.dumps({loaded(HEAVY)}))
        """
    )
    assert found == []


def test_public_names_load_the_heavy_stack_only_when_they_need_it():
    light = sorted(set(__import__("hierps").__all__) - HEAVY_NAMES)
    culprits = run_python(
        f"""
        import json, sys
        import hierps
        culprits = {{}}
        for name in {light!r}:
            getattr(hierps, name)
            found = {loaded(HEAVY)}
            if found:
                culprits[name] = found
                break
        print(json.dumps(culprits))
        """
    )
    assert culprits == {}


def test_every_public_name_resolves():
    import hierps

    for name in hierps.__all__:
        assert getattr(hierps, name) is not None, name
    assert dir(hierps) == sorted(hierps.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Modle'"):
        _ = hierps.Modle


def test_importing_every_module_changes_no_global_state():
    changed = run_python(
        """
        import importlib, json, logging, pkgutil, warnings
        import matplotlib
        matplotlib.use("svg")  # a caller's choice of backend, which hierps must keep
        import numpy as np

        # Third-party modules that hierps modules import at module level: their own import-time
        # effects are not hierps's.
        for name in ["pymc", "pytensor.tensor", "xarray", "rich.console", "typer", "pydantic",
                     "matplotlib.pyplot", "threadpoolctl", "scipy.sparse", "scipy.special",
                     "scipy.fft", "pandas"]:
            importlib.import_module(name)

        def state():
            loggers = logging.Logger.manager.loggerDict
            return {
                "warnings filters": list(warnings.filters),
                "numpy error state": np.geterr(),
                "matplotlib rcParams": dict(matplotlib.rcParams),
                "root logger": (logging.root.level, list(logging.root.handlers)),
                "loggers": {name: (logger.level, list(logger.handlers))
                            for name, logger in loggers.items()
                            if isinstance(logger, logging.Logger)},
            }

        before = state()
        import hierps
        names = [info.name for info in pkgutil.walk_packages(hierps.__path__, "hierps.")]
        names.remove("hierps.__main__")  # running it runs the command
        for name in names:
            importlib.import_module(name)
        after = state()
        # Loggers that hierps modules create are theirs to configure; others must not change.
        after["loggers"] = {k: v for k, v in after["loggers"].items() if k in before["loggers"]}
        changed = [key for key in before if before[key] != after[key]]
        print(json.dumps({"changed": changed, "backend": matplotlib.get_backend(),
                          "modules": len(names)}))
        """
    )
    assert changed["changed"] == []
    assert changed["backend"] == "svg"
    assert changed["modules"] > 40  # the walk really imported the package's modules
