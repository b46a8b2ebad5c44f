import os
import tempfile

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

from raysuite.data.formats import flare22  # noqa: E402
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
def flare_root(tmp_path_factory):
    """A small synthetic FLARE22 dataset shared by the tests (5 labelled + 5 unlabelled)."""
    root = tmp_path_factory.mktemp("flare22")
    flare22.synth(root, cases=5, seed=0)
    (root / ".raysuite-complete").write_text("synthetic\n")
    return root


@pytest.fixture(scope="session")
def vindr_root(tmp_path_factory):
    """A small synthetic VinDr-CXR dataset (48 radiographs of 128-160 px, ~60 % abnormal)."""
    from raysuite.data.formats import vindr_cxr

    root = tmp_path_factory.mktemp("vindr_cxr")
    vindr_cxr.synth(root, cases=48, seed=0, size=(128, 160))
    (root / ".raysuite-complete").write_text("synthetic\n")
    return root


@pytest.fixture(scope="session")
def siim_root(tmp_path_factory):
    """A small synthetic SIIM-ACR dataset (64 training radiographs of 128 px, a third with a
    pneumothorax, and 16 unlabelled test images)."""
    from raysuite.data.formats import siim_acr

    root = tmp_path_factory.mktemp("siim_acr")
    siim_acr.synth(root, cases=64, seed=0, size=128)
    (root / ".raysuite-complete").write_text("synthetic\n")
    return root


@pytest.fixture(scope="session")
def cxr14_root(tmp_path_factory):
    """A small synthetic ChestX-ray14 dataset (90 patients, 181 radiographs of 128 px, 37
    with boxes)."""
    from raysuite.data.formats import chestxray14

    root = tmp_path_factory.mktemp("chestxray14")
    chestxray14.synth(root, cases=90, seed=0, size=128)
    (root / ".raysuite-complete").write_text("synthetic\n")
    return root


@pytest.fixture(scope="session")
def genesis_sources(tmp_path_factory, cxr14_root, flare_root):
    """``data.sources`` for genesis_cls: ChestX-ray14 and FLARE22 (shared with the other
    tests), a folder of MRI phantoms, LUNA16 (40 scans) and MURA (40 patients)."""
    from raysuite.data.formats import folder, luna16, mura

    roots = {}
    for name, module, kwargs in (("brain", folder, {"cases": 6, "size": 48, "slices": 8}),
                                 ("luna", luna16, {"cases": 40}),
                                 ("mura", mura, {"cases": 40, "min_size": 48, "max_size": 96})):  # fmt: skip
        roots[name] = tmp_path_factory.mktemp(name)
        module.synth(roots[name], seed=0, **kwargs)
        (roots[name] / ".raysuite-complete").write_text("synthetic\n")
    return {"sources": {
        "cxr14": {"format": "chestxray14", "root": str(cxr14_root)},
        "flare": {"format": "flare22", "root": str(flare_root)},
        "brain": {"format": "folder", "root": str(roots["brain"]), "modality": "MR", "body_part": "BRAIN"},
        "luna": {"format": "luna16", "root": str(roots["luna"])},
        "mura": {"format": "mura", "root": str(roots["mura"])},
    }}  # fmt: skip


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


@pytest.fixture
def mlflow_server(tmp_path_factory, monkeypatch):
    """A real ``mlflow server`` on 127.0.0.1 (sqlite store, artifacts proxied into a temporary
    folder), as MLFLOW_TRACKING_URI: a sweep's driver then keeps nothing in its directory."""
    import subprocess
    import sys
    import time
    import urllib.request

    base = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}", "--artifacts-destination", str(base / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("mlflow server did not start") from None
            time.sleep(0.5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store for the test, as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
