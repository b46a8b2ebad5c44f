"""Storage URIs: local paths and a real S3 API (moto's server), reached through
``AWS_ENDPOINT_URL`` or through ``endpoint_override`` on the URI itself."""

from __future__ import annotations

import boto3
import pytest

from raysuite import storage


def test_join_and_full_uri_keep_the_scheme_and_the_query() -> None:
    base = "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(base, "sweep", "sweep.json") == "s3://bucket/runs/sweep/sweep.json?endpoint_override=127.0.0.1:9000&scheme=http"
    # Ray hands an S3 checkpoint back as bucket/key, without its scheme
    assert storage.full_uri(base, "bucket/runs/c/checkpoint_000001") == "s3://bucket/runs/c/checkpoint_000001?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.full_uri("/data/runs", "/data/runs/c/checkpoint_000001") == "/data/runs/c/checkpoint_000001"
    assert storage.join("/data/runs/", "x") == "/data/runs/x"


def test_local_write_is_atomic_and_leaves_no_temporary_file(tmp_path) -> None:
    target = tmp_path / "a" / "marker.json"
    storage.write_atomic(str(target), b"first")
    storage.write_atomic(str(target), b"second")
    assert storage.read_bytes(str(target)) == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["marker.json"]
    assert storage.read_bytes(str(tmp_path / "none.json")) is None


@pytest.mark.parametrize("how", ["environment", "uri"])
def test_s3_round_trip(how, s3_server, s3_bucket, monkeypatch, tmp_path) -> None:
    base = f"{s3_bucket}/runs"
    if how == "uri":  # no AWS_ENDPOINT_URL: the URI names the endpoint
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        base += f"?endpoint_override={s3_server.removeprefix('http://')}&scheme=http"
    path = storage.join(base, "x", "marker.json")
    storage.write_atomic(path, b'{"ok": 1}')
    assert storage.read_bytes(path) == b'{"ok": 1}'
    assert storage.read_bytes(storage.join(base, "x", "absent.json")) is None
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "summary.csv").write_text("config,n\n")
    storage.upload_dir(tmp_path / "report", storage.join(base, "sweep"))
    client = boto3.client("s3", endpoint_url=s3_server)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket.removeprefix("s3://"))["Contents"]}
    assert {"runs/x/marker.json", "runs/sweep/summary.csv"} <= keys
