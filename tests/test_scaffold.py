"""``raysuite new method NAME [DIR]`` in an empty directory: what it writes, what it
refuses, and that the package it writes works unchanged from DIR with DIR on PYTHONPATH:
``raysuite methods`` lists it, its own test passes, and ``raysuite sweep <its yaml>
--smoke`` ends with every child run FINISHED (e2e: starts Ray)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raysuite.cli import main
from raysuite.scaffold import ScaffoldError, files, new_method

NAME = "lesion_demo"


def _script(name: str, module_main: str) -> list[str]:
    """The environment's console script ``name`` (what a user runs: its folder, not the
    working directory, heads sys.path), else ``python -c`` calling ``module_main``."""
    script = Path(sys.executable).with_name(name)
    if script.is_file():
        return [str(script)]
    module, _, func = module_main.partition(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


RAYSUITE = _script("raysuite", "raysuite.cli:main")
PYTEST = _script("pytest", "pytest:console_main")


def _env(**extra: str) -> dict[str, str]:
    """This environment (the tests' salt included) with the working directory alone on PYTHONPATH
    and no RAY_ADDRESS: a sweep starts its own local Ray, never joins this process's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "RAY_ADDRESS"}
    return {**env, "PYTHONPATH": ".", **extra}


def _run(args: list[str], cwd: Path, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def scaffolded(tmp_path) -> Path:
    """An empty directory after ``raysuite new method lesion_demo .`` (a subprocess)."""
    done = _run([*RAYSUITE, "new", "method", NAME, "."], tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path


def test_writes_the_package_its_sweep_its_test_and_its_entry_point(scaffolded):
    written = sorted(str(p.relative_to(scaffolded)) for p in scaffolded.rglob("*") if p.is_file())
    assert written == sorted([
        f"{NAME}/__init__.py", f"{NAME}/method.py", f"sweeps/{NAME}.yaml", f"tests/test_{NAME}.py",
        f"{NAME}.egg-info/PKG-INFO", f"{NAME}.egg-info/entry_points.txt", "pyproject.toml",
    ])  # fmt: skip
    assert (scaffolded / f"{NAME}.egg-info/entry_points.txt").read_text() == (
        f"[raysuite.methods]\n{NAME} = {NAME}.method:METHOD\n"
    )
    assert f'[project.entry-points."raysuite.methods"]\n{NAME} = "{NAME}.method:METHOD"' in (
        scaffolded / "pyproject.toml"
    ).read_text()
    sweep = (scaffolded / f"sweeps/{NAME}.yaml").read_text()
    assert f"method: {NAME}.method:METHOD\n" in sweep and "synthetic_if_missing: true" in sweep
    assert "__NAME__" not in "".join(files(NAME).values())


def test_lists_and_describes_it_with_the_directory_on_pythonpath(scaffolded):
    listed = _run([*RAYSUITE, "methods"], scaffolded)
    assert listed.returncode == 0, listed.stderr
    assert f"\n{NAME}: a small CNN on MURA radiographs" in listed.stdout
    assert f"  from: entry point {NAME}.method:METHOD of {NAME} 0.0.0\n" in listed.stdout
    assert "  data format: mura; headline metric: val/auc\n" in listed.stdout
    card = _run([*RAYSUITE, "methods", NAME], scaffolded)
    assert card.returncode == 0, card.stderr
    assert "    flip: bool = true\n        random horizontal flips of the training images\n" in card.stdout
    assert "  baseline arm: train.flip=false\n" in card.stdout
    # without the directory on the path there is no such method
    elsewhere = _run([*RAYSUITE, "methods", NAME], scaffolded / "tests", PYTHONPATH="")
    assert elsewhere.returncode == 2 and f"unknown method '{NAME}'" in elsewhere.stderr


def test_its_own_test_passes_unchanged(scaffolded):
    done = _run([*PYTEST, "-q", "-p", "no:cacheprovider"], scaffolded)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("1lesion", "not a valid Python package name"),
        ("lesion-demo", "not a valid Python package name"),
        ("class", "not a valid Python package name"),
        ("genesis_cls", "is a built-in raysuite method"),
        ("json", "standard library"),
        ("pytest", "already an importable module"),
    ],
)
def test_refuses_names_that_cannot_be_a_package(tmp_path, capsys, name, why):
    assert main(["new", "method", name, str(tmp_path)]) == 2
    assert why in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / f"test_{NAME}.py").write_text("# mine\n")
    assert main(["new", "method", NAME, str(tmp_path)]) == 2
    assert f"would overwrite {tmp_path / 'tests' / f'test_{NAME}.py'}; nothing written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == [f"test_{NAME}.py", "tests"]
    (tmp_path / "tests" / f"test_{NAME}.py").unlink()
    (tmp_path / NAME).mkdir()  # a package folder of that name already
    with pytest.raises(ScaffoldError, match=rf"would overwrite {tmp_path / NAME}; nothing written"):
        new_method(NAME, tmp_path)


def test_keeps_an_existing_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    written = new_method(NAME, tmp_path / ".")
    assert (tmp_path / "pyproject.toml").read_text() == "[project]\nname = 'mine'\n"
    assert tmp_path / "pyproject.toml" not in written and len(written) == 6
    assert (tmp_path / f"{NAME}.egg-info" / "entry_points.txt").is_file()


@pytest.mark.e2e
def test_its_sweep_smoke_finishes_every_child(scaffolded):
    """The issue's Done-when: ``PYTHONPATH=. raysuite sweep sweeps/lesion_demo.yaml --smoke``
    from the directory, into a fresh MLflow store and storage."""
    from raysuite.track import mlflow_runs as track

    uri = f"sqlite:///{scaffolded / 'mlflow.db'}"
    done = _run([*RAYSUITE, "sweep", f"sweeps/{NAME}.yaml", "--smoke"], scaffolded, timeout=1500,
                MLFLOW_TRACKING_URI=uri, RAYSUITE_STORAGE=str(scaffolded / "storage"),
                RAYSUITE_CACHE=str(scaffolded / "cache"))  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = track.client(uri)
    parent = track.latest_sweep(client, NAME)
    assert client.get_run(parent).info.status == "FINISHED"
    runs = track.children(client, parent)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}  # 2 arms x 2 seeds
    for run in runs:
        assert 0.0 <= run.data.metrics["val/auc"] <= 1.0
        assert [s for s, _ in track.metric_history(client, run.info.run_id, "train/epoch")] == [1, 2, 3]
    assert (scaffolded / "data" / "mura-smoke-synthetic" / ".raysuite-complete").is_file()
