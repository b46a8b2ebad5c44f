"""Sharded evaluation (``raysuite.train.loop.Evaluation``): two gloo processes (plain
``torch.distributed``, no Ray) score the gathered per-item records to the single-process
metric, for iou_simsiam_seg's sliding-window dice and for an AUC that a mean of per-shard
metrics would get wrong."""

from __future__ import annotations

import contextlib
import pickle
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import raysuite.methods  # noqa: F401  (first: importing raysuite.train.loop first is an import cycle)
from raysuite.methods import METHODS
from raysuite.methods.nn.cls_metrics import roc_auc
from raysuite.train import collectives
from raysuite.train.loop import Evaluation, run_evaluation
from raysuite.train.runtime import LocalRuntime

WORLD = 2


class DistRuntime:
    """The collective half of a Runtime over the initialised default process group."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    broadcast = staticmethod(collectives.broadcast)
    gather = staticmethod(collectives.gather)
    all_true = staticmethod(collectives.all_true)
    all_mean = staticmethod(collectives.all_mean)


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: Path, job, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=300))  # fmt: skip
    try:
        result = job(DistRuntime(), *args)
        (out / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, job, *args) -> list:
    """``job(runtime, *args)`` on each of WORLD gloo ranks; their return values by rank."""
    mp.spawn(_worker, args=(_free_port(), tmp_path, job, args), nprocs=WORLD, join=True)
    return [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]


# ----------------------------------------------------------------- generic: AUC over items

# 7 items, rank 0 gets 0,2,4,6 and rank 1 gets 1,3,5 (an unequal split). Within each shard
# every positive outscores every negative (AUC 1 per shard), but rank 1's positives score
# below rank 0's negatives, so the AUC of all items is < 1.
SCORES = [0.9, 0.3, 0.8, 0.1, 0.9, 0.2, 0.8]
LABELS = [1, 1, 0, 0, 1, 0, 0]


def _auc_evaluation() -> Evaluation:
    def predict(model, device, shard):
        return [(i, SCORES[i], LABELS[i], dist.get_rank() if dist.is_initialized() else 0) for i in shard]

    def score(records):
        ids = [r[0] for r in records]
        return {
            "auc": roc_auc(np.array([r[1] for r in records]), np.array([r[2] for r in records])),
            "in_order": float(ids == list(range(len(SCORES)))),
            "ranks": [r[3] for r in records],
        }

    return Evaluation(range(len(SCORES)), predict, score)


def _auc_job(runtime):
    one = Evaluation([5], lambda m, d, shard: [len(shard)], lambda records: {"records": records})
    return run_evaluation(_auc_evaluation(), None, runtime.device, runtime), run_evaluation(one, None, runtime.device, runtime)


def test_sharded_auc_scores_gathered_records_not_shard_means(tmp_path):
    single = _auc_evaluation()(None, torch.device("cpu"))
    shard_means = np.mean([roc_auc(np.array(SCORES[r::WORLD]), np.array(LABELS[r::WORLD])) for r in range(WORLD)])
    assert shard_means == 1.0 and single["auc"] == pytest.approx(10 / 12)  # a mean of shard metrics is detectable
    results = _spawn(tmp_path, _auc_job)
    for sharded, one in results:
        assert sharded["auc"] == pytest.approx(single["auc"], abs=1e-12)
        assert sharded["in_order"] == 1.0
        assert sharded["ranks"] == [i % WORLD for i in range(len(SCORES))]  # items r::W on rank r
        assert one == {"records": [1]}  # rank 1's empty shard: predict not called
    assert run_evaluation(_auc_evaluation(), None, torch.device("cpu"), LocalRuntime(device="cpu")) == single


def test_plain_callable_evaluate_runs_on_rank_0_and_is_broadcast():
    assert run_evaluation(lambda m, d: {"x": 1.0}, None, torch.device("cpu"), LocalRuntime(device="cpu")) == {"x": 1.0}


# ------------------------------------------------------- iou_simsiam_seg's finetune dice

METHOD = "iou_simsiam_seg"


def _seg_recipe(data: dict, state: Path | None = None):
    method = METHODS[METHOD]
    overrides = {"finetune": {**method.smoke["finetune"], "labelled_cases": 2, "val_cases": 3}}
    recipe = method.stages["finetune"].recipe(method.tiny_inputs("finetune", data, overrides))
    if state is not None:
        recipe.model.load_state_dict(torch.load(state, weights_only=True))
    return recipe


def _reference_dice(recipe, data: dict) -> dict[str, float]:
    """The evaluation as it was before sharding (one process, every case in turn)."""
    from monai.inferers import sliding_window_inference

    from raysuite.data.formats import flare22
    from raysuite.methods import iou_simsiam_seg as m
    from raysuite.methods.nn.seg_metrics import dice_per_slice

    cfg = m.FinetuneConfig.model_validate({**METHODS[METHOD].tiny["finetune"], **METHODS[METHOD].smoke["finetune"],
                                           "labelled_cases": 2, "val_cases": 3})  # fmt: skip
    cases = m._cases(data, cfg)
    val = m._load_cases(data, cases[cases.split == "val"])
    net = recipe.model.eval()
    organ, with_bg = [], []
    with torch.no_grad():
        for img, seg in val:
            for z0 in range(0, img.shape[0], 16):
                x = torch.from_numpy(np.asarray(img[z0 : z0 + 16], np.float32))[:, None]
                logits = sliding_window_inference(x, cfg.crop_size, cfg.sw_batch_size, net, overlap=cfg.sw_overlap)
                dice = dice_per_slice(logits.argmax(1), torch.from_numpy(np.asarray(seg[z0 : z0 + 16], np.int64)), flare22.NUM_CLASSES)
                organ.append(dice[:, 1:])
                with_bg.append(dice)
    every = torch.cat(with_bg)  # (slices, classes), NaN where a class is absent from a slice
    present = ~torch.isnan(every)
    per_slice = torch.where(present, every, 0).sum(1)[present.any(1)] / present.sum(1)[present.any(1)]
    return {"val/dice": float(per_slice.mean()), "val/dice_organs": m._nanmean(torch.cat(organ)),
            "val/dice_bg": m._nanmean(every)}  # fmt: skip


def _seg_job(runtime, data: dict, state: Path):
    recipe = _seg_recipe(data, state)
    sharded = run_evaluation(recipe.evaluate, recipe.model, runtime.device, runtime)
    if runtime.rank == 0:  # the two single-process values side by side, one per process
        return sharded, recipe.evaluate(recipe.model, runtime.device)
    return sharded, _reference_dice(recipe, data)


def test_sharded_dice_equals_single_process(flare_root, tmp_path):
    data = {"format": "flare22", "root": str(flare_root), "cache_dir": str(tmp_path / "cache")}
    torch.manual_seed(0)
    recipe = _seg_recipe(data)
    assert isinstance(recipe.evaluate, Evaluation) and len(recipe.evaluate.items) == 3  # split 2 / 1
    with torch.no_grad():  # a model whose argmax varies over the image: the dice is not trivially 0
        for p in recipe.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    torch.save(recipe.model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "out").mkdir()
    results = _spawn(tmp_path / "out", _seg_job, data, tmp_path / "model.pt")
    (_, single), (_, reference) = results
    assert 0 < single["val/dice"] < 1
    for key in ("val/dice", "val/dice_organs", "val/dice_bg"):
        assert single[key] == pytest.approx(reference[key], abs=1e-6)
        for sharded, _ in results:
            assert sharded[key] == pytest.approx(single[key], abs=1e-6)
