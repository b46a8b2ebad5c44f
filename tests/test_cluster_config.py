"""cluster.yaml: refused when a service listens on every interface or a credential is
written into it (the error names the key, never the credential), and its file sync sends
code only: Ray's own rsync arguments, run by rsync over a working folder that holds data,
stores, a venv and results."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from raysuite.cli import main

CLUSTER = Path("cluster.yaml")


def variant(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load(CLUSTER.read_text())
    edit(config)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c["head_setup_commands"].__setitem__(0, "mlflow server --host 0.0.0.0 --port 5000"), "head_setup_commands[0]"),
        (lambda c: c["head_start_ray_commands"].__setitem__(1, "ray start --head --dashboard-host=0.0.0.0"), "head_start_ray_commands[1]"),
        (lambda c: c["setup_commands"].append("export AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP"), "setup_commands[3]"),
        (lambda c: c["setup_commands"].append("export AWS_SECRET_ACCESS_KEY='wJalrXUtnFEMIbPxRfiCY'"), "setup_commands[3]"),
        (lambda c: c["setup_commands"].append("echo MLFLOW_TRACKING_PASSWORD=hunter2hunter2 >> ~/.env"), "setup_commands[3]"),
        (lambda c: c["provider"].__setitem__("aws_secret_access_key", "wJalrXUtnFEMIbPxRfiCY"), "provider.aws_secret_access_key"),
    ],
)
def test_unsafe_cluster_configs_exit_2_naming_the_key_not_the_secret(tmp_path, capsys, edit, key):
    assert main(["validate", str(variant(tmp_path, edit))]) == 2
    err = capsys.readouterr().err
    assert f"{key}:" in err
    for secret in ("AKIAABCDEFGHIJKLMNOP", "wJalrXUtnFEMIbPxRfiCY", "hunter2hunter2"):
        assert secret not in err


@pytest.mark.parametrize(
    "command",
    [
        "export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY",
        "export MLFLOW_TRACKING_TOKEN=\"${MLFLOW_TOKEN}\"",
        "ray start --head --dashboard-host=127.0.0.1 --node-ip-address=10.0.0.0",
    ],
)
def test_variables_and_loopback_pass(tmp_path, capsys, command):
    assert main(["validate", str(variant(tmp_path, lambda c: c["setup_commands"].append(command)))]) == 0


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed (.ci/run installs it)")
def test_the_file_sync_sends_code_only(tmp_path):
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    config = yaml.safe_load(CLUSTER.read_text())
    work = tmp_path / "work"
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(rel, work / rel)
    planted = ["data/flare22/case_0001.nii.gz", "mlflow.db", ".venv/bin/python", "ray_results/sweep/grid/state.json",
               "reports/sweep/report.html", "mlruns/0/meta.yaml", "cache/manifests/folder-1.parquet", ".git/HEAD"]  # fmt: skip
    for rel in planted:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("x")
    options = {"rsync_exclude": config.get("rsync_exclude"), "rsync_filter": config.get("rsync_filter")}
    args = SSHCommandRunner._create_rsync_filter_args(None, options)  # what `ray up` passes to rsync
    for remote, local in config["file_mounts"].items():
        node = tmp_path / "node" / remote.lstrip("/")
        node.mkdir(parents=True)
        source = (work / local).resolve()
        subprocess.run(["rsync", "-a", *args, f"{source}/", f"{node}/"], check=True, cwd=work)
    node = tmp_path / "node" / "home/ubuntu/raysuite"
    arrived = {p.relative_to(node).as_posix() for p in node.rglob("*") if p.is_file()}
    assert not [rel for rel in planted if rel in arrived]
    assert {"pyproject.toml", "README.md", "raysuite/data/ingest.py", "raysuite/cli.py", "sweeps/quickstart.yaml"} <= arrived
