"""Cost of seed 004's post-hoc search on saved predictions, at the real validation size.

Builds ``--images`` synthetic predictions of ``--size`` pixels (a fifth of SIIM-ACR's
10,675 labelled images is ~2,100 per validation fold; 256 px is the U-Net's input), with
crescent-like truth on a fifth of the images and a classifier, then times:

- save + load of the compressed prediction file (what the predict stage stores once);
- the default grid (19 pixel x 9 classifier thresholds x 4 minimum areas x 2 TTA modes)
  with the per-(TTA, threshold) statistics cache;
- the same combinations evaluated naively (each recomputing its pixel statistics),
  measured on a sample of combinations and extrapolated;
- an Optuna search of ``--trials`` trials.

    .venv/bin/python benchmarks/posthoc_search.py [--images 2000] [--size 256] [--trials 200]

Prints the seconds of each, and the ratio naive / cached (aim: >= 10x, so a full grid costs
seconds, not the minutes a retraining-free search should never need).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from raysuite.methods import knobs
from raysuite.methods.nn import posthoc
from raysuite.tune.posthoc_search import optuna_search


def synthetic_predictions(images: int, size: int, seed: int = 0) -> posthoc.Predictions:
    """(N, 2, S, S) uint8 probabilities, (N, S, S) truth, (N, 2) classifier probabilities."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:size, 0:size] / size
    truth = np.zeros((images, size, size), bool)
    positive = rng.random(images) < 0.2
    for i in np.flatnonzero(positive):
        r = rng.uniform(0.1, 0.25)
        truth[i] = ((u - 0.3) ** 2 + (v - 0.3) ** 2 < r**2) & ((u - 0.33) ** 2 + (v - 0.33) ** 2 > (0.8 * r) ** 2)
    seg = np.empty((images, 2, size, size), np.uint8)
    for i in range(images):
        p = np.clip(0.7 * truth[i] + rng.normal(0.15, 0.12, (size, size)), 0, 1)
        seg[i, 0] = posthoc.quantise(p)
        seg[i, 1] = posthoc.quantise(np.clip(p + rng.normal(0, 0.05, (size, size)), 0, 1))
    cls = np.clip(positive[:, None] * 0.5 + rng.uniform(0.1, 0.5, (images, 2)), 0, 1).astype(np.float32)
    return posthoc.Predictions(seg=seg, truth=truth, cls=cls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--naive-sample", type=int, default=12, help="combinations timed naively")
    args = parser.parse_args()

    pred = synthetic_predictions(args.images, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "val.npz"
        start = time.perf_counter()
        posthoc.save_predictions(path, pred)
        pred = posthoc.load_predictions(path)
        io_s = time.perf_counter() - start
        size_mb = path.stat().st_size / 2**20

    space = posthoc.default_space()
    start = time.perf_counter()
    table = posthoc.search_table(knobs.grid_search(posthoc.evaluator(pred), space, "dice_per_image", "max"))
    grid_s = time.perf_counter() - start

    rng = np.random.default_rng(1)
    rows = table.iloc[rng.choice(len(table), args.naive_sample, replace=False)]
    start = time.perf_counter()
    for row in rows.itertuples():
        posthoc.evaluate(pred, row.pixel_threshold, row.cls_threshold, int(row.min_area), row.tta)
    naive_s = (time.perf_counter() - start) / args.naive_sample * len(table)

    ranges = {
        "tta": knobs.Choice(("none", "flip")),
        "pixel_threshold": knobs.FloatRange(0.01, 0.99),
        "cls_threshold": knobs.FloatRange(0.01, 0.99),
        "min_area": knobs.IntRange(0, 2048),
    }
    start = time.perf_counter()
    rows = optuna_search(posthoc.evaluator(pred), ranges, "dice_per_image", "max", args.trials, seed=0)
    found = posthoc.search_table(rows)
    optuna_s = time.perf_counter() - start

    print(f"predictions: {args.images} images of {args.size}px, file {size_mb:.1f} MiB, save+load {io_s:.1f} s")
    print(f"grid: {len(table)} combinations in {grid_s:.1f} s (best dice_per_image {table.dice_per_image.iloc[0]:.4f})")
    print(f"naive (stats recomputed per combination, extrapolated): {naive_s:.1f} s")
    print(f"optuna: {args.trials} trials in {optuna_s:.1f} s (best dice_per_image {found.dice_per_image.iloc[0]:.4f})")
    print(f"ratio naive / cached grid: {naive_s / grid_s:.1f}x")


if __name__ == "__main__":
    main()
