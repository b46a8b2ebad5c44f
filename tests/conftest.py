import pytest

from raysuite.data.formats import flare22


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


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # The dashboard is on, as `raysuite sweep` has it: Train V2's PlacementGroupCleaner asks
    # the State API whether a stopped trial's controller is gone before it frees the trial's
    # worker group. Without it a trial stopped by the scheduler kept its CPUs and the next
    # TorchTrainer waited for them forever.
    ray.init(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store for the test, as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
