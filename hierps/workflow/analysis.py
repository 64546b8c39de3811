"""A complete analysis from a model file: fit, estimate, diagnose, and write every output.

``hierps fit MODEL.toml --out DIR`` calls :func:`run_analysis`. Each step reads the previous
step's result; nothing here computes statistics of its own beyond arranging tables.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from hierps.calibrated.fit import MapResult
from hierps.calibrated.path import pooling_path
from hierps.design.build import ColumnRoles
from hierps.exceptions import HierpsWarning
from hierps.model import Model
from hierps.workflow.spec import ModelSpec, load_data
from hierps.workflow.storage import map_dataset, save

__all__ = ["AnalysisResult", "run_analysis"]


@dataclass
class AnalysisResult:
    """Everything one analysis produced, in memory."""

    spec: ModelSpec
    model: Model
    map_fit: MapResult
    path_table: pd.DataFrame | None = None
    posterior: object | None = None
    constraint_fit: object | None = None
    pooled: object | None = None
    truth: object | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def build_model(spec: ModelSpec, frame: pd.DataFrame) -> Model:
    """The :class:`Model` a model file describes."""
    data = spec.data
    roles = ColumnRoles(
        treatment=data.treatment,
        group=data.group,
        outcome=data.outcome,
        unit_covariates=tuple(data.unit_covariates),
        group_covariates=tuple(data.group_covariates),
        categorical=tuple(data.categorical),
        varying_slopes=None if data.varying_slopes is None else tuple(data.varying_slopes),
        weights=data.weights,
    )
    return Model.from_roles(frame, roles, standardize=data.standardize)


def check_spec(spec: ModelSpec) -> Model:
    """Run every check :func:`run_analysis` runs before fitting, and return the model.

    Reads the data, validates every value of the named columns (:class:`Model`), the MAP
    hyperparameters and, with a ``[balance]`` section, the balance formulas.
    """
    from hierps.design.hyperparameters import MapHyperparameters

    frame, _ = load_data(spec)
    model = build_model(spec, frame)
    fixed = {k: v for k, v in spec.map_hyperparameters().items() if v != "auto"}
    MapHyperparameters.from_user(int(model.design.varying.sum()), **fixed)
    if spec.balance is not None:
        _constraint_fit(spec, frame, fit=False)
    return model


@contextlib.contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """Record hierps' warnings of the block instead of showing them: the list yielded holds
    each distinct message once, in order, when the block ends."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HierpsWarning)
        yield messages
    messages.extend(
        dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, HierpsWarning))
    )


def run_analysis(
    spec: ModelSpec,
    out_dir: str | Path | None = None,
    sample: bool | None = None,
    report: Callable[[str], None] = lambda message: None,
) -> AnalysisResult:
    """Run the analysis of a model file and, with ``out_dir``, write its outputs.

    Parameters
    ----------
    spec
        A validated model file (:func:`hierps.workflow.spec.read_spec`).
    out_dir
        Where to write ``result.nc``, ``weights.csv``, ``catt.csv``, ``balance.csv``,
        ``figures/*.png`` and ``report.md``. ``None`` writes nothing.
    sample
        Override ``posterior.enabled`` of the file.
    report
        Called with a short message as each step starts (the CLI shows progress with it).
    """
    if spec.data.engine == "dask":
        from hierps.workflow.distributed import run_distributed

        return run_distributed(spec, None if out_dir is None else Path(out_dir), report)
    with collected_warnings() as messages:
        result = _run(spec, sample, report)
    result.warnings = messages
    if out_dir is not None:
        report("writing outputs")
        from hierps.workflow.report import write_outputs

        result.files = write_outputs(result, Path(out_dir))
    return result


def _run(spec: ModelSpec, sample: bool | None, report) -> AnalysisResult:
    timings: dict[str, float] = {}
    report("reading and validating the data")
    frame, study = load_data(spec)
    model = build_model(spec, frame)

    report("fitting MAP balancing weights")
    start = time.perf_counter()
    estimand = spec.output.estimand
    map_fit = model.fit_map(
        **spec.map_hyperparameters(),
        max_iterations=spec.map.max_iterations,
        estimand=estimand,
        deviations=spec.map.deviations,
    )
    timings["map"] = time.perf_counter() - start

    path_table = None
    if spec.map.pooling_path:
        report("tracing the pooling path")
        start = time.perf_counter()
        fixed = {k: v for k, v in spec.map_hyperparameters().items() if k != "sigma_beta"}
        # The path is traced at the scales the MAP fit used, with its "auto" values marked.
        if fixed.get("sigma_alpha") == "auto":
            fixed["sigma_alpha"] = map_fit.hyperparameters.sigma_alpha
        path_table = pooling_path(
            model,
            sigma_beta=spec.map.pooling_path,
            auto=spec.map.sigma_beta == "auto",
            estimand=estimand,
            deviations=spec.map.deviations,
            **fixed,
        )
        timings["pooling_path"] = time.perf_counter() - start

    constraint_fit = None
    if spec.balance is not None:
        report("balancing the natstrat constraints")
        constraint_fit = _constraint_fit(spec, frame)

    posterior = None
    if (spec.posterior.enabled if sample is None else sample) and spec.data.outcome:
        settings = spec.posterior
        report(f"sampling the posterior ({settings.chains} chains x {settings.draws} draws)")
        start = time.perf_counter()
        fixed = {
            name: value
            for name in ("sigma_alpha", "sigma_beta")
            if (value := getattr(settings, name)) is not None
        }
        posterior = model.sample(
            draws=settings.draws,
            tune=settings.tune,
            chains=settings.chains,
            random_seed=settings.random_seed,
            sampler=settings.sampler,
            uncertainty=settings.uncertainty,
            estimand=estimand,
            deviations=settings.deviations,
            rank=settings.rank,
            **fixed,
        )
        timings["posterior"] = time.perf_counter() - start

    pooled = None
    if posterior is not None and spec.pooling is not None and estimand == "att":
        from hierps.effects.catt_pooling import pool_catt

        report("pooling the CATTs")
        pooled = pool_catt(
            posterior,
            group_covariates=spec.pooling.group_covariates or None,
            draws=spec.pooling.draws,
            tune=spec.pooling.tune,
            random_seed=spec.pooling.random_seed,
        )

    return AnalysisResult(
        spec=spec,
        model=model,
        map_fit=map_fit,
        path_table=path_table,
        posterior=posterior,
        constraint_fit=constraint_fit,
        pooled=pooled,
        truth=study,
        timings=timings,
    )


def _constraint_fit(spec: ModelSpec, frame: pd.DataFrame, fit: bool = True):
    from hierps.natstrat.constraints import generate_constraints
    from hierps.natstrat.weights import constraint_weights

    balance = spec.balance
    treatment = frame[spec.data.treatment]
    columns = balance.covariates or [c for c in frame.columns if c != spec.data.treatment]
    constraints = generate_constraints(
        balance.formulas,
        treatment,
        frame[columns],
        default_rhs=balance.default_rhs,
        weight_by_size=balance.weight_by_size,
        denom_variance=balance.denom_variance,
        autogen_missing=balance.autogen_missing,
    )
    if not fit:
        return constraints
    return constraint_weights(constraints, treatment, scale=balance.scale)


def analysis_tree(result: AnalysisResult) -> xr.DataTree:
    """All results of an analysis as one DataTree (what ``result.nc`` holds)."""
    children: dict[str, xr.Dataset | xr.DataTree] = {"map": map_dataset(result.map_fit)}
    if result.path_table is not None:
        children["pooling_path"] = xr.Dataset.from_dataframe(result.path_table)
    if result.constraint_fit is not None:
        fit = result.constraint_fit
        children["constraints"] = xr.Dataset(
            {"weight": (("obs",), fit.weights.to_numpy())},
            coords={"obs": np.asarray(fit.weights.index)},
        ).merge(xr.Dataset.from_dataframe(fit.balance()))
    tree = xr.DataTree.from_dict(children)
    if result.posterior is not None:
        tree["posterior_mode"] = result.posterior.idata
    if result.pooled is not None:
        tree["pooled_catt"] = result.pooled.idata
    tree.attrs = {
        "model_name": result.spec.name,
        "description": result.spec.description,
        "model_file": result.spec.model_dump_json(exclude={"source"}),
    }
    return tree


def write_tree(result: AnalysisResult, path: Path) -> Path:
    return save(analysis_tree(result), path)
