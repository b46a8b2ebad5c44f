"""The README's cluster path on a real S3 API: ``RAYSUITE_STORAGE=s3://...`` and a real
MLflow server. The quickstart smoke sweep completes with every child FINISHED, its
stage-cache entries and checkpoints are objects in the bucket (markers naming full s3://
URIs), the driver's directory holds nothing, and a ``--resume`` from another, empty
directory continues the same parent run without training anything again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest

from raysuite import cli
from raysuite.track import mlflow_runs as track

pytestmark = pytest.mark.e2e

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml"


def _objects(endpoint: str, bucket: str) -> list[str]:
    pages = boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _read(endpoint: str, bucket: str, key: str) -> bytes:
    return boto3.client("s3", endpoint_url=endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()


def _history(client, runs) -> dict[str, list[int]]:
    return {r.info.run_id: [s for s, _ in track.metric_history(client, r.info.run_id, "finetune/epoch")] for r in runs}


def test_quickstart_on_s3_then_resume_from_an_empty_directory(ray_session, s3_server, s3_bucket, mlflow_server,
                                                               tmp_path, monkeypatch):  # fmt: skip
    bucket = s3_bucket.removeprefix("s3://")
    monkeypatch.setenv("RAYSUITE_STORAGE", f"{s3_bucket}/runs")
    monkeypatch.setenv("RAYSUITE_DATA", str(tmp_path / "data"))
    first_dir, second_dir = tmp_path / "driver-1", tmp_path / "driver-2"
    first_dir.mkdir()
    second_dir.mkdir()

    monkeypatch.chdir(first_dir)
    assert cli.main(["sweep", str(QUICKSTART), "--smoke"]) == 0
    assert os.listdir(first_dir) == []  # the driver's directory holds nothing the sweep needs

    keys = _objects(s3_server, bucket)
    state = json.loads(_read(s3_server, bucket, "runs/quickstart/sweep.json"))
    client = track.client(mlflow_server)
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED" and state["tracking_uri"] == mlflow_server
    runs = track.children(client, state["parent_run_id"])
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}  # 3 configurations x 2 seeds
    markers = [k for k in keys if k.startswith("runs/stage_cache/") and k.endswith("/_COMPLETE.json")]
    pretrain = [json.loads(_read(s3_server, bucket, k)) for k in markers]
    pretrain = [m for m in pretrain if m["stage"] == "pretrain"]
    assert len(pretrain) == 2  # two intervals pretrain once each; both seeds share it
    for marker in pretrain:  # a full URI, and the checkpoint it names is in the bucket
        assert marker["checkpoint"].startswith(f"{s3_bucket}/runs/stage_cache/")
        inner = marker["checkpoint"].removeprefix(f"{s3_bucket}/")
        assert any(k.startswith(f"{inner}/") for k in keys)
    assert {"runs/quickstart/summary.csv", "runs/quickstart/report.html"} <= set(keys)
    assert any(k.startswith("runs/quickstart/trials/") for k in keys)  # Tune's own state
    before = _history(client, runs)

    # another machine, another directory: the state is found in the bucket, nothing reruns
    monkeypatch.chdir(second_dir)
    assert cli.main(["sweep", str(QUICKSTART), "--smoke", "--resume"]) == 0
    again = track.children(client, state["parent_run_id"])
    assert {r.info.run_id for r in again} == set(before) and {r.info.status for r in again} == {"FINISHED"}
    assert _history(client, again) == before  # no epoch logged twice, no trial trained again
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
    sweeps = client.search_runs([parent.info.experiment_id], f"tags.`{track.ROLE}` = 'sweep'")
    assert len(sweeps) == 1  # the resume continued the parent run, it did not start one
