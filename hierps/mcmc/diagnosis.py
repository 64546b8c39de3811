"""The one convergence check: R-hat, ESS, divergences, E-BFMI and tree depth of a NUTS run.

:func:`diagnose` builds a :class:`Diagnosis` (a table of every judged entry, a per-chain sampler
table, one sentence per problem and a verdict). The warnings :func:`hierps.sample` issues, CATT
pooling, outcome models and reports all take their verdict from it, so a report never says
"OK" above a warning about the same run.

Which entries are judged, and against what:

- every variable of the ``posterior`` group and the effects of an ``estimands`` group (CATTs and
  the ATT), entry by entry, with the vectorized statistics of :mod:`hierps.mcmc.convergence`;
- R-hat ≤ 1.01 for entries without a ``group`` dim (population-level parameters, the overall
  effect), and ≤ 1.02 for entries with one: with hundreds of group-level entries the largest
  R-hat of a healthy 2 × 1000-draw run exceeds 1.01 by Monte Carlo noise about one run in four;
- bulk and tail ESS at least 100 per chain, no divergent transitions, E-BFMI ≥ 0.3 in every
  chain, no draws at the maximum tree depth.

Entries that are NaN in every draw (a group without controls has no CATT) are listed, not judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from rich.console import Group
from rich.table import Table
from rich.text import Text

from hierps.exceptions import ArgumentError, ArgumentTypeError
from hierps.mcmc.conventions import (
    ESTIMAND_VARIABLES,
    MAX_RHAT,
    MAX_RHAT_GROUP_LEVEL,
    MIN_BFMI,
    MIN_ESS_PER_CHAIN,
    SAMPLE_DIMS,
    TREEDEPTH_STATS,
)
from hierps.mcmc.summary import summarize_draws
from hierps.rendering import format_number, render_text

__all__ = ["Diagnosis", "diagnose", "idata_of", "sampling_problems"]

_MAX_LISTED = 8
_TABLE_COLUMNS = ("mean", "sd", "ess_bulk", "ess_tail", "r_hat")


@dataclass(frozen=True, eq=False)
class Diagnosis:
    """Sampling diagnostics of a posterior (see :func:`diagnose`).

    Attributes
    ----------
    table
        One row per judged scalar entry (``beta[s001, x1]``): ``group`` (the DataTree group),
        ``mean``, ``sd``, ``ess_bulk``, ``ess_tail``, ``r_hat``, ``rhat_max`` (the threshold
        that entry is judged against) and the flags ``rhat_ok``, ``ess_ok`` (NA for entries
        that are NaN in every draw).
    sampler
        One row per chain: ``draws``, ``divergences``, ``e_bfmi`` and, when the sampler
        records it, ``max_treedepth`` (draws that hit the maximum tree depth).
    problems
        One sentence per kind of problem, naming the worst entries and a fix.
    verdict
        One line: ``"OK: …"`` or ``"PROBLEMS: …"``.
    ok
        ``True`` when no check failed.
    """

    table: pd.DataFrame
    sampler: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    verdict: str = ""
    ok: bool = True

    def __rich__(self) -> Group:
        style = "bold green" if self.ok else "bold red"
        parameters = Table(show_edge=False)
        for name in ("parameter", "group", "mean", "ess_bulk", "ess_tail", "r_hat"):
            parameters.add_column(
                name, justify="left" if name in ("parameter", "group") else "right"
            )
        # Population-level entries, overall effects and every failing entry; the many
        # passing group-level entries are counted, not listed.
        table = self.table
        failing = table["rhat_ok"].eq(False) | table["ess_ok"].eq(False)
        shown = table[failing.to_numpy() | ~table["group_level"].to_numpy()]
        for label, row in shown.iterrows():
            bad_rhat = _failed(row["rhat_ok"])
            bad_ess = _failed(row["ess_ok"])
            parameters.add_row(
                Text(str(label)),
                str(row["group"]),
                format_number(row["mean"], ".3g"),
                Text(format_number(row["ess_bulk"], ".0f"), style="red" if bad_ess else ""),
                Text(format_number(row["ess_tail"], ".0f"), style="red" if bad_ess else ""),
                Text(format_number(row["r_hat"], ".3f"), style="red" if bad_rhat else ""),
            )
        hidden = len(table) - len(shown)
        chains = Table(show_edge=False)
        for name in self.sampler.columns:
            chains.add_column(str(name), justify="right")
        for row in self.sampler.itertuples(index=False):
            chains.add_row(
                *[format_number(v, ".3g") if isinstance(v, float) else str(v) for v in row]
            )
        parts: list[Any] = [Text(self.verdict, style=style), parameters]
        if hidden:
            parts.append(Text(f"(and {hidden} group-level entries, all within the thresholds)"))
        return Group(*parts, chains)

    def __str__(self) -> str:
        return render_text(self)

    def __repr__(self) -> str:
        return self.__str__()


def _failed(flag: object) -> bool:
    return not pd.isna(flag) and not bool(flag)


def idata_of(result: Any) -> xr.DataTree:
    """The ``DataTree`` of a posterior result (or the tree itself), checked to hold a posterior."""
    idata = result if isinstance(result, xr.DataTree) else getattr(result, "idata", None)
    if not isinstance(idata, xr.DataTree) or "posterior" not in idata.children:
        raise ArgumentTypeError(
            f"expected a posterior result (with an .idata DataTree holding a 'posterior' group) "
            f"or such a DataTree, not {type(result).__name__}"
        )
    return idata


def diagnose(
    result: Any,
    var_names: Sequence[str] | None = None,
    rhat_max: float = MAX_RHAT,
    ess_min_per_chain: int = MIN_ESS_PER_CHAIN,
    bfmi_min: float = MIN_BFMI,
    rhat_max_group_level: float = MAX_RHAT_GROUP_LEVEL,
) -> Diagnosis:
    """R-hat, bulk and tail ESS, divergences, E-BFMI and tree depth of a NUTS run in one call.

    Rank-normalized split R-hat and bulk/tail ESS are ArviZ's statistics (Vehtari et al.
    2021), computed for every entry at once. See the module docstring for what is judged.
    Only sampling is judged: groups with limited overlap are a property of the weights, found
    by :func:`hierps.overlap` and listed in the "Overlap" section of ``hierps fit`` reports.

    Parameters
    ----------
    result
        A posterior result (with ``.idata``), a CATT-pooling or outcome-model result with an
        ``.idata``, or a DataTree with a ``posterior`` group.
    var_names
        Posterior variables to judge; default every variable of the ``posterior`` group. The
        effects of an ``estimands`` group are always judged.
    rhat_max, rhat_max_group_level
        R-hat thresholds of entries without and with a ``group`` dim.
    ess_min_per_chain
        Bulk and tail ESS must reach this many per chain.
    bfmi_min
        E-BFMI threshold per chain.

    Returns
    -------
    Diagnosis
        ``.table``, ``.sampler``, ``.problems``, ``.verdict`` and ``.ok``.
    """
    idata = idata_of(result)
    posterior = idata["posterior"].to_dataset()
    if var_names is None:
        var_names = list(map(str, posterior.data_vars))
    else:
        var_names = list(var_names)
        unknown = [name for name in var_names if name not in posterior]
        if unknown:
            raise ArgumentError(
                f"variables {unknown} are not in the posterior; it has "
                f"{sorted(map(str, posterior.data_vars))}"
            )
    n_chains = int(posterior.sizes["chain"])
    ess_min = ess_min_per_chain * n_chains

    parts = [_entries(posterior, var_names, "posterior")]
    if "estimands" in idata.children:
        estimands = idata["estimands"].to_dataset()
        parts.append(_entries(estimands, [n for n in ESTIMAND_VARIABLES if n in estimands]))
    table = pd.concat(parts)
    table.index.name = "parameter"
    table["rhat_max"] = np.where(table["group_level"], rhat_max_group_level, rhat_max)
    judged = table["r_hat"].notna() | table["ess_bulk"].notna()
    with np.errstate(invalid="ignore"):
        rhat_ok = (table["r_hat"] <= table["rhat_max"]) | table["r_hat"].isna()
        ess_ok = (table["ess_bulk"] >= ess_min) & (table["ess_tail"] >= ess_min)
    table["rhat_ok"] = pd.array(np.where(judged, rhat_ok, False), dtype="boolean")
    table["ess_ok"] = pd.array(np.where(judged, ess_ok, False), dtype="boolean")
    table.loc[~judged.to_numpy(), ["rhat_ok", "ess_ok"]] = pd.NA

    sampler = _sampler_table(idata, n_chains)
    hint = _fix_hint(posterior)
    scales = [name for name in ("sigma_alpha", "sigma_beta") if name in posterior]
    problems = []
    divergences = int(sampler["divergences"].sum()) if "divergences" in sampler else 0
    if divergences:
        total = int(sampler["draws"].sum())
        problems.append(
            f"{divergences} divergent transitions after tuning ({divergences / total:.1%} of "
            f"the draws): the posterior geometry (typically the funnel of the group-level "
            f"scales {', '.join(scales) or 'of the hierarchy'}) is not explored reliably. "
            f"Raise target_accept (e.g. target_accept=0.95), or {hint}"
        )
    # Population-level entries first (fewer, and they matter most), each kind worst first.
    high = table[table["rhat_ok"].eq(False)].sort_values(
        ["group_level", "r_hat"], ascending=[True, False]
    )
    if len(high):
        problems.append(
            f"R-hat > {_thresholds(high['rhat_max'])} for {_listing(high['r_hat'], '.3f')}: "
            f"the chains disagree. Sample longer (more tune= and draws=), use more chains, "
            f"or {hint}"
        )
    low = table[table["ess_ok"].eq(False)]
    if len(low):
        smaller = np.minimum(low["ess_bulk"], low["ess_tail"]).sort_values()
        problems.append(
            f"bulk ESS < {ess_min} or tail ESS < {ess_min} ({ess_min_per_chain} per chain) for "
            f"{_listing(smaller, '.0f')}: too few effective draws for stable means and "
            f"intervals. Sample longer (more draws= and tune=), or {hint}"
        )
    if "e_bfmi" in sampler:
        poor = sampler[sampler["e_bfmi"] < bfmi_min]
        if len(poor):
            problems.append(
                f"E-BFMI < {bfmi_min:g} in chain(s) {', '.join(map(str, poor['chain']))} "
                f"(lowest {poor['e_bfmi'].min():.2f}): the momentum resampling explores the "
                f"energy poorly, typical of heavy tails or funnels in "
                f"{', '.join(scales) or 'the hierarchy'}. Use more tune=, or {hint}"
            )
    if "max_treedepth" in sampler and sampler["max_treedepth"].sum() > 0:
        problems.append(
            f"{int(sampler['max_treedepth'].sum())} draws hit the maximum tree depth: the "
            f"sampler's trajectories were cut short. Raise max_treedepth, or {hint}"
        )

    n_judged = int(judged.sum())
    if problems:
        verdict = "PROBLEMS: " + "; ".join(problem.split(":")[0] for problem in problems)
    else:
        verdict = (
            f"OK: no divergences, R-hat ≤ {rhat_max:g} (group-level entries ≤ "
            f"{rhat_max_group_level:g}) and bulk/tail ESS ≥ {ess_min} for all {n_judged} "
            f"entries" + (f", E-BFMI ≥ {bfmi_min:g} in every chain" if "e_bfmi" in sampler else "")
        )
    skipped = len(table) - n_judged
    if skipped:
        verdict += f" ({skipped} entries NaN in every draw, not judged)"
    return Diagnosis(
        table=table, sampler=sampler, problems=problems, verdict=verdict, ok=not problems
    )


def sampling_problems(idata: xr.DataTree) -> list[str]:
    """The problems :func:`diagnose` finds with its default thresholds (empty when healthy)."""
    return diagnose(idata).problems


def _entries(dataset: xr.Dataset, names: list[str], group: str = "estimands") -> pd.DataFrame:
    """One summary row per scalar entry of each variable, labelled ``name[coord, …]``."""
    frames = []
    for name in names:
        array = dataset[name]
        other = [dim for dim in array.dims if dim not in SAMPLE_DIMS]
        summary = summarize_draws(array)[list(_TABLE_COLUMNS)]
        if other:
            keys = pd.MultiIndex.from_product([array[dim].to_numpy() for dim in other])
            summary.index = [f"{name}[{', '.join(map(str, key))}]" for key in keys]
        else:
            summary.index = [str(name)]
        summary.insert(0, "group", group)
        summary["group_level"] = "group" in other
        frames.append(summary)
    return pd.concat(frames) if frames else pd.DataFrame(columns=["group", *_TABLE_COLUMNS])


def _fix_hint(posterior: xr.Dataset) -> str:
    if "alpha" not in posterior:  # not the propensity model: a CATT-pooling or outcome model
        return "reparameterize or simplify the model"
    scales = [name for name in ("sigma_alpha", "sigma_beta") if name in posterior]
    if scales:
        return (
            f"fix the group-level scale(s) {', '.join(scales)} at a number, or let fewer "
            f"slopes vary (varying_slopes=[...])"
        )
    return "let fewer slopes vary (varying_slopes=[...])"


def _thresholds(values: pd.Series) -> str:
    return " / ".join(f"{value:g}" for value in sorted(set(values)))


def _sampler_table(idata: xr.DataTree, n_chains: int) -> pd.DataFrame:
    posterior = idata["posterior"].to_dataset()
    frame = pd.DataFrame(
        {
            "chain": posterior["chain"].to_numpy(),
            "draws": np.full(n_chains, int(posterior.sizes["draw"])),
        }
    )
    if "sample_stats" not in idata.children:
        return frame
    stats = idata["sample_stats"].to_dataset()
    if "diverging" in stats:
        frame["divergences"] = stats["diverging"].sum("draw").to_numpy().astype(int)
    if "energy" in stats and stats.sizes.get("draw", 0) > 1:
        frame["e_bfmi"] = _bfmi(stats["energy"].transpose("chain", "draw").to_numpy())
    for name in TREEDEPTH_STATS:
        if name in stats:
            frame["max_treedepth"] = stats[name].sum("draw").to_numpy().astype(int)
            break
    return frame


def _bfmi(energy: np.ndarray) -> np.ndarray:
    """E-BFMI per chain: mean squared energy change over the energy's variance (ArviZ's)."""
    return np.square(np.diff(energy, axis=1)).mean(axis=1) / np.var(energy, axis=1)


def _listing(values: pd.Series, fmt: str, limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(f"{label} ({value:{fmt}})" for label, value in values.head(limit).items())
    more = len(values) - limit
    return shown + (f" and {more} more" if more > 0 else "")
