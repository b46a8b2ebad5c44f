"""The out-of-tree example, ``examples/flare_unet``, as a user meets it: installed with pip
into a folder of its own (``--target``; the example is copied first so the build leaves
nothing in the repository), then with that folder on PYTHONPATH ``raysuite methods`` lists
its entry point, the example's own tests pass against the installed copy, and a smoke sweep
of its loss-weight spec (2 loss weights x 1 seed) ends with every child run FINISHED."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raysuite.track import mlflow_runs as track

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flare_unet"
RAYSUITE = Path(sys.executable).with_name("raysuite")  # the venv's console script


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder ``pip install --target`` put the example's package and metadata in."""
    tmp = tmp_path_factory.mktemp("example")
    src = tmp / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    site = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return site


def _env(site: Path, **extra: str) -> dict[str, str]:
    """This process's environment (the tests' salt and caches) with ``site`` on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(site), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def _tail(text: str | bytes | None) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else text or ""
    return text[-3000:]


def _run(args: list[str], site: Path, cwd: Path, timeout: float, **extra: str) -> subprocess.CompletedProcess:
    """``args`` with ``site`` on PYTHONPATH; a non-zero exit (or a hang past ``timeout``, a
    guard, not a measurement) fails with the ends of its output."""
    try:
        out = subprocess.run(args, cwd=cwd, env=_env(site, **extra), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{args[:3]} still running after {timeout} s\n{_tail(err.stdout)}\n{_tail(err.stderr)}")
    assert out.returncode == 0, f"{args[:3]} exited {out.returncode}\n{_tail(out.stdout)}\n{_tail(out.stderr)}"
    return out


def test_raysuite_methods_lists_the_entry_point(installed, tmp_path):
    where = _run([sys.executable, "-c", "import flare_unet.method as m; print(m.__file__)"], installed, tmp_path, 120)
    assert Path(where.stdout.strip()).is_relative_to(installed)  # the installed copy, not the source
    listing = _run([str(RAYSUITE), "methods"], installed, tmp_path, 300).stdout
    entry = re.search(r"^flare_unet\b.*$", listing, re.M)
    assert entry is not None, listing
    assert "2-D MONAI U-Net on FLARE22 organs" in entry.group(0)  # its description: it has no seed
    assert "raysuite-example-flare-unet" in listing  # the distribution it came from
    card = _run([str(RAYSUITE), "methods", "flare_unet"], installed, tmp_path, 300).stdout
    assert re.search(r"dice_weight: float, >= 0 = 1\.0\s+w_dice in loss", card), card
    assert "train.dice_weight=0.0" in card  # the baseline arm


def test_the_examples_own_tests_pass_installed(installed, tmp_path):
    out = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        installed, tmp_path, 540,
    )  # fmt: skip
    assert re.search(r"\b5 passed\b", out.stdout), out.stdout[-2000:]


@pytest.mark.e2e
@pytest.mark.timeout(1500)  # two TorchTrainers: ~2 min on an idle 2-core machine, far more on a busy one
def test_smoke_sweep_of_the_loss_weights(installed, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = _run(
        [str(RAYSUITE), "sweep", str(EXAMPLE / "sweeps" / "loss_weights.yaml"), "--smoke", "--address", "local",
         "--set", "search.grid.train.dice_weight=[0.0, 1.0]", "--set", "search.repeats.train.seed=1"],
        installed, tmp_path, 1400, MLFLOW_TRACKING_URI=uri, RAYSUITE_STORAGE=str(tmp_path / "storage"),
        RAYSUITE_DATA=str(tmp_path / "data"), RAYSUITE_CACHE=str(tmp_path / "cache"),
    )  # fmt: skip
    parent_id = re.search(r"parent run (\w+)", out.stdout)
    assert parent_id is not None, out.stdout[-2000:]
    client = track.client(uri)
    parent = client.get_run(parent_id.group(1))
    assert parent.data.tags[track.ROLE] == "sweep" and parent.info.status == "FINISHED"
    runs = track.children(client, parent.info.run_id)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(float(r.data.params["stages.train.dice_weight"]) for r in runs) == [0.0, 1.0]
    for run in runs:  # smoke: 2 epochs, each evaluated
        dice = track.metric_history(client, run.info.run_id, "val/dice")
        assert [step for step, _ in dice] == [1, 2] and all(0.0 <= v <= 1.0 for _, v in dice)
        assert len(track.metric_history(client, run.info.run_id, "train/ce_term")) == 2
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "spec.yaml"} <= artifacts
