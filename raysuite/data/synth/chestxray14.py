"""Synthetic NIH ChestX-ray14: phantom CXRs whose findings have a place and a texture, in
the published layout with its CSVs and split lists (:mod:`raysuite.data.formats.chestxray14`
describes the layout and ingests it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from raysuite.data.formats.chestxray14 import (
    BBOX_LIST,
    BOX_CLASSES,
    BOX_LABEL_ALIASES,
    BOX_SPACE,
    CLASSES,
    DATA_ENTRY,
    NO_FINDING,
)

# Phantom finding signatures: centre and semi-axes (fractions of the image), a pattern and
# its strength. Each class sits at its own place with its own texture, so both the image
# label and the box are learnable; the box is the ellipse's bounding box.
_SIGNATURES: dict[str, tuple[float, float, float, float, str, float]] = {
    "Atelectasis": (0.30, 0.63, 0.09, 0.045, "band", 0.35),
    "Cardiomegaly": (0.55, 0.64, 0.20, 0.14, "disk", 0.25),
    "Effusion": (0.71, 0.77, 0.12, 0.06, "band", 0.45),
    "Infiltration": (0.32, 0.40, 0.08, 0.10, "patchy", 0.40),
    "Mass": (0.68, 0.36, 0.07, 0.07, "disk", 0.50),
    "Nodule": (0.27, 0.28, 0.03, 0.03, "disk", 0.65),
    "Pneumonia": (0.70, 0.55, 0.09, 0.09, "haze", 0.45),
    "Pneumothorax": (0.25, 0.20, 0.08, 0.07, "dark", 0.0),
    "Consolidation": (0.38, 0.52, 0.06, 0.06, "disk", 0.40),
    "Edema": (0.50, 0.42, 0.30, 0.10, "haze", 0.25),
    "Emphysema": (0.70, 0.22, 0.09, 0.07, "dark", 0.0),
    "Fibrosis": (0.30, 0.78, 0.08, 0.05, "stripes", 0.45),
    "Pleural_Thickening": (0.85, 0.40, 0.03, 0.15, "band", 0.40),
    "Hernia": (0.45, 0.86, 0.07, 0.04, "disk", 0.45),
}


# finding centres move this far (fraction of the image), so where is read from the image
_JITTER = 0.08


def _ellipse(
    xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2


def phantom(
    rng: np.random.Generator, size: int, labels: Sequence[str]
) -> tuple[np.ndarray, dict[str, tuple[float, float, float, float]]]:
    """A phantom frontal CXR: uint8 ``(size, size)`` and, per finding, its ellipse
    ``(cx, cy, rx, ry)`` as fractions of the image (the box is its bounding box)."""
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    img = np.full((size, size), 0.06, np.float32)
    img[_ellipse(xx, yy, 0.5, 0.56, 0.47, 0.52) < 1] = 0.55  # body
    lungs = (_ellipse(xx, yy, 0.31, 0.45, 0.15, 0.31) < 1) | (
        _ellipse(xx, yy, 0.69, 0.45, 0.15, 0.31) < 1
    )
    img[lungs] = 0.22 + 0.05 * (np.sin(2 * np.pi * yy[lungs] * 9) > 0.55)  # ribs
    img[_ellipse(xx, yy, 0.54, 0.64, 0.11, 0.09) < 1] = 0.62  # heart
    img[np.abs(xx - 0.5) < 0.025] = 0.70  # spine
    where = {}
    for label in labels:
        cx, cy, rx, ry, kind, amp = _SIGNATURES[label]
        cx, cy = cx + rng.uniform(-_JITTER, _JITTER), cy + rng.uniform(-_JITTER, _JITTER)
        rx, ry = rx * rng.uniform(0.9, 1.1), ry * rng.uniform(0.9, 1.1)
        r2 = _ellipse(xx, yy, cx, cy, rx, ry)
        inside = r2 < 1
        if kind == "disk":
            img += amp * np.sqrt(np.clip(1 - r2, 0, 1))
        elif kind == "band":
            img[inside] += amp
        elif kind == "haze":
            img += amp * np.exp(-2.5 * r2) * inside
        elif kind == "patchy":
            img[inside] += amp * (rng.random(int(inside.sum())) > 0.5)
        elif kind == "stripes":
            img[inside] += amp * (np.sin(2 * np.pi * xx[inside] * size / 4) > 0)
        else:  # "dark": air without lung markings
            img[inside] = 0.03
        where[label] = (cx, cy, rx, ry)
    img += rng.normal(0, 0.015, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), where


def _save_png(path: Path, image: np.ndarray, rgba: bool = False) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(image)
    (img.convert("RGBA") if rgba else img).save(path)


def synth(
    out_dir: str | Path, cases: int = 10, seed: int = 0, size: int = 128, split_folders: bool = True
) -> dict[str, int]:
    """Write a ChestX-ray14 layout: ``cases`` patients with 1-3 follow-ups each.

    Images are ``size`` x ``size`` (1024 in the published set; boxes are written in the
    1024 space either way), in ``images_001/images/`` and ``images_002/images/`` when
    ``split_folders`` else in ``images/``. About a third are "No Finding"; positives cycle
    through the 14 classes (plus a second finding now and then) so each class occurs, and
    every other positive with a box class gets its boxes in ``BBox_List_2017.csv``. The
    second image is RGBA, as a few published ones are. The last fifth of the patients
    form ``test_list.txt``. Returns counts written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names: list[tuple[int, int]] = []
    for patient in range(1, cases + 1):
        names += [(patient, f) for f in range(int(rng.integers(1, 4)))]
    n_test = max(1, cases // 5) if cases > 1 else 0
    entry_lines = [
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    ]
    box_lines = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
    train_val, test = [], []
    positives = annotated = n_boxes = 0
    for i, (patient, follow) in enumerate(names):
        name = f"{patient:08d}_{follow:03d}.png"
        if rng.random() < 0.35:
            labels: list[str] = []
        else:
            labels = [CLASSES[positives % len(CLASSES)]]
            if rng.random() < 0.25:
                labels.append(str(rng.choice([c for c in CLASSES if c != labels[0]])))
            positives += 1
        image, where = phantom(rng, size, labels)
        folder = f"images_{1 + (2 * i) // len(names):03d}/images" if split_folders else "images"
        _save_png(out / folder / name, image, rgba=i == 1)
        finding = "|".join(sorted(labels)) if labels else NO_FINDING
        width, height = int(rng.choice([2500, 2048, 2992])), int(rng.choice([2048, 2500, 2991]))
        spacing = float(rng.choice([0.143, 0.168, 0.139]))
        entry_lines.append(
            f"{name},{finding},{follow},{patient},{int(rng.integers(18, 90))},{rng.choice(['M', 'F'])},"
            f"{rng.choice(['PA', 'AP'])},{width},{height},{spacing},{spacing},"
        )
        boxed = [c for c in labels if c in BOX_CLASSES]
        if boxed and positives % 2 == 1:
            annotated += 1
            for label in boxed:
                cx, cy, rx, ry = where[label]
                x, y, w, h = (
                    (cx - rx) * BOX_SPACE,
                    (cy - ry) * BOX_SPACE,
                    2 * rx * BOX_SPACE,
                    2 * ry * BOX_SPACE,
                )
                written = next((k for k, v in BOX_LABEL_ALIASES.items() if v == label), label)
                box_lines.append(f"{name},{written},{x!r},{y!r},{w!r},{h!r}")
                n_boxes += 1
        (test if patient > cases - n_test else train_val).append(name)
    (out / DATA_ENTRY).write_text("\n".join(entry_lines) + "\n")
    (out / BBOX_LIST).write_text("\n".join(box_lines) + "\n")
    (out / "train_val_list.txt").write_text("".join(f"{n}\n" for n in train_val))
    (out / "test_list.txt").write_text("".join(f"{n}\n" for n in test))
    return {
        "patients": cases,
        "images": len(names),
        "annotated_images": annotated,
        "boxes": n_boxes,
    }
