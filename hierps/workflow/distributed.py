"""A model file with ``data.engine = "dask"``: MAP weights on a Dask cluster, and their tables.

The run reads the Parquet (or CSV) files lazily, validates and standardizes by aggregation,
fits by map-reduce on the cluster (docs/scale.md), and writes what stays small — the CATT
table, the balance table, the coefficients and a short report — plus the unit weights as a
Parquet directory written by the workers, one file per input partition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hierps.scale.cluster import dask_client
from hierps.workflow.analysis import AnalysisResult, build_model, collected_warnings
from hierps.workflow.spec import ModelSpec, load_data

__all__ = ["run_distributed", "write_distributed"]


def run_distributed(
    spec: ModelSpec, out_dir: Path | None, report: Callable[[str], None]
) -> AnalysisResult:
    """Validate, fit and (with ``out_dir``) write, on the file's scheduler or a LocalCluster."""
    timings: dict[str, float] = {}
    with dask_client(spec.data.scheduler):
        with collected_warnings() as messages:
            report("validating the data on the cluster")
            start = time.perf_counter()
            frame, _ = load_data(spec)
            model = build_model(spec, frame)
            timings["design"] = time.perf_counter() - start
            report("fitting MAP balancing weights on the cluster")
            start = time.perf_counter()
            options = spec.map_hyperparameters()
            fit = model.fit_map(
                **options,
                max_iterations=spec.map.max_iterations,
                deviations=spec.map.deviations,
            )
            timings["map"] = time.perf_counter() - start
            result = AnalysisResult(spec=spec, model=model, map_fit=fit, timings=timings)
        result.warnings = messages
        if out_dir is not None:
            report("writing outputs")
            result.files = write_distributed(result, Path(out_dir))
    return result


def write_distributed(result: AnalysisResult, out_dir: Path) -> list[Path]:
    """``catt.csv``, ``balance.csv``, ``coefficients.nc``, ``weights/`` and ``report.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fit, design = result.map_fit, result.model.design
    files = []
    if design.outcome is not None:
        fit.catt.to_csv(path := out_dir / "catt.csv")
        files.append(path)
    fit.balance().to_csv(path := out_dir / "balance.csv", index=False)
    files.append(path)
    fit.coefficients.to_netcdf(path := out_dir / "coefficients.nc")
    files.append(path)
    fit.weights.to_frame().to_parquet(path := out_dir / "weights")
    files.append(path)
    att = f"{fit.att:.4f}" if design.outcome is not None else "(no outcome)"
    lines = [
        f"# {result.spec.name}",
        "",
        result.spec.description,
        "",
        "```",
        design.summary(),
        "```",
        "",
        f"- ATT (MAP balancing weights): {att}",
        f"- Newton iterations: {fit.iterations} ({fit.round_trips} map-reduce passes), "
        f"max |gradient| {fit.max_gradient:.1e}",
        f"- time: design {result.timings['design']:.1f} s, fit {result.timings['map']:.1f} s",
        "- weights: `weights/` (Parquet, one file per input partition)",
    ]
    lines += [f"- warning: {message}" for message in result.warnings]
    (path := out_dir / "report.md").write_text("\n".join(lines) + "\n")
    files.append(path)
    return files
