"""Synthetic MURA v1.1: phantom musculoskeletal radiographs (implant plates across fractures
in abnormal studies) as PNGs with MURA's CSVs (:mod:`raysuite.data.formats.mura` describes
the layout and ingests it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysuite.data.formats.mura import BODY_PARTS, FOLDER, SPLITS

# Bone axis per body part: angle (degrees from vertical) and half-width (fraction of the
# short side); hands and fingers get several thin bones, the others one or two long ones.
_BONES: dict[str, tuple[float, float, int]] = {
    "XR_ELBOW": (35.0, 0.10, 2),
    "XR_FINGER": (0.0, 0.05, 3),
    "XR_FOREARM": (5.0, 0.07, 2),
    "XR_HAND": (10.0, 0.05, 4),
    "XR_HUMERUS": (0.0, 0.13, 1),
    "XR_SHOULDER": (60.0, 0.14, 1),
    "XR_WRIST": (15.0, 0.08, 2),
}


def phantom(
    rng: np.random.Generator, height: int, width: int, part: str, abnormal: bool
) -> np.ndarray:
    """A phantom radiograph, uint8 ``(height, width)``: soft tissue and bright bones along the
    body part's axis; an abnormal study adds a very bright implant plate across a dark
    fracture gap on the first bone (visible at 224 x 224)."""
    angle, half, n = _BONES[part]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    short = min(height, width)
    theta = np.deg2rad(angle + rng.normal(0, 4))
    # coordinates across (u) and along (v) the bone axis, centred
    u = (xx - width / 2) * np.cos(theta) - (yy - height / 2) * np.sin(theta)
    v = (xx - width / 2) * np.sin(theta) + (yy - height / 2) * np.cos(theta)
    img = np.full((height, width), 0.05, np.float32)
    img[np.abs(u) < short * 0.42] = 0.25  # soft tissue
    spacing = short * half * 2.6
    offsets = (np.arange(n) - (n - 1) / 2) * spacing + rng.normal(0, short * 0.01)
    for off in offsets:
        cortex = np.abs(u - off) < short * half
        img[cortex] = 0.62
        img[np.abs(u - off) < short * half * 0.45] = 0.5  # medulla
    if abnormal:
        off = offsets[0]
        at = rng.uniform(-0.15, 0.15) * max(height, width)
        gap = (np.abs(v - at) < max(1.5, short * 0.015)) & (np.abs(u - off) < short * half)
        img[gap] = 0.1
        plate = (np.abs(u - off - short * half * 0.9) < short * 0.035) & (
            np.abs(v - at) < short * 0.2
        )
        img[plate] = 1.0
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def synth(
    out_dir: str | Path, cases: int = 10, seed: int = 0, min_size: int = 160, max_size: int = 320
) -> dict[str, int]:
    """Write a MURA-v1.1 layout under ``out_dir/MURA-v1.1``: ``cases`` patients with 1-3
    studies each (body parts drawn from the seven), 1-3 images per study, sizes in
    [``min_size``, ``max_size``] (some below 224, as in MURA), every third image RGB. About
    45 % of studies are abnormal. The last fifth of the patients are the valid split
    (MURA's validation patients are numbered after the training ones). Returns counts."""
    base = Path(out_dir) / FOLDER
    rng = np.random.default_rng(seed)
    from PIL import Image

    n_valid = max(1, cases // 5) if cases > 1 else 0
    lines: dict[str, list[str]] = {
        f"{s}_{k}": [] for s in SPLITS for k in ("image_paths", "labeled_studies")
    }
    n_studies = n_images = n_abnormal = 0
    for p in range(1, cases + 1):
        split = "valid" if p > cases - n_valid else "train"
        patient = f"patient{p:05d}"
        numbers: dict[str, int] = {}
        for _ in range(int(rng.integers(1, 4))):
            part = str(rng.choice(BODY_PARTS))
            numbers[part] = numbers.get(part, 0) + 1
            abnormal = bool(rng.random() < 0.45)
            study = f"study{numbers[part]}_{'positive' if abnormal else 'negative'}"
            folder = f"{split}/{part}/{patient}/{study}"
            lines[f"{split}_labeled_studies"].append(f"{FOLDER}/{folder}/,{int(abnormal)}")
            n_studies += 1
            n_abnormal += abnormal
            for k in range(1, int(rng.integers(1, 4)) + 1):
                h, w = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
                image = Image.fromarray(phantom(rng, h, w, part, abnormal))
                if n_images % 3 == 2:
                    image = image.convert("RGB")
                (base / folder).mkdir(parents=True, exist_ok=True)
                image.save(base / folder / f"image{k}.png")
                lines[f"{split}_image_paths"].append(f"{FOLDER}/{folder}/image{k}.png")
                n_images += 1
    for name, rows in lines.items():
        (base / f"{name}.csv").write_text("".join(f"{r}\n" for r in rows))
    return {
        "patients": cases,
        "studies": n_studies,
        "images": n_images,
        "abnormal_studies": n_abnormal,
    }
