import os
import tempfile
from pathlib import Path

# The libraries' weight caches point into a fresh folder before anything imports
# huggingface_hub (it reads HF_HOME once): tests never read, nor download into, the
# machine's own caches; a test places the files it needs (``pretrained_cache``).
_CACHES = tempfile.mkdtemp(prefix="raysuite-test-caches-")
os.environ["TORCH_HOME"] = os.path.join(_CACHES, "torch")
os.environ["HF_HOME"] = os.path.join(_CACHES, "huggingface")
os.environ["HF_HUB_OFFLINE"] = "1"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def files_holding(needles: "set[bytes]", paths: "list[Path]") -> "dict[Path, bytes]":
    """Each file of ``paths`` that holds one of ``needles`` (byte strings), with one needle it
    holds. A sweep leaves GBs (checkpoints, shard caches, Ray's session): a needle at a time
    in Python read them once per needle (minutes), so needles without a newline go to one
    ``grep -F`` (one multi-pattern pass); the rest are searched here."""
    import subprocess

    lined = sorted(n for n in needles if n and b"\n" not in n)
    found: dict[Path, bytes] = {}
    if lined and paths:
        patterns = Path(tempfile.mkstemp(prefix="needles-")[1])
        patterns.write_bytes(b"\n".join(lined) + b"\n")
        hits = set()
        for start in range(0, len(paths), 500):  # argv stays short
            done = subprocess.run(["grep", "-aFl", "-f", str(patterns), "--", *map(str, paths[start : start + 500])],
                                  capture_output=True, env={**os.environ, "LC_ALL": "C"})  # fmt: skip
            assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
            hits |= {Path(line) for line in done.stdout.decode().splitlines()}
        patterns.unlink()
        for path in hits:
            blob = path.read_bytes()
            found[path] = next(n for n in lined if n in blob)
    rest = [n for n in needles if n not in lined]
    for path in paths if rest else []:
        blob = path.read_bytes()
        hit = next((n for n in rest if n in blob), None)
        if hit is not None:
            found.setdefault(path, hit)
    return found


# A local S3 API (moto's server, started by the ``s3_server`` fixture) answers every s3://
# URI of the tests. Its address is fixed here, before any test starts Ray: Ray's workers
# inherit the environment of the process that starts it, and pyarrow reads the endpoint from
# it. The keys are moto's dummies: no test can reach, or pay for, a real bucket.
S3_ENDPOINT = f"http://127.0.0.1:{free_port()}"
os.environ.update({"AWS_ENDPOINT_URL": S3_ENDPOINT, "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})  # fmt: skip
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402
import torch  # noqa: E402

from raysuite.methods.nn import pretrained  # noqa: E402


class PretrainedCache:
    """Places state dicts where torchvision (``$TORCH_HOME/hub/checkpoints``) and timm (the
    Hugging Face cache) look for published weights, so the offline machine resolves
    ``imagenet`` / ``coco`` exactly as a networked one would after its first download."""

    def state(self, arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
        """A state dict that fits ``arch``, with random values a scratch model would not have."""
        g = torch.Generator().manual_seed(seed)
        return {
            k: (torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v.clone())
            for k, v in pretrained.arch_of(arch).build().state_dict().items()
        }

    def place(self, arch: str, value: str = "imagenet", state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        state = self.state(arch) if state is None else state
        source = pretrained.source_of(arch, value)
        assert isinstance(source, pretrained.Source), value
        path = pretrained.cache_path(source)
        if source.library == "timm":
            from safetensors.torch import save_file

            snapshot = path.parent.parent
            revision = "0" * 40
            path = snapshot / revision / path.name
            (snapshot.parent / "refs").mkdir(parents=True, exist_ok=True)
            (snapshot.parent / "refs" / "main").write_text(revision)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, path)
        return state

    def clear(self) -> None:
        import shutil

        shutil.rmtree(_CACHES, ignore_errors=True)
        os.makedirs(_CACHES, exist_ok=True)


@pytest.fixture
def pretrained_cache():
    """The library caches with a clean slate before and after the test."""
    cache = PretrainedCache()
    cache.clear()
    yield cache
    cache.clear()


@pytest.fixture(scope="session", autouse=True)
def _salt():
    """A fixed patient-key salt: tests never create ~/.config/raysuite/salt."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYSUITE_SALT", "raysuite-tests-salt-000")
        yield


@pytest.fixture(scope="session")
def synth_ingested(tmp_path_factory):
    """``synth_ingested(format, cases=N, seed=0, **synth_kwargs) -> Path``: the root of a
    dataset written by ``raysuite.data.synth.<format>.synth`` and marked complete (what
    ``ensure_manifest`` ingests, once per ``cache_dir``). Written once per session for each
    distinct (format, cases, seed, keyword arguments): callers share the root, so they only
    read it (a test that edits a dataset writes its own into ``tmp_path``)."""
    import importlib

    roots: dict[tuple, Path] = {}

    def make(format: str, cases: int, seed: int = 0, **kwargs) -> Path:
        key = (format, cases, seed, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in roots:
            root = tmp_path_factory.mktemp(f"{format}-{cases}")
            importlib.import_module(f"raysuite.data.synth.{format}").synth(root, cases=cases, seed=seed, **kwargs)
            (root / ".raysuite-complete").write_text("synthetic\n")
            roots[key] = root
        return roots[key]

    return make


@pytest.fixture(scope="session")
def flare_root(synth_ingested):
    """A small synthetic FLARE22 dataset shared by the tests (5 labelled + 5 unlabelled)."""
    return synth_ingested("flare22", cases=5)


@pytest.fixture(scope="session")
def vindr_root(synth_ingested):
    """A small synthetic VinDr-CXR dataset (48 radiographs of 128-160 px, ~60 % abnormal)."""
    return synth_ingested("vindr_cxr", cases=48, size=(128, 160))


@pytest.fixture(scope="session")
def siim_root(synth_ingested):
    """A small synthetic SIIM-ACR dataset (64 training radiographs of 128 px, a third with a
    pneumothorax, and 16 unlabelled test images)."""
    return synth_ingested("siim_acr", cases=64, size=128)


@pytest.fixture(scope="session")
def cxr14_root(synth_ingested):
    """A small synthetic ChestX-ray14 dataset (90 patients, 181 radiographs of 128 px, 37
    with boxes)."""
    return synth_ingested("chestxray14", cases=90, size=128)


@pytest.fixture(scope="session")
def genesis_sources(synth_ingested, cxr14_root, flare_root):
    """``data.sources`` for genesis_cls: ChestX-ray14 and FLARE22 (shared with the other
    tests), a folder of MRI phantoms, LUNA16 (40 scans) and MURA (40 patients)."""
    brain = synth_ingested("folder", cases=6, size=48, slices=8)
    luna = synth_ingested("luna16", cases=40)
    mura = synth_ingested("mura", cases=40, min_size=48, max_size=96)
    return {"sources": {
        "cxr14": {"format": "chestxray14", "root": str(cxr14_root)},
        "flare": {"format": "flare22", "root": str(flare_root)},
        "brain": {"format": "folder", "root": str(brain), "modality": "MR", "body_part": "BRAIN"},
        "luna": {"format": "luna16", "root": str(luna)},
        "mura": {"format": "mura", "root": str(mura)},
    }}  # fmt: skip


@pytest.fixture
def write_spec(tmp_path):
    """``write_spec(text, filename="spec.yaml", **fields) -> Path``: a sweep spec written to
    ``tmp_path / filename``. ``text`` is dedented; with ``fields`` it is a ``str.format``
    template, and ``cache`` (``tmp_path / "cache"``) and ``storage`` (``tmp_path /
    "storage"``) are filled unless given. A mapping is written as YAML."""
    import textwrap

    import yaml

    def write(text, filename: str = "spec.yaml", **fields) -> Path:
        path = tmp_path / filename
        if not isinstance(text, str):
            path.write_text(yaml.safe_dump(dict(text), sort_keys=False))
            return path
        text = textwrap.dedent(text)
        if fields:
            text = text.format(**{"cache": tmp_path / "cache", "storage": tmp_path / "storage", **fields})
        path.write_text(text)
        return path

    return write


@pytest.fixture
def method_data(request, tmp_path):
    """The data section of a method on its synthetic data: ``method_data(method)``."""
    fixtures = {
        "flare22": "flare_root",
        "vindr_cxr": "vindr_root",
        "siim_acr": "siim_root",
        "chestxray14": "cxr14_root",
        "sources": "genesis_sources",
    }

    def data(method):
        value = request.getfixturevalue(fixtures[method.data_format])
        if method.data_format == "sources":
            return {**value, "cache_dir": str(tmp_path / "cache")}
        return {"format": method.data_format, "root": str(value), "cache_dir": str(tmp_path / "cache")}

    return data


def start_local_ray() -> None:
    """The tests' Ray: ``address="local"``, never a cluster that ``ray start`` left running;
    the dashboard on a free port, so the State API is up even when another Ray on the
    machine holds 8265."""
    import ray

    ray.init(address="local", num_cpus=2, log_to_driver=False, dashboard_port=free_port())


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # The dashboard is on, as `raysuite sweep` has it: Train V2's PlacementGroupCleaner asks
    # the State API whether a stopped trial's controller is gone before it frees the trial's
    # worker group. Without it a trial stopped by the scheduler kept its CPUs and the next
    # TorchTrainer waited for them forever.
    start_local_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (:data:`S3_ENDPOINT`), for the session."""
    from moto.server import ThreadedMotoServer

    host, port = S3_ENDPOINT.rsplit(":", 1)
    server = ThreadedMotoServer(ip_address=host.removeprefix("http://"), port=int(port), verbose=False)
    server.start()
    yield S3_ENDPOINT
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the local S3 server: its ``s3://`` URI."""
    import uuid

    import boto3

    name = f"raysuite-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1: ``backend_store_uri`` (e.g. ``sqlite:///...``),
    artifacts proxied into ``artifacts``, its output appended to ``log``. :meth:`start` waits
    (up to ``START_S``: minutes on a loaded 2-core machine, seconds otherwise) until it answers
    ``/health``; :meth:`stop` ends its process group. The port stays the same across a
    :meth:`stop` and a new :meth:`start` (a restart on the same store)."""

    START_S = 600.0

    def __init__(self, backend_store_uri: str, artifacts: Path, log: Path, port: int | None = None):
        self.backend_store_uri, self.artifacts, self.log = backend_store_uri, Path(artifacts), Path(log)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> "MlflowServer":
        import subprocess
        import sys
        import time
        import urllib.request

        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1", "--backend-store-uri", self.backend_store_uri,
                 "--artifacts-destination", str(self.artifacts)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.log.parent, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + self.START_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=120)

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def mlflow_server(tmp_path_factory, monkeypatch):
    """A real ``mlflow server`` (:class:`MlflowServer`: sqlite store, artifacts proxied into a
    temporary folder), as MLFLOW_TRACKING_URI: a sweep's driver then keeps nothing in its
    directory."""
    base = tmp_path_factory.mktemp("mlflow-server")
    with MlflowServer(f"sqlite:///{base / 'mlflow.db'}", base / "artifacts", base / "server.log") as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        yield server.uri


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store for the test, as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
