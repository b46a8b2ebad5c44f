"""Synthetic VinDr-CXR: learnable chest phantoms in the published Kaggle or PhysioNet layout
(:mod:`raysuite.data.formats.vindr_cxr` describes the layout and ingests it)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysuite.data.formats.vindr_cxr import (
    CLASSES,
    COORDS,
    KAGGLE_COLUMNS,
    NO_FINDING,
    NO_FINDING_ID,
    PHYSIONET_COLUMNS,
    TEST_COLUMNS,
)


def _lesion(cid: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A bright (H, W) lesion in [0.72, 1) whose class shows in its texture: stripes at one
    of 7 orientations and 2 spatial frequencies (14 classes), so a detector can learn the
    class as well as the place."""
    theta = np.pi * (cid % 7) / 7
    period = 4.0 if cid < 7 else 8.0
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    return 0.84 + 0.1 * stripes + rng.normal(0, 0.01, (h, w))


def _chest(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A frontal chest phantom (H, W) in [0, 1], bright = dense: air, soft tissue, two dark
    lungs with faint ribs, spine and heart."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    y, x = (yy + 0.5) / h, (xx + 0.5) / w
    jit = rng.normal(0, 0.015, 6)

    def ellipse(cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 < 1

    img = np.full((h, w), 0.04)
    img[ellipse(0.5 + jit[0], 0.55, 0.47, 0.55)] = 0.42
    ribs = 0.05 * (np.sin(y * 2 * np.pi * 9 + 3 * np.abs(x - 0.5)) > 0.6)
    for side, cx in ((0, 0.3), (1, 0.7)):
        lung = ellipse(cx + jit[1 + side], 0.47 + jit[3], 0.16, 0.3)
        img[lung] = 0.16 + ribs[lung]
    img[(np.abs(x - 0.5 - jit[4]) < 0.035) & (y > 0.15)] = 0.6
    img[ellipse(0.53 + jit[5], 0.63, 0.12, 0.14)] = 0.55
    img += ndimage.gaussian_filter(rng.normal(0, 0.03, (h, w)), 1.0)
    return ndimage.gaussian_filter(img, 0.8)


def _place(
    rng: np.random.Generator, h: int, w: int, placed: list[tuple[int, ...]], gap: int = 12
) -> tuple[int, ...] | None:
    for _ in range(50):
        bw, bh = int(rng.uniform(0.10, 0.25) * w), int(rng.uniform(0.10, 0.25) * h)
        x0, y0 = (
            int(rng.integers(int(0.08 * w), int(0.92 * w) - bw)),
            int(rng.integers(int(0.12 * h), int(0.9 * h) - bh)),
        )
        box = (x0, y0, x0 + bw, y0 + bh)
        if all(
            box[0] >= p[2] + gap
            or p[0] >= box[2] + gap
            or box[1] >= p[3] + gap
            or p[1] >= box[3] + gap
            for p in placed
        ):
            return box
    return None


def _window(stored: np.ndarray) -> tuple[float, float]:
    """A VOI window (centre, width) 20 % wider than the stored range (nothing clipped)."""
    lo, hi = int(stored.min()), int(stored.max())
    return (lo + hi) / 2, 1.2 * (hi - lo + 1)


def synth(
    out_dir: str | Path,
    cases: int = 10,
    seed: int = 0,
    size: tuple[int, int] = (192, 320),
    layout: str = "kaggle",
    test_cases: int = 0,
) -> dict[str, int]:
    """Write a VinDr-CXR root (``layout`` "kaggle" or "physionet") with ``cases`` training
    images of random height and width in ``size`` (real ones are ~2000-3000 px: pass e.g.
    ``(2000, 3000)``) and ``test_cases`` test images.

    About 60 % of images are abnormal with 1-3 non-overlapping findings, each drawn as a
    bright rectangle whose striped texture (orientation and period by class) and placement
    are the truth;
    each of three radiologists (from R1..R17) marks each finding with probability 0.8 (at
    least one does) with its edges jittered by <= 6 % of the box size, and a radiologist who
    marks nothing writes "No finding". Rows are shuffled, as the published CSV is unsorted.
    Encodings rotate: MONOCHROME1 every third image, RLE / JPEG-LS lossless transfer
    syntaxes, 12/14/16 bits stored, some with a VOI window. Patients (made-up identity in
    the headers, never to be ingested) own one to three images. Kaggle test images are
    unlabelled (with ``sample_submission.csv``); PhysioNet's come with a consensus
    ``annotations_test.csv``. Deterministic in ``seed`` (apart from DICOM UIDs).
    """
    from pydicom.uid import JPEGLSLossless, RLELossless

    from raysuite.data.synth.dicom_writer import Identity, write_dicom

    if layout not in ("kaggle", "physionet"):
        raise ValueError(f"layout must be 'kaggle' or 'physionet', got {layout!r}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    test_rows: list[dict[str, Any]] = []
    counts = Counter()
    patient, left = 0, 0
    identity = None
    for i in range(cases + test_cases):
        split = "train" if i < cases else "test"
        if left == 0:
            patient += 1
            left = int(rng.choice([1, 1, 2, 3]))
            identity = Identity(
                patient_id=f"VNSYN{seed:02d}{patient:05d}",
                patient_name=f"NGUYEN^SYNTHVAN{seed:02d}{patient:04d}",
                birth_date=f"19{40 + patient % 50:02d}0{1 + patient % 9}1{patient % 10}",
                accession=f"ACCVDR{seed:02d}{patient:06d}",
                institution=f"Synthetic Hospital {108 + patient} Hanoi",
                referring=f"SYNTH^REFERRER{patient:04d}",
            )
            counts["patients"] += 1
        left -= 1
        image_id = rng.bytes(16).hex()
        h, w = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
        img = _chest(rng, h, w)
        abnormal_image = rng.random() < 0.6 or (i == 1 and counts["abnormal"] == 0)
        if i == 0:
            abnormal_image = False  # at least one normal image
        findings: list[tuple[int, tuple[int, ...]]] = []
        if abnormal_image:
            for _ in range(int(rng.integers(1, 4))):
                box = _place(rng, h, w, [b for _, b in findings])
                if box is not None:
                    cid = int(rng.integers(0, len(CLASSES)))
                    findings.append((cid, box))
                    img[box[1] : box[3], box[0] : box[2]] = _lesion(
                        cid, box[3] - box[1], box[2] - box[0], rng
                    )
        counts["abnormal" if findings else "normal"] += split == "train"
        rads = [f"R{r}" for r in rng.choice(np.arange(1, 18), 3, replace=False)]
        marks: dict[str, list[tuple[int, tuple[float, ...]]]] = {r: [] for r in rads}
        for cid, box in findings:
            who = rng.random(3) < 0.8
            who[int(rng.integers(3))] = True
            bw, bh = box[2] - box[0], box[3] - box[1]
            for r, yes in zip(rads, who, strict=True):
                if yes:
                    d = np.clip(rng.normal(0, 0.03, 4), -0.06, 0.06) * [bw, bh, bw, bh]
                    x0, y0, x1, y1 = (float(round(v)) for v in np.asarray(box) + d)
                    marks[r].append(
                        (cid, (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)))
                    )
        if split == "train":
            for r in rads:
                for cid, b in marks[r]:
                    rows.append({"image_id": image_id, "class_name": CLASSES[cid], "class_id": cid, "rad_id": r,
                                 **dict(zip(COORDS, b, strict=True))})  # fmt: skip
                if not marks[r]:
                    rows.append(
                        {
                            "image_id": image_id,
                            "class_name": NO_FINDING,
                            "class_id": NO_FINDING_ID,
                            "rad_id": r,
                        }
                    )
            counts["boxes"] += sum(len(m) for m in marks.values())
        else:
            for cid, box in findings:
                test_rows.append({"image_id": image_id, "class_name": CLASSES[cid],
                                  **dict(zip(COORDS, map(float, box), strict=True))})  # fmt: skip
            if not findings:
                test_rows.append({"image_id": image_id, "class_name": NO_FINDING})
        bits = (12, 14, 16)[i % 3]
        photometric = "MONOCHROME1" if i % 3 == 1 else "MONOCHROME2"
        lo, span = 2 ** (bits - 4), 0.8 * 2**bits
        stored = np.clip(np.round(lo + np.clip(img, 0, 1) * span), 0, 2**bits - 1).astype(np.uint16)
        if photometric == "MONOCHROME1":
            stored = (2**bits - 1 - stored).astype(np.uint16)
        assert identity is not None  # set for the first case (left == 0)
        write_dicom(
            out / split / f"{image_id}.dicom",
            stored,
            identity,
            study_uid=None,
            modality="DX",
            spacing=(round(350 / max(h, w), 4), round(350 / max(h, w), 4)),
            photometric=photometric,
            bits_stored=bits,
            window=_window(stored) if i % 2 == 0 else None,
            transfer_syntax=(None, RLELossless, JPEGLSLossless, None)[i % 4],
        )
        counts["test_images" if split == "test" else "images"] += 1
    order = rng.permutation(len(rows))
    frame = pd.DataFrame([rows[k] for k in order], columns=list(KAGGLE_COLUMNS))
    frame["class_id"] = frame["class_id"].astype(int)
    if layout == "kaggle":
        frame.to_csv(out / "train.csv", index=False)
        if test_cases:
            ids = sorted(p.stem for p in (out / "test").glob("*.dicom"))
            pd.DataFrame({"image_id": ids, "PredictionString": "14 1 0 0 1 1"}).to_csv(
                out / "sample_submission.csv", index=False
            )
    else:
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        frame[list(PHYSIONET_COLUMNS)].to_csv(
            out / "annotations" / "annotations_train.csv", index=False
        )
        if test_cases:
            pd.DataFrame(test_rows, columns=list(TEST_COLUMNS)).to_csv(
                out / "annotations" / "annotations_test.csv", index=False
            )
    (out / "train").mkdir(parents=True, exist_ok=True)
    counts["rows"] = len(rows)
    return {
        k: int(counts[k])
        for k in ("images", "abnormal", "normal", "patients", "rows", "boxes", "test_images")
    }
