"""The built wheel works on its own: package data, metadata, entry point, the command.

The wheel is built from a copy of the source (so no build files land in the checkout),
installed into a bare target directory, and imported from outside the repository with only
that directory on ``PYTHONPATH``; dependencies come from the running environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from textwrap import dedent

import pytest

from hierps._version import __version__

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "hierps" / "datasets" / "data"
# Every loader and the shape of what it returns.
SHAPES = {"load_learning_mindsets": [10391, 13], "load_nh0506": [2928, 11]}
TERMS = {"learning_mindsets": "learning_mindsets.md", "nh0506": "nh0506.md"}


def pip(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *arguments, "--quiet", "--no-input"],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(wheel, target directory it is installed in)."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(
        ROOT / "hierps",
        source / "hierps",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    # Offline: the running environment provides setuptools, so no isolated build environment.
    built = pip(
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(work / "dist"),
        str(source),
        cwd=work,
    )
    # Deprecated pyproject settings show up as build warnings long before builds fail on them.
    assert "Warning" not in built.stderr, built.stderr
    (wheel,) = (work / "dist").glob("hierps-*.whl")
    pip("install", "--no-deps", "--target", str(work / "site"), str(wheel), cwd=work)
    return wheel, work / "site"


def run_installed(site: Path, cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, *arguments], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_the_wheel_holds_every_module_the_data_and_the_metadata(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"hierps-{__version__}.dist-info/METADATA").decode()
        entry_points = archive.read(f"hierps-{__version__}.dist-info/entry_points.txt").decode()
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "hierps").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert modules <= names, sorted(modules - names)
    shipped = {path.relative_to(ROOT).as_posix() for path in DATA.iterdir() if path.is_file()}
    assert {f"hierps/datasets/data/{name}" for name in ("acic18_synthetic.csv", "nh0506.csv")} | {
        f"hierps/datasets/data/{name}" for name in TERMS.values()
    } <= shipped
    assert shipped <= names, sorted(shipped - names)
    assert not any(name.startswith(("tests/", "scripts/")) for name in names)
    assert f"\nVersion: {__version__}\n" in metadata
    assert "hierps = hierps.workflow.cli:app" in entry_points


def test_the_installed_package_loads_its_data_from_outside_the_repository(installed, tmp_path):
    _, site = installed
    done = run_installed(
        site,
        tmp_path,
        "-c",
        dedent(
            f"""
            import json
            from importlib.metadata import version
            import hierps
            from hierps import datasets

            loaders = sorted(name for name in dir(datasets) if name.startswith("load_"))
            shapes = {{name: list(getattr(datasets, name)().shape) for name in loaders}}
            terms = {{name: datasets.terms(name) for name in {sorted(TERMS)!r}}}
            study = datasets.simulate_multisite(n_groups=5, seed=1)
            print(json.dumps({{
                "file": hierps.__file__, "version": hierps.__version__,
                "metadata_version": version("hierps"), "shapes": shapes, "terms": terms,
                "simulated": len(study.data),
            }}))
            """
        ),
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).is_relative_to(site), f"imported {found['file']}, not the wheel"
    assert found["version"] == found["metadata_version"] == __version__
    assert found["shapes"] == SHAPES
    for name, file in TERMS.items():
        assert found["terms"][name] == (DATA / file).read_text(encoding="utf-8")
    assert found["simulated"] > 0


def test_the_installed_command_runs(installed, tmp_path):
    _, site = installed
    done = run_installed(site, tmp_path, "-m", "hierps", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"hierps {__version__}\n"
    done = run_installed(site, tmp_path, "-c", "import hierps.workflow.cli as c; print(c.__file__)")
    assert Path(done.stdout.strip()).is_relative_to(site)
