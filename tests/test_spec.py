"""Model files: the shipped ones validate; broken ones fail with the key and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write

from hierps.workflow.spec import SpecError, load_data, read_spec

MODELS = Path(__file__).resolve().parents[1] / "models"

GOOD = """
name = "t"
[data]
treatment = "z"
group = "school"
outcome = "y"
unit_covariates = ["x1"]
[data.simulate]
n_groups = 5
seed = 3
"""


@pytest.mark.parametrize("name", ["demo", "learning_mindsets", "nhanes_smoking"])
def test_shipped_model_files_validate_and_load(name):
    spec = read_spec(MODELS / f"{name}.toml")
    frame, study = load_data(spec)
    for column in [spec.data.treatment, spec.data.group, *spec.data.unit_covariates]:
        assert column in frame.columns
    assert (study is not None) == (spec.data.simulate is not None)


def test_derived_columns_follow_r_conventions():
    spec = read_spec(MODELS / "nhanes_smoking.toml")
    frame, _ = load_data(spec)
    assert list(frame["strata"].cat.categories)[:2] == ["< 40 years:Male", "< 40 years:Female"]
    row = frame.iloc[0]
    assert row["strata"] == f"{row['age_cat']}:{row['sex']}"
    assert frame.loc[frame["age"] == 39, "age_cat"].eq("< 40 years").all()


def test_wrong_type_names_key_and_line(tmp_path):
    path = write(tmp_path, GOOD + '[map]\nsigma_beta = "big"\n')
    with pytest.raises(SpecError, match=r"model.toml:12: map.sigma_beta: .*'big'"):
        read_spec(path)


def test_unknown_key_is_rejected_with_its_line(tmp_path):
    path = write(tmp_path, GOOD.replace('outcome = "y"', 'outcome = "y"\noutcomes = "y"'))
    with pytest.raises(SpecError, match=r"model.toml:7: data.outcomes: Extra inputs"):
        read_spec(path)


def test_malformed_toml(tmp_path):
    with pytest.raises(SpecError, match="not valid TOML"):
        read_spec(write(tmp_path, "name = \n[data"))


def test_missing_file_and_missing_data_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        read_spec(tmp_path / "absent.toml")
    text = GOOD.replace("[data.simulate]\nn_groups = 5\nseed = 3\n", "").replace(
        "[data]\n", '[data]\npath = "absent.csv"\n'
    )
    spec = read_spec(write(tmp_path, text))
    with pytest.raises(SpecError, match=r"absent\.csv"):
        load_data(spec)


def test_exactly_one_data_source(tmp_path):
    text = GOOD.replace("[data]\n", '[data]\ndataset = "nh0506"\n')
    with pytest.raises(SpecError, match="exactly one data source"):
        read_spec(write(tmp_path, text))


def test_negative_and_out_of_range_values(tmp_path):
    with pytest.raises(SpecError, match=r"posterior\.chains"):
        read_spec(write(tmp_path, GOOD + "[posterior]\nchains = 0\n"))
    with pytest.raises(SpecError, match=r"map\.sigma_alpha"):
        read_spec(write(tmp_path, GOOD + "[map]\nsigma_alpha = -1\n"))


def test_demo_model_file_equals_the_built_in_demo():
    from hierps.workflow.spec import demo_spec

    assert read_spec(MODELS / "demo.toml").model_dump(exclude={"source"}) == demo_spec().model_dump(
        exclude={"source"}
    )


def test_map_deviations_are_validated_and_kept_out_of_the_scales(tmp_path):
    with pytest.raises(SpecError, match=r"map\.deviations"):
        read_spec(write(tmp_path, GOOD + '[map]\ndeviations = "sparse"\n'))
    spec = read_spec(write(tmp_path, GOOD + '[map]\ndeviations = "laplace"\nsigma_beta = 0.1\n'))
    assert spec.map.deviations == "laplace"
    assert spec.map_hyperparameters() == {"sigma_beta": 0.1}


def test_posterior_deviations_and_rank_are_read_and_validated(tmp_path):
    spec = read_spec(write(tmp_path, GOOD + '[posterior]\ndeviations = "low_rank"\nrank = 2\n'))
    assert (spec.posterior.deviations, spec.posterior.rank) == ("low_rank", 2)
    assert (read_spec(write(tmp_path, GOOD)).posterior.deviations) == "normal"
    with pytest.raises(SpecError, match=r"posterior\.rank"):
        read_spec(write(tmp_path, GOOD + "[posterior]\nrank = 0\n"))
    with pytest.raises(SpecError, match=r"posterior\.deviations"):
        read_spec(write(tmp_path, GOOD + '[posterior]\ndeviations = "sparse"\n'))
