"""Time to draw a batch of 128 pairs of 96x96 crops from 512x512 slices: IoU interval
[0.3, 0.6] (Algorithm 1, r1=30, r2=4) versus plain random cropping, both drawing the
batch's corners in one call and copying the crops out of in-memory slices (no loading,
no augmentation, as the seed's §4.6 measurement). Prints the CPU-time ratio (seed: 1.04).

    .venv/bin/python benchmarks/crop_sampler.py [--batches 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from raysuite.data.crops import sample_pairs, sample_random_pairs

N, SIZE, SIDE = 128, 96, 512


def draw(slices: np.ndarray, interval: tuple[float, float] | None, rng: np.random.Generator) -> np.ndarray:
    picks = rng.integers(len(slices), size=N)
    if interval is None:
        first, second = sample_random_pairs(N, SIDE, SIDE, SIZE, rng)
    else:
        first, second, _, _ = sample_pairs(N, SIDE, SIDE, SIZE, interval, rng)
    out = np.empty((N, 2, SIZE, SIZE), np.float32)
    for i in range(N):
        image = slices[picks[i]]
        out[i, 0] = image[first[i, 0] : first[i, 0] + SIZE, first[i, 1] : first[i, 1] + SIZE]
        out[i, 1] = image[second[i, 0] : second[i, 0] + SIZE, second[i, 1] : second[i, 1] + SIZE]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    slices = np.random.default_rng(0).random((64, SIDE, SIDE), dtype=np.float32)
    arms = {"random": None, "iou[0.3,0.6]": (0.3, 0.6)}
    best = {name: float("inf") for name in arms}
    for _ in range(args.rounds):  # interleaved rounds; the best of each arm is compared
        for name, interval in arms.items():
            rng = np.random.default_rng(0)
            start = time.process_time()
            for _ in range(args.batches):
                draw(slices, interval, rng)
            best[name] = min(best[name], (time.process_time() - start) / args.batches)
    print(f"random cropping:  {best['random'] * 1e3:.3f} ms/batch")
    print(f"IoU [0.3, 0.6]:   {best['iou[0.3,0.6]'] * 1e3:.3f} ms/batch")
    print(f"ratio: {best['iou[0.3,0.6]'] / best['random']:.3f}  (seed: 1.04, target <= 1.02)")


if __name__ == "__main__":
    main()
