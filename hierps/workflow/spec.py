"""Model files: one complete analysis in TOML, validated against a schema.

A model file names the data, the column roles, optional natstrat balance formulas, the MAP
hyperparameters, the sampler settings and which outputs to write. It is parsed with
``tomllib`` and validated with pydantic; every error names the key path and, where it can be
found, the line of the file.
"""

from __future__ import annotations

import glob
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal, get_args

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hierps.exceptions import HierpsError

__all__ = [
    "DEMO",
    "ModelSpec",
    "SpecError",
    "data_path_of",
    "demo_spec",
    "load_data",
    "read_spec",
    "read_table",
]

_FIELD = re.compile(r"[a-z][a-z0-9_]*")
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SpecError(HierpsError, ValueError):
    """A model file that cannot be read or does not match the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cut(_Strict):
    """A categorical column made by cutting a numeric one (intervals closed on the right)."""

    column: str
    bins: list[float] = Field(min_length=2)
    labels: list[str] | None = None

    @model_validator(mode="after")
    def _labels_match_bins(self) -> Cut:
        if self.labels is not None and len(self.labels) != len(self.bins) - 1:
            raise ValueError(f"needs {len(self.bins) - 1} labels for {len(self.bins)} bins")
        return self


class Simulation(_Strict):
    """Arguments of :func:`hierps.datasets.simulate_multisite`."""

    n_groups: int = Field(40, ge=2)
    group_size: int | tuple[int, int] = (20, 200)
    n_unit_covariates: int = Field(3, ge=0)
    n_group_covariates: int = Field(2, ge=0)
    sigma_alpha: PositiveFloat = 1.0
    sigma_beta: PositiveFloat = 0.5
    sigma_tau: PositiveFloat = 0.5
    seed: int = Field(0, ge=0)


class DataSpec(_Strict):
    """Where the data come from and which column plays which part."""

    path: str | None = None
    dataset: Literal["learning_mindsets", "nh0506"] | None = None
    simulate: Simulation | None = None
    treatment: str
    group: str
    outcome: str | None = None
    unit_covariates: list[str] = []
    group_covariates: list[str] = []
    categorical: list[str] = []
    varying_slopes: list[str] | None = None
    standardize: Literal["treated", "pooled", "none"] = "treated"
    weights: str | None = None
    cut: dict[str, Cut] = {}
    interact: dict[str, list[str]] = {}
    engine: Literal["pandas", "dask"] = "pandas"
    scheduler: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        sources = [self.path, self.dataset, self.simulate]
        if sum(source is not None for source in sources) != 1:
            raise ValueError(
                "give exactly one data source: 'path', 'dataset' or a [data.simulate] table"
            )
        return self

    @model_validator(mode="after")
    def _dask_engine(self) -> DataSpec:
        if self.scheduler is not None and self.engine != "dask":
            raise ValueError("'scheduler' needs engine = \"dask\"")
        if self.engine == "dask":
            if self.path is None:
                raise ValueError("engine = \"dask\" reads its data from 'path' (Parquet or CSV)")
            derived = [key for key in ("cut", "interact") if getattr(self, key)]
            if derived:
                raise ValueError(
                    f'engine = "dask" does not support {derived[0]!r}: derive the column '
                    f"in the Parquet files"
                )
        return self


class BalanceSpec(_Strict):
    """natstrat-style balance formulas turned into balancing weights."""

    formulas: list[str] = Field(min_length=1)
    default_rhs: str | None = None
    weight_by_size: float = Field(0.0, ge=0, le=1)
    denom_variance: Literal["treated", "pooled"] = "treated"
    autogen_missing: PositiveFloat | None = 50.0
    scale: PositiveFloat = 1.0
    covariates: list[str] | None = None


class MapSpec(_Strict):
    """MAP (calibrated-loss) hyperparameters and the pooling path."""

    sigma_alpha: PositiveFloat | Literal["auto"] | None = None
    sigma_beta: PositiveFloat | list[PositiveFloat] | Literal["auto"] | None = None
    sigma_mu_beta: PositiveFloat | None = None
    sigma_gamma: PositiveFloat | None = None
    sigma_intercept: PositiveFloat | None = None
    pooling_path: list[PositiveFloat] | None = None
    max_iterations: int = Field(100, ge=1)
    #: The prior of the group slope deviations (docs/math.md §19).
    deviations: Literal["normal", "laplace", "low_rank"] = "normal"


class PosteriorSpec(_Strict):
    """NUTS settings of the posterior mode."""

    enabled: bool = True
    draws: int = Field(1000, ge=10)
    tune: int = Field(1000, ge=0)
    chains: int = Field(4, ge=1)
    random_seed: int | None = 1
    sampler: Literal["nutpie", "pymc", "numpyro"] = "nutpie"
    uncertainty: Literal["propensity", "bayesian_bootstrap"] = "bayesian_bootstrap"
    sigma_alpha: PositiveFloat | None = None
    sigma_beta: PositiveFloat | None = None
    #: The prior of the group slope deviations (docs/posterior.md), and the factors of
    #: "low_rank".
    deviations: Literal["normal", "laplace", "low_rank"] = "normal"
    rank: int | None = Field(None, ge=1)


class PoolingSpec(_Strict):
    """Pooling the posterior CATTs with a normal hierarchical model on group covariates."""

    group_covariates: list[str] = []
    draws: int = Field(1000, ge=10)
    tune: int = Field(1000, ge=0)
    random_seed: int | None = 1


#: The figures a report can draw; all by default.
PlotName = Literal[
    "love",
    "catt",
    "map_vs_posterior",
    "pooling_path",
    "weights",
    "overlap",
    "balance_comparison",
    "sensitivity",
    "calibration",
]


class OutputSpec(_Strict):
    """What to estimate and draw."""

    estimands: list[Literal["att", "atc", "ate"]] = ["att"]
    #: The estimand of the MAP weights and of the posterior effects.
    estimand: Literal["att", "atc", "ate"] = "att"
    plots: list[PlotName] = Field(default_factory=lambda: list(get_args(PlotName)))
    balance_threshold: PositiveFloat = 0.1


class ModelSpec(_Strict):
    """One complete hierps analysis."""

    name: str
    description: str = ""
    data: DataSpec
    balance: BalanceSpec | None = None
    map: MapSpec = MapSpec()
    posterior: PosteriorSpec = PosteriorSpec()
    pooling: PoolingSpec | None = None
    output: OutputSpec = OutputSpec()
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _dask_steps(self) -> ModelSpec:
        # A distributed run fits MAP weights; the steps that need every row in memory are
        # refused by name rather than skipped.
        if self.data.engine != "dask":
            return self
        if self.map.pooling_path:
            raise ValueError('map.pooling_path is not available with data.engine = "dask"')
        if self.balance is not None:
            raise ValueError('[balance] is not available with data.engine = "dask"')
        if self.posterior.enabled:
            raise ValueError(
                'data.engine = "dask" fits MAP weights only: set [posterior] enabled = false'
            )
        return self

    def map_hyperparameters(self) -> dict[str, float | list[float]]:
        values = self.map.model_dump(exclude={"pooling_path", "max_iterations", "deviations"})
        return {key: value for key, value in values.items() if value is not None}


#: The built-in simulated study of ``hierps demo`` (``models/demo.toml`` holds the same).
DEMO = {
    "name": "demo",
    "description": (
        "Simulated multi-site study (hierps.datasets.simulate_multisite) with known ATT and "
        "school CATTs."
    ),
    "data": {
        "treatment": "z",
        "group": "school",
        "outcome": "y",
        "unit_covariates": ["x1", "x2", "x3"],
        "group_covariates": ["v1", "v2"],
        "simulate": {"n_groups": 30, "group_size": [20, 200], "seed": 2026},
    },
    "map": {
        "sigma_beta": 1.0,
        "pooling_path": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0],
    },
    # 4 x 3000 draws: intercept and gamma mix slowly here (bulk ESS 430-550 in 4 x 1000).
    "posterior": {"draws": 3000, "tune": 1000, "chains": 4, "random_seed": 1},
}


def demo_spec() -> ModelSpec:
    """The model file of the built-in demo."""
    return ModelSpec.model_validate(DEMO)


def _line_of(text: str, location: tuple) -> int | None:
    """The line where the key path ``location`` is written, found by scanning the TOML text."""
    keys = [str(part) for part in location if isinstance(part, str)]
    if not keys:
        return None
    section: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.fullmatch(r"\[\[?([^\]]+)\]\]?", stripped)
        if header:
            section = [part.strip() for part in header.group(1).split(".")]
            if section == keys:
                return number
            continue
        key = re.match(r"([A-Za-z0-9_\-]+)\s*=", stripped)
        if key and [*section, key.group(1)] == keys[: len(section) + 1]:
            if len(section) + 1 == len(keys) or [*section, key.group(1)] == keys:
                return number
    return None


def read_spec(path: str | Path) -> ModelSpec:
    """Read and validate a model file.

    Raises
    ------
    SpecError
        With the file name, the key path (``map.sigma_beta``), the line when it can be found,
        and what was wrong.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as error:
        raise SpecError(f"model file {str(path)!r} does not exist") from error
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: not valid TOML: {error}") from error
    try:
        spec = ModelSpec.model_validate({**raw, "source": path.resolve()})
    except ValidationError as error:
        problems: dict[str, list[str]] = {}
        for issue in error.errors():
            # Union members add tags such as 'constrained-float' to the path: keep field names.
            location = tuple(
                part for part in issue["loc"] if isinstance(part, str) and _FIELD.fullmatch(part)
            )
            dotted = ".".join(location) or "(top)"
            line = _line_of(text, location)
            where = f"{path}:{line}" if line else str(path)
            value = issue.get("input")
            shown = f" (got {value!r})" if not isinstance(value, dict) else ""
            problems.setdefault(f"{where}: {dotted}", []).append(f"{issue['msg']}{shown}")
        problems = [
            f"{key}: {' / '.join(dict.fromkeys(messages))}" for key, messages in problems.items()
        ]
        raise SpecError("invalid model file\n  " + "\n  ".join(problems)) from error
    return spec


def load_data(spec: ModelSpec) -> tuple[pd.DataFrame, object | None]:
    """The data frame of a model file (read or simulated, derived columns added).

    Returns the frame and, for a simulated study, the :class:`~hierps.datasets.SimulatedStudy`
    with its true effects.
    """
    from hierps import datasets

    data_spec = spec.data
    study = None
    if data_spec.simulate is not None:
        study = datasets.simulate_multisite(**data_spec.simulate.model_dump())
        frame = study.data
    elif data_spec.dataset == "learning_mindsets":
        frame = datasets.load_learning_mindsets()
    elif data_spec.dataset == "nh0506":
        frame = datasets.load_nh0506()
    else:
        frame = read_table(data_path_of(spec), data_spec.engine)
        if data_spec.engine == "dask":
            return frame, None
    frame = frame.copy()
    for name, cut in data_spec.cut.items():
        if cut.column not in frame.columns:
            raise SpecError(f"data.cut.{name}: column {cut.column!r} is not in the data")
        frame[name] = pd.cut(frame[cut.column], bins=cut.bins, labels=cut.labels, right=True)
    for name, columns in data_spec.interact.items():
        missing = [column for column in columns if column not in frame.columns]
        if missing:
            raise SpecError(f"data.interact.{name}: columns {missing} are not in the data")
        parts = [frame[column].astype(str) for column in columns]
        combined = parts[0].str.cat(parts[1:], sep=":")
        levels = _interaction_levels(frame, columns)
        frame[name] = pd.Categorical(combined, categories=levels)
    return frame, study


def data_path_of(spec: ModelSpec) -> str:
    """``data.path`` resolved against the model file's folder; it may hold a glob."""
    base = spec.source.parent if spec.source is not None else Path.cwd()
    path = base / spec.data.path
    path = str(path) if glob.has_magic(str(path)) else str(path.resolve())
    if not glob.glob(path):
        raise SpecError(f"data file {path!r} (data.path) does not exist")
    return path


def _is_parquet(path: str) -> bool:
    return Path(path).is_dir() or path.endswith((".parquet", ".pq"))


def read_table(path: str, engine: str = "pandas") -> pd.DataFrame:
    """A CSV file, a Parquet file, a Parquet directory or a glob of either, as a pandas frame
    or (``engine="dask"``) a lazy Dask DataFrame with one partition per file or row group."""
    files = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
    parquet = all(_is_parquet(name) for name in files)
    if engine == "dask":
        import dask.dataframe as dd

        return dd.read_parquet(files) if parquet else dd.read_csv(files)
    frames = [pd.read_parquet(name) if parquet else pd.read_csv(name) for name in files]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _interaction_levels(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Level order of an interaction: the first factor varies slowest, as R's ``a:b``."""
    levels = [[""]]
    for column in columns:
        series = frame[column]
        own = (
            [str(level) for level in series.cat.categories]
            if isinstance(series.dtype, pd.CategoricalDtype)
            else sorted(series.dropna().astype(str).unique())
        )
        levels = [[*prefix, level] for prefix in levels for level in own]
    return [":".join(level[1:]) for level in levels]
