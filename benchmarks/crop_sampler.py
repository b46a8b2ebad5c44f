"""Time to draw a batch of 128 pairs of 96x96 crops from 512x512 slices: IoU interval
[0.3, 0.6] (Algorithm 1) versus plain random cropping. Prints the ratio (seed: 1.04).

    .venv/bin/python benchmarks/crop_sampler.py [--batches 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from raysuite.data.crops import sample_pair, sample_random_pair


def draw(slices: np.ndarray, interval: tuple[float, float] | None, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((128, 2, 96, 96), np.float32)
    for i in range(128):
        image = slices[rng.integers(len(slices))]
        pair = sample_random_pair(512, 512, 96, rng) if interval is None else sample_pair(512, 512, 96, interval, rng)
        for j, (top, left) in enumerate((pair.first, pair.second)):
            out[i, j] = image[top : top + 96, left : left + 96]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=1000)
    args = ap.parse_args()
    slices = np.random.default_rng(0).random((64, 512, 512), dtype=np.float32)
    times = {}
    for name, interval in (("random", None), ("iou[0.3,0.6]", (0.3, 0.6))) * 2:  # second round counts
        rng = np.random.default_rng(0)
        start = time.process_time()
        for _ in range(args.batches):
            draw(slices, interval, rng)
        times[name] = (time.process_time() - start) / args.batches
    print(f"random cropping:  {times['random'] * 1e3:.2f} ms/batch")
    print(f"IoU [0.3, 0.6]:   {times['iou[0.3,0.6]'] * 1e3:.2f} ms/batch")
    print(f"ratio: {times['iou[0.3,0.6]'] / times['random']:.3f}  (seed: 1.04, target <= 1.02)")


if __name__ == "__main__":
    main()
