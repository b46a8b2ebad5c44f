"""Time to draw a batch of 128 pairs of 96x96 crops from 512x512 slices: IoU interval
[0.3, 0.6] (Algorithm 1, r1=30, r2=4) versus plain random cropping, both drawing the
batch's corners in one call; no augmentation. Prints the CPU-time ratio (seed: 1.04).

Two sources: ``memory`` (slices already in RAM: the sampler's cost laid bare) and ``files``
(each slice loaded from its own .npy file, as seed 001 stored and timed them: "basic
loading of 1,000 batches of size 128", §4.6).

    .venv/bin/python benchmarks/crop_sampler.py [--batches 1000] [--source memory|files|both]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from raysuite.data.crops import sample_pairs, sample_random_pairs

N, SIZE, SIDE = 128, 96, 512


def draw(slices, interval: tuple[float, float] | None, rng: np.random.Generator) -> np.ndarray:
    """``slices``: an array (memory) or a list of .npy paths (files)."""
    picks = rng.integers(len(slices), size=N)
    if interval is None:
        first, second = sample_random_pairs(N, SIDE, SIDE, SIZE, rng)
    else:
        first, second, _, _ = sample_pairs(N, SIDE, SIDE, SIZE, interval, rng)
    out = np.empty((N, 2, SIZE, SIZE), np.float32)
    for i in range(N):
        image = slices[picks[i]]
        if isinstance(image, str):
            image = np.load(image)
        out[i, 0] = image[first[i, 0] : first[i, 0] + SIZE, first[i, 1] : first[i, 1] + SIZE]
        out[i, 1] = image[second[i, 0] : second[i, 0] + SIZE, second[i, 1] : second[i, 1] + SIZE]
    return out


def measure(slices, batches: int, rounds: int) -> dict[str, list[float]]:
    """Per-round CPU time per batch of each arm, arms interleaved within every round."""
    arms = {"random": None, "iou": (0.3, 0.6)}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, interval in arms.items():
            rng = np.random.default_rng(0)
            start = time.process_time()
            for _ in range(batches):
                draw(slices, interval, rng)
            times[name].append((time.process_time() - start) / batches)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--source", choices=["memory", "files", "both"], default="both")
    args = ap.parse_args()
    slices = np.random.default_rng(0).random((64, SIDE, SIDE), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, image in enumerate(slices):
            paths.append(os.path.join(tmp, f"slice_{i:03d}.npy"))
            np.save(paths[-1], image)
        sources = {"memory": slices, "files": paths}
        for name in ["memory", "files"] if args.source == "both" else [args.source]:
            times = measure(sources[name], args.batches, args.rounds)
            ratios = sorted(i / r for i, r in zip(times["iou"], times["random"], strict=True))
            print(
                f"{name:6s}  random {np.median(times['random']) * 1e3:7.3f} ms/batch   "
                f"IoU [0.3, 0.6] {np.median(times['iou']) * 1e3:7.3f} ms/batch   "
                f"ratio median {np.median(ratios):.3f} (rounds {ratios[0]:.3f}..{ratios[-1]:.3f}; seed 1.04, target <= 1.02)"
            )


if __name__ == "__main__":
    main()
