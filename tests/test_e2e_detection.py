"""End to end, as a user runs it: ``raysuite sweep`` in its own process, starting its own
local Ray, runs a label-fraction sweep of simclr_detection on synthetic VinDr-CXR DICOMs
that carry a made-up patient identity, keyed with a salt file the test wrote. The parent
run gets the label-fraction curve, the stage cache pretrains once, and no file, log or
MLflow store the sweep leaves behind (Ray's whole session folder included: Ray logs every
runtime env at INFO) holds any identifying string, or the salt in any spelling."""

import base64
import os
import re
import secrets
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pydicom
import pytest
from conftest import files_holding

from raysuite.data import privacy
from raysuite.track import mlflow_runs as track

pytestmark = pytest.mark.e2e

SPEC = """
name: e2e-fractions
method: simclr_detection
data: {{format: vindr_cxr, root: {root}, cache_dir: {cache}}}
stages:
  pretrain: {{epochs: 1, batch_size: 8, warmup_epochs: 0}}
  finetune: {{epochs: 2}}
search:
  grid: {{pretrain.fraction: [0.0, 0.5]}}
  repeats: {{finetune.seed: 1}}
objective: {{metric: val/map40, mode: max}}
resources: {{workers_per_trial: 1, max_concurrent_trials: 1, max_failures: 0}}
storage: {storage}
tiny: true
"""


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def _ray_sessions() -> set[Path]:
    return set((Path(tempfile.gettempdir()) / "ray").glob("session_2*"))


@pytest.mark.timeout(1500)  # the sweep alone may take its subprocess timeout of 1200 s
def test_label_fraction_sweep_leaks_no_identity_nor_salt(tmp_path, vindr_root):
    identity = set()  # whole values, and name components long enough to be identifying
    for path in vindr_root.rglob("*.dicom"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in privacy.IDENTIFYING_KEYWORDS:
            value = str(getattr(ds, keyword, "") or "")
            identity.update(v for v in [value, *value.split("^")] if len(v) >= 6)
    assert any("^" in v for v in identity) and any(v.startswith("ACC") for v in identity)

    salt = secrets.token_bytes(32)
    salt_file = tmp_path / "secret" / "salt"  # outside every folder searched below
    salt_file.parent.mkdir()
    salt_file.write_bytes(salt)
    spellings = [salt, salt.hex().encode(), salt.hex().upper().encode(), base64.b64encode(salt), repr(salt).encode()]

    work = tmp_path / "work"  # the sweep's cwd: MLflow's artifacts land under it
    work.mkdir()
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYSUITE_SALT", "RAY_ADDRESS"))}
    env.update(MLFLOW_TRACKING_URI=uri, RAYSUITE_SALT_FILE=str(salt_file))
    spec_path = work / "spec.yaml"
    spec_path.write_text(textwrap.dedent(SPEC.format(root=vindr_root, cache=work / "cache", storage=work / "storage")))
    before = _ray_sessions()
    raysuite = Path(sys.executable).with_name("raysuite")
    proc = subprocess.run([str(raysuite), "sweep", str(spec_path), "--address", "local"], cwd=work, env=env,
                          capture_output=True, timeout=1200)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out.decode(errors="replace")[-4000:]
    parent = re.search(rb"parent run ([0-9a-f]{32})", proc.stdout).group(1).decode()

    client = track.client(uri)
    runs = track.children(client, parent)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert [s for s, _ in track.metric_history(client, run.info.run_id, "val/map40")] == [1, 2]
        assert "test/map40" in run.data.metrics
    assert client.get_run(parent).data.metrics["stage_cache/pretrain_trainings"] == 1  # fraction 0 pretrains nothing
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"label_fraction_curve.png", "summary.csv"} <= artifacts

    sessions = _ray_sessions() - before
    assert len(sessions) == 1, sessions  # the sweep's own Ray, logs and all
    files = _files(work, *sessions)  # storage, manifests, shard cache, mlflow.db, artifacts, Ray session
    assert any(p.suffix == ".log" for p in files) and any(p.name == "mlflow.db" for p in files)
    # Ray did log the workers' runtime env (the salt file's path, not the salt): a salt sent
    # that way, as it once was, would be found below
    assert any(b"RAYSUITE_SALT_FILE" in p.read_bytes() for p in files if p.name == "runtime_env_agent.log")
    assert files_holding({v.encode() for v in identity}, files) == {}
    assert sorted(files_holding(set(spellings), files)) == [], "the salt found in these files"
    for value in identity:
        assert value.encode() not in out
    for spelling in spellings:
        assert spelling not in out
