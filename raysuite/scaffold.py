"""``raysuite new method NAME [DIR]``: a method package of your own, ready to test and sweep.

It writes, under DIR (nothing when any of these exists already)::

    NAME/__init__.py
    NAME/method.py            METHOD = Method(...): one training stage on the built-in
                              ``mura`` format (a small CNN: abnormal radiograph or not),
                              a typed OptimConfig, a recipe for the epoch loop, ROC AUC
    sweeps/NAME.yaml          a sweep using it by import path (method: NAME.method:METHOD),
                              synthetic data, a two-arm grid x 2 seeds
    tests/test_NAME.py        a few epochs in this process: the loss falls, the metrics are
                              the declared ones and in range; the config refuses typos
    NAME.egg-info/            the package's metadata with its entry point (group
                              ``raysuite.methods``), as setuptools writes it beside the
                              package: with DIR on PYTHONPATH, ``raysuite methods`` lists NAME
    pyproject.toml            (only when DIR has none) the same entry point for
                              ``pip install -e .``

Run from DIR: ``PYTHONPATH=. pytest -q``, ``PYTHONPATH=. raysuite methods NAME``,
``PYTHONPATH=. raysuite sweep sweeps/NAME.yaml --smoke``.

The metadata folder is the mechanism :mod:`importlib.metadata` itself uses: it finds the
``*.egg-info`` and ``*.dist-info`` folders of every ``sys.path`` entry, so the method is
registered by having DIR on the path, and installing the package (its ``pyproject.toml``
declares the same entry point) changes nothing that raysuite sees.
"""

from __future__ import annotations

import importlib.util
import keyword
import sys
from pathlib import Path

from raysuite.methods import GROUP, MODULES

__all__ = ["ScaffoldError", "files", "new_method"]


class ScaffoldError(ValueError):
    """The NAME cannot be a method package, or the files it would write exist already."""


METHOD_PY = '''"""__NAME__: a method of your own for raysuite. A small CNN tells abnormal musculoskeletal
radiographs (MURA: an implant plate across a fracture gap) from normal ones.

One training stage, ``train``, on raysuite's built-in ``mura`` data format: raysuite
synthesises the layout when the data root is missing (``data.synthetic_if_missing``) and
ingests it into a manifest with patient-level splits; this module turns manifest rows into
tensors, builds the model and hands the epoch loop a :class:`~raysuite.train.loop.Recipe`.

Metrics: ``val/auc`` (ROC AUC of the abnormal probability on the validation split, the
headline), ``val/accuracy`` (at probability 0.5) and ``val/auc_best`` (the loop's best
``val/auc`` so far). Every key a trial reports is declared in ``METHOD.metrics`` (with the
loop's own ``train/loss``, ``train/lr``, ...), so a spec's objective is checked before a sweep.

Sweep it by import path (``method: __NAME__.method:METHOD``) with this folder on
``PYTHONPATH``, or by name once registered as an entry point of group ``raysuite.methods``.
``raysuite methods __NAME__`` prints what a spec may set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field
from raysuite.data.datasets import ensure_manifest, prepare
from raysuite.data.formats import mura
from raysuite.methods.base import Method, OptimConfig, StageDef, StageInputs
from raysuite.methods.nn.cls_metrics import roc_auc
from raysuite.train.loop import Recipe, loader_evaluation
from raysuite.train.optim import warmup_cosine
from torch import nn
from torch.utils.data import DataLoader, Dataset


class TrainConfig(OptimConfig):
    """The classifier and its schedule: AdamW, a linear warm-up, then a cosine decay of the
    learning rate to 1 % of its peak, stepped per batch. ``epochs``, ``batch_size``, ``lr``,
    ``num_workers`` and ``amp`` are every training stage's (OptimConfig); the defaults of
    the first three are redeclared here."""

    epochs: int = Field(20, ge=1, description="passes over the training images")
    batch_size: int = Field(
        32, ge=2, description="global batch of one optimiser step, split over the DDP workers"
    )
    lr: float = Field(1e-3, gt=0, description="peak learning rate of AdamW")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW's decoupled weight decay")
    warmup_epochs: int = Field(1, ge=0, description="epochs of linear warm-up, part of epochs")
    image_size: int = Field(
        128, ge=16, description="side of the square input in pixels (zero-padded, then resized)"
    )
    width: int = Field(
        16, ge=4, description="channels of the first conv block, doubled in each of the next two"
    )
    pos_weight: float = Field(1.0, gt=0, description="weight of an abnormal image in the BCE loss")
    flip: bool = Field(True, description="random horizontal flips of the training images")


# ------------------------------------------------------------------------------ data


def prepare_data(data: dict[str, Any]) -> None:
    """Synthesise a MURA layout when ``data.root`` holds none (if the spec allows it), then
    ingest it once into the manifest (every node may call this: it is guarded by locks)."""
    prepare(
        data,
        lambda root: (root / mura.FOLDER).is_dir() or any(root.glob("*_image_paths.csv")),
        default_cases=40,
    )


def manifest_hash(data: dict[str, Any], stage: str, cfg: Any) -> str:
    """What of the data the stage cache key covers: the manifest's content hash (its rows
    and their split)."""
    _, meta = ensure_manifest(data)
    return meta["hash"]


def splits(data: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The manifest's rows by patient-level split (``data.split``): train, val, test."""
    df, _ = ensure_manifest(data)
    return {name: pd.DataFrame(df[df["split"] == name]) for name in ("train", "val", "test")}


class Radiographs(Dataset):
    """Manifest rows -> (image (1, S, S) float32 in [0, 1], label () float32: 1.0 abnormal)."""

    def __init__(self, root: Path, rows: pd.DataFrame, size: int, flip: bool):
        self.root, self.flip = root, flip
        self.prep = mura.Preprocessing(size=size)
        self.rows = rows.to_dict("records")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[i]
        image = torch.from_numpy(mura.preprocess(self.root, row, self.prep))[None]
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return image, torch.tensor(mura.target(row), dtype=torch.float32)


# ----------------------------------------------------------------------------- model


class SmallCNN(nn.Module):
    """(B, 1, S, S) -> (B,) logits of "abnormal": three conv-BN-ReLU-maxpool blocks of
    ``width``, 2 ``width`` and 4 ``width`` channels, then global average and max pooling
    (a small bright plate moves the max) and a linear layer."""

    def __init__(self, width: int):
        super().__init__()
        blocks: list[nn.Module] = []
        channels = 1
        for out in (width, 2 * width, 4 * width):
            blocks += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean((-2, -1)), f.amax((-2, -1))], dim=1)
        return self.head(pooled).squeeze(1)


# ---------------------------------------------------------------------------- recipe


def score(records: list[tuple[float, float]]) -> dict[str, float]:
    """(probability, label) per validation image -> ``val/auc`` and ``val/accuracy``."""
    p = np.array([r[0] for r in records], dtype=np.float64)
    y = np.array([r[1] for r in records], dtype=np.float64) >= 0.5
    return {"val/auc": roc_auc(p, y), "val/accuracy": float(np.mean((p >= 0.5) == y))}


def predict(model: nn.Module, device: torch.device, loader: DataLoader) -> list[tuple[float, float]]:
    """One (probability, label) record per image of ``loader``, in its order."""
    was_training = model.training
    model.eval()
    records: list[tuple[float, float]] = []
    with torch.no_grad():
        for x, y in loader:
            p = torch.sigmoid(model(x.to(device)).float()).cpu()
            records += list(zip(p.tolist(), y.tolist(), strict=True))
    model.train(was_training)
    return records


def train_recipe(inp: StageInputs[TrainConfig]) -> Recipe:
    """The ``train`` stage for the epoch loop: the model, the sharded training loader (each
    DDP worker draws ``batch_size / workers``), AdamW, the schedule, the loss and the
    validation split's evaluation (sharded over the workers, scored once)."""
    cfg = inp.cfg
    root = Path(inp.data["root"])
    parts = splits(inp.data)
    for name in ("train", "val"):
        if parts[name].empty:
            raise ValueError(f"train: the manifest's {name} split is empty (data.split ratios)")
    train = DataLoader(
        Radiographs(root, parts["train"], cfg.image_size, cfg.flip),
        batch_size=inp.local_batch(cfg.batch_size),
        shuffle=True,
        drop_last=len(parts["train"]) > cfg.batch_size,  # no batch of 1 for BatchNorm
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
    )
    val = DataLoader(
        Radiographs(root, parts["val"], cfg.image_size, flip=False), batch_size=cfg.batch_size
    )
    pos_weight = torch.tensor(cfg.pos_weight)

    def step(model: nn.Module, batch: Any, device: torch.device) -> dict[str, Any]:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        logits = model(x).float()
        loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight.to(device))
        return {"loss": loss}

    def lr_at(step: int, total: int) -> float:
        warmup = cfg.warmup_epochs * total // cfg.epochs
        return warmup_cosine(step, total, warmup, cfg.lr, cfg.lr * 0.01)

    return Recipe(
        stage="train",
        model=SmallCNN(cfg.width),
        train_loader=train,
        make_optimizer=lambda m: torch.optim.AdamW(
            m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        ),
        lr_at=lr_at,
        step=step,
        epochs=cfg.epochs,
        evaluate=loader_evaluation(val, predict, score),
        monitor="val/auc",
        mode="max",
        amp=cfg.amp,
    )


METHOD = Method(
    name="__NAME__",
    seed="",  # no seed paper: the description says what it is
    description="a small CNN on MURA radiographs: abnormal or not (raysuite new method)",
    data_format="mura",
    stages={"train": StageDef("train", TrainConfig, train_recipe, cacheable=True)},
    monitor="val/auc",
    metrics={"train": ("val/auc", "val/accuracy", "val/auc_best")},
    # TINY: what tests and --smoke run on a CPU in seconds
    tiny={"train": {"image_size": 64, "width": 8, "batch_size": 8, "num_workers": 0}},
    smoke={"train": {"epochs": 3, "warmup_epochs": 0}},
    smoke_cases=24,
    prepare_data=prepare_data,
    manifest_hash=manifest_hash,
    baseline={"train.flip": False},  # the arm the others are compared with: no augmentation
    epoch_seconds={"train": 30.0},  # a guess for raysuite plan's device-hour estimate
)
'''

INIT_PY = '''"""__NAME__: a raysuite method package (``__NAME__.method:METHOD``)."""
'''

SWEEP_YAML = """# __NAME__: do random flips of the training images help? Two arms (no flips, the method's
# baseline, and flips) x 2 seeds on MURA, synthesised when the data root is missing.
# From this folder:  PYTHONPATH=. raysuite sweep sweeps/__NAME__.yaml --smoke
name: __NAME__
method: __NAME__.method:METHOD
data:
  format: mura
  root: ${RAYSUITE_DATA:-data}/mura
  split: {ratios: [0.6, 0.2, 0.2], seed: 0}   # patient-level train, val, test
  synthetic_if_missing: true
  synthetic_cases: 40
stages:
  train: {epochs: 20, batch_size: 32, lr: 1.0e-3}
search:
  grid: {train.flip: [false, true]}
  repeats: {train.seed: 2}
objective: {metric: val/auc, mode: max}
resources: {workers_per_trial: 1, cpus_per_worker: 1, max_concurrent_trials: 2, max_failures: 1}
"""

TEST_PY = '''"""__NAME__ in this process (no Ray): a few epochs on synthetic MURA lower the loss, and
every reported metric is a declared one, in range; the stage config refuses typos."""

import math

import pytest
import torch
from pydantic import ValidationError
from raysuite.train.loop import fit, seed_everything
from raysuite.train.runtime import LocalRuntime

from __NAME__.method import METHOD


@pytest.fixture(autouse=True)
def _one_thread():
    """TINY convolutions run fastest on one thread, and a CPU shared with other processes
    stalls a multi-threaded one (as a Ray worker, torch gets one thread per CPU it holds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A spec's data section (the sweep's split) on a small synthetic MURA layout,
    synthesised and ingested."""
    root = tmp_path_factory.mktemp("data")
    data = {
        "format": "mura",
        "root": str(root / "mura"),
        "cache_dir": str(root / "cache"),
        "split": {"ratios": [0.6, 0.2, 0.2], "seed": 0},
        "synthetic_if_missing": True,
        "synthetic_cases": METHOD.smoke_cases,
    }
    METHOD.prepare_data(data)
    return data


def test_a_few_epochs_lower_the_loss(data: dict, tmp_path) -> None:
    seed_everything(0)
    inputs = METHOD.tiny_inputs("train", data, {"train": {"epochs": 4, "lr": 3e-3}})
    runtime = LocalRuntime(tmp_path / "checkpoints", device="cpu")
    fit(METHOD.stages["train"].recipe(inputs), runtime)
    losses = [r["train/loss"] for r in runtime.reports]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    last = runtime.reports[-1]
    assert set(METHOD.metrics["train"]) <= set(last) <= set(METHOD.metric_keys())
    assert 0.0 <= last["val/auc"] <= 1.0 and 0.0 <= last["val/accuracy"] <= 1.0
    assert last["val/auc_best"] == max(r["val/auc"] for r in runtime.reports)


def test_config_refuses_typos_and_bad_values() -> None:
    config = METHOD.stages["train"].config
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        config.model_validate({"learning_rate": 0.1})
    with pytest.raises(ValidationError, match="greater than 0"):
        config.model_validate({"lr": 0})
'''

PKG_INFO = """Metadata-Version: 2.1
Name: __NAME__
Version: 0.0.0
Summary: a raysuite method package (raysuite new method)
"""

ENTRY_POINTS = """[__GROUP__]
__NAME__ = __NAME__.method:METHOD
"""

PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "__NAME__"
version = "0.0.0"
description = "a raysuite method package (raysuite new method)"
requires-python = ">=3.10"
dependencies = ["raysuite"]

# what makes `raysuite methods` list it once installed (pip install -e .)
[project.entry-points."__GROUP__"]
__NAME__ = "__NAME__.method:METHOD"

[tool.setuptools]
packages = ["__NAME__"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]
"""


def check_name(name: str) -> None:
    """Refuse a NAME that cannot be a top-level package and method name: not an identifier,
    a keyword, a built-in method's name, or a module Python already finds (the package
    would shadow it, or be shadowed)."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ScaffoldError(f"{name!r} is not a valid Python package name (letters, digits, _; not a keyword)")
    if name in MODULES:
        raise ScaffoldError(f"{name!r} is a built-in raysuite method; choose another name")
    if name in sys.stdlib_module_names or name in sys.builtin_module_names:
        raise ScaffoldError(f"{name!r} is a module of Python's standard library; choose another name")
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is not None:
        where = found.origin or ", ".join(found.submodule_search_locations or []) or "?"
        raise ScaffoldError(f"{name!r} is already an importable module ({where}); choose another name")


def files(name: str, pyproject: bool = True) -> dict[str, str]:
    """Relative path -> text of every file the scaffold of ``name`` writes (``pyproject.toml``
    only when ``pyproject``)."""

    def fill(template: str) -> str:
        return template.replace("__NAME__", name).replace("__GROUP__", GROUP)

    out = {
        f"{name}/__init__.py": fill(INIT_PY),
        f"{name}/method.py": fill(METHOD_PY),
        f"sweeps/{name}.yaml": fill(SWEEP_YAML),
        f"tests/test_{name}.py": fill(TEST_PY),
        f"{name}.egg-info/PKG-INFO": fill(PKG_INFO),
        f"{name}.egg-info/entry_points.txt": fill(ENTRY_POINTS),
    }
    if pyproject:
        out["pyproject.toml"] = fill(PYPROJECT)
    return out


def new_method(name: str, directory: Path) -> list[Path]:
    """Write the scaffold of method ``name`` under ``directory`` (created when missing) and
    return the files written. Writes nothing and raises :class:`ScaffoldError` when ``name``
    is refused (:func:`check_name`) or any of its files exists; an existing
    ``pyproject.toml`` is kept (add the entry point the scaffold's would declare)."""
    check_name(name)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ScaffoldError(f"{directory} is not a directory")
    planned = files(name, pyproject=not (directory / "pyproject.toml").exists())
    existing = [path for path in planned if (directory / path).exists()]
    existing += [p for p in (name, f"{name}.egg-info") if (directory / p).exists() and p not in existing]
    if existing:
        raise ScaffoldError(f"would overwrite {', '.join(str(directory / p) for p in existing)}; nothing written")
    written = []
    for rel, text in planned.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
