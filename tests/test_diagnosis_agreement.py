"""One convergence verdict everywhere: sample's warnings, ``result.problems``, ``diagnose``,
``sampling_problems`` and the report of an analysis all say the same of the same posterior.

One short NUTS run of a small simulated study (8 schools, 2 chains of 200 draws, too short to
pass every check) is made by :func:`hierps.workflow.analysis.run_analysis` from a model file,
with the HierpsWarnings that :func:`hierps.posterior.run.sample` issues recorded on the way.
A copy of its posterior with planted problems (chains that disagree, divergent transitions)
then goes through every path again.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
from helpers import quietly, write

import hierps
import hierps.posterior.run as run_module
from hierps.exceptions import HierpsWarning
from hierps.mcmc.conventions import MAX_RHAT, MAX_RHAT_GROUP_LEVEL
from hierps.mcmc.diagnosis import diagnose, sampling_problems
from hierps.posterior.draws import from_idata
from hierps.workflow.analysis import run_analysis
from hierps.workflow.report import write_outputs
from hierps.workflow.spec import read_spec

pytestmark = pytest.mark.slow

MODEL_FILE = """
name = "agreement"
description = "A small simulated study, sampled briefly."
[data]
treatment = "z"
group = "school"
outcome = "y"
unit_covariates = ["x1", "x2", "x3"]
group_covariates = ["v1", "v2"]
[data.simulate]
n_groups = 8
seed = 3
[posterior]
draws = 200
tune = 200
chains = 2
random_seed = 1
[output]
plots = []
"""

DIAGNOSTICS = re.compile(r"### Sampling diagnostics\n\n```\n(.*?)\n```\n", re.S)


def flat(text: str) -> str:
    """``text`` with every run of whitespace made one space (the report wraps long lines)."""
    return " ".join(text.split())


def diagnostics_block(report: str) -> str:
    """The text under the report's "Sampling diagnostics" heading."""
    blocks = DIAGNOSTICS.findall(report)
    assert len(blocks) == 1, report
    return blocks[0]


def says_ok(report: str) -> bool:
    return re.search(r"\bOK\b", report) is not None


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    """The analysis of MODEL_FILE, written to disk, and the warnings ``sample`` issued."""
    directory = tmp_path_factory.mktemp("agreement")
    spec = read_spec(write(directory, MODEL_FILE))
    issued: list[str] = []
    sample = run_module.sample

    def recording_sample(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", HierpsWarning)
            result = sample(*args, **kwargs)
        for warning in caught:
            if issubclass(warning.category, HierpsWarning):
                issued.append(str(warning.message))
            # Passed on, so that the analysis records them as it would without this wrapper.
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "sample", recording_sample)
        result = run_analysis(spec, out_dir=directory / "out")
    assert result.posterior is not None
    return SimpleNamespace(
        result=result,
        issued=issued,
        report=(directory / "out" / "report.md").read_text(),
    )


def planted_tree(posterior: hierps.PosteriorResult) -> xr.DataTree:
    """A copy of ``posterior.idata`` with planted problems: chain 1 of ``alpha`` shifted by 3
    in two groups, chain 1 of ``intercept`` shifted just enough for an R-hat between the
    population-level threshold (1.01) and the group-level one (1.02), and 5 divergent
    transitions in chain 0."""
    tree = posterior.idata.copy(deep=True)
    draws = tree["posterior"].to_dataset()
    groups = list(draws["group"].values[:2])
    draws["alpha"].loc[{"chain": 1, "group": groups}] += 3.0
    intercept = draws["intercept"]
    steps = np.linspace(0.01, 0.5, 50)
    for shift in np.ravel(np.column_stack([steps, -steps])) * float(intercept.std()):
        moved = intercept + xr.DataArray([0.0, shift], dims="chain", coords={"chain": [0, 1]})
        only = xr.DataTree.from_dict({"posterior": moved.to_dataset(name="intercept")})
        rhat = diagnose(only).table.loc["intercept", "r_hat"]
        if MAX_RHAT + 0.002 < rhat < MAX_RHAT_GROUP_LEVEL - 0.002:
            break
    else:
        pytest.fail("no shift of the intercept gives an R-hat between the two thresholds")
    draws["intercept"] = moved
    tree["posterior"] = draws
    diverging = np.zeros(tree["sample_stats"]["diverging"].shape, dtype=bool)
    diverging[0, :5] = True
    stats = tree["sample_stats"].to_dataset()
    stats["diverging"] = (("chain", "draw"), diverging)
    tree["sample_stats"] = stats
    return tree


def planted_posterior(posterior: hierps.PosteriorResult) -> hierps.PosteriorResult:
    """The posterior result of :func:`planted_tree`, effects recomputed from its draws."""
    return quietly(
        from_idata,
        posterior.design,
        planted_tree(posterior),
        uncertainty=posterior.uncertainty,
        estimand=posterior.estimand,
        random_seed=1,
    )


# --------------------------------------------------------------------------------------------
# The real run
# --------------------------------------------------------------------------------------------


def test_short_run_has_problems_to_agree_on(analysis):
    """The comparisons below are not between empty lists: the short run fails some checks."""
    diagnosis = diagnose(analysis.result.posterior)
    assert not diagnosis.ok and diagnosis.problems
    assert diagnosis.verdict.startswith("PROBLEMS: ")


def test_sample_warnings_are_result_problems_are_diagnose_problems(analysis):
    posterior = analysis.result.posterior
    problems = diagnose(posterior).problems
    assert analysis.issued == posterior.problems == problems
    assert sampling_problems(posterior.idata) == problems
    # The analysis keeps sample's warnings as they were issued.
    assert set(problems) <= set(analysis.result.warnings)


def test_report_states_the_verdict_of_diagnose(analysis):
    diagnosis = diagnose(analysis.result.posterior)
    block = diagnostics_block(analysis.report)
    assert block == str(diagnosis)
    assert flat(block).startswith(flat(diagnosis.verdict))
    assert diagnosis.problems and not says_ok(analysis.report)
    warnings_section = flat(analysis.report.split("## Warnings", 1)[1])
    for problem in diagnosis.problems:
        assert flat(problem) in warnings_section


# --------------------------------------------------------------------------------------------
# Planted problems
# --------------------------------------------------------------------------------------------


def test_planted_problems_are_found_by_diagnose_and_sampling_problems(analysis):
    posterior = planted_posterior(analysis.result.posterior)
    diagnosis = diagnose(posterior)
    table = diagnosis.table
    groups = list(posterior.design.groups[:2])
    # Judged against 1.01 although below 1.02, and every variable of the posterior is judged.
    assert MAX_RHAT < table.loc["intercept", "r_hat"] < MAX_RHAT_GROUP_LEVEL
    assert not table.loc["intercept", "rhat_ok"]
    for group in groups:
        assert not table.loc[f"alpha[{group}]", "rhat_ok"]
    divergences, rhat = diagnosis.problems[:2]
    assert divergences.startswith("5 divergent transitions")
    assert "intercept" in rhat and all(f"alpha[{group}]" in rhat for group in groups)
    assert diagnosis.verdict.startswith("PROBLEMS: 5 divergent transitions")
    assert sampling_problems(posterior.idata) == diagnosis.problems
    assert (
        sampling_problems(planted_tree(analysis.result.posterior))
        == diagnose(planted_tree(analysis.result.posterior)).problems
    )


def test_planted_problems_are_in_the_report(analysis, tmp_path):
    posterior = planted_posterior(analysis.result.posterior)
    diagnosis = diagnose(posterior)
    result = dataclasses.replace(analysis.result, posterior=posterior, warnings=[])
    write_outputs(result, tmp_path)
    report = (tmp_path / "report.md").read_text()
    block = diagnostics_block(report)
    assert block == str(diagnosis)
    assert flat(block).startswith(flat(diagnosis.verdict))
    assert "5 divergent transitions" in block and "intercept" in flat(block)
    assert not says_ok(report)


def sample_with_sampler_output(monkeypatch, model, tree: xr.DataTree):
    """``model.sample`` with the sampler replaced by one returning ``tree``, and the
    HierpsWarnings it issued."""
    import pymc

    tree = tree.drop_nodes(["estimands", "weights"], errors="ignore")
    monkeypatch.setattr(pymc, "sample", lambda *args, **kwargs: tree.copy(deep=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HierpsWarning)
        result = model.sample(
            draws=200, tune=200, chains=2, random_seed=1, uncertainty="propensity"
        )
    return result, [str(w.message) for w in caught if issubclass(w.category, HierpsWarning)]


def test_sample_warns_of_planted_problems_as_diagnose_reports_them(analysis, monkeypatch):
    """``sample`` judges the sampler's output with the thresholds of ``diagnose``: the
    planted intercept, between the two R-hat thresholds, is among its warnings."""
    tree = planted_tree(analysis.result.posterior)
    result, issued = sample_with_sampler_output(monkeypatch, analysis.result.model, tree)
    assert issued[0].startswith("5 divergent transitions") and "intercept" in issued[1]
    assert issued == result.problems == diagnose(result).problems


def shifted_slope_tree(posterior: hierps.PosteriorResult) -> xr.DataTree:
    """A copy of ``posterior.idata`` with chain 1 of one group's slope on x1 shifted by 2:
    unlike a shift of ``alpha`` (which scales all control odds of a group alike and so leaves
    its CATT unchanged) it moves that group's CATT and the ATT in chain 1."""
    tree = posterior.idata.copy(deep=True)
    draws = tree["posterior"].to_dataset()
    group = str(draws["group"].values[0])
    draws["beta"].loc[{"chain": 1, "group": group, "unit_covariate": "x1"}] += 2.0
    tree["posterior"] = draws
    return tree


def test_shifted_slope_fails_the_checks_of_its_effects(analysis):
    posterior = quietly(
        from_idata,
        analysis.result.model.design,
        shifted_slope_tree(analysis.result.posterior),
        uncertainty="propensity",
        random_seed=1,
    )
    table = diagnose(posterior).table
    group = posterior.design.groups[0]
    assert not table.loc[f"beta[{group}, x1]", "rhat_ok"]
    assert not table.loc[f"catt[{group}]", "rhat_ok"] and not table.loc["att", "rhat_ok"]


def test_sample_warns_of_effects_that_fail_their_checks(analysis, monkeypatch):
    tree = shifted_slope_tree(analysis.result.posterior)
    result, issued = sample_with_sampler_output(monkeypatch, analysis.result.model, tree)
    assert issued == result.problems == diagnose(result).problems
