"""Synthetic FLARE 2022: phantom abdominal CTs with 13 organ labels as NIfTI in the published
layout (:mod:`raysuite.data.formats.flare22` describes the layout and ingests it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

# Organ phantoms: centre (fraction of the body box, RAS: x right->left of patient is
# increasing x toward patient's left), semi-axes in mm, mean HU. Positions are plausible
# for an axial abdominal CT; values follow contrast-enhanced portal-venous HU ranges.
_PHANTOM = {
    1: ((0.30, 0.45, 0.55), (55, 60, 60), 110),  # liver (patient's right)
    2: ((0.33, 0.72, 0.40), (22, 25, 45), 180),  # right kidney
    3: ((0.75, 0.62, 0.62), (25, 30, 40), 120),  # spleen
    4: ((0.55, 0.50, 0.45), (35, 10, 15), 90),  # pancreas
    5: ((0.52, 0.66, 0.50), (10, 10, 90), 220),  # aorta
    6: ((0.43, 0.63, 0.50), (11, 11, 90), 160),  # inferior vena cava
    7: ((0.40, 0.68, 0.70), (7, 7, 12), 40),  # right adrenal
    8: ((0.62, 0.68, 0.70), (7, 7, 12), 40),  # left adrenal
    9: ((0.35, 0.35, 0.40), (14, 14, 20), 10),  # gallbladder
    10: ((0.52, 0.60, 0.90), (7, 7, 30), 50),  # esophagus
    11: ((0.65, 0.38, 0.65), (35, 25, 30), 25),  # stomach
    12: ((0.45, 0.42, 0.35), (25, 10, 15), 70),  # duodenum
    13: ((0.68, 0.72, 0.40), (22, 25, 45), 180),  # left kidney
}


def synth_case(
    rng: np.random.Generator, size: int = 112, slices: int = 24
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One phantom CT (X, Y, Z) int16 HU and its (X, Y, Z) uint8 labels, plus voxel spacing.

    The body is a soft-tissue ellipse in air with a fat rim and a spine; organs are smooth
    noisy blobs whose position, size and HU jitter per case, so a segmenter must learn
    both position and intensity.
    """
    spacing = (float(rng.uniform(1.2, 1.6)), float(rng.uniform(1.2, 1.6)), float(rng.uniform(2.5, 5.0)))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (size, size, slices)], indexing="ij"), -1).astype(np.float32)
    mm = grid * np.asarray(spacing, np.float32)
    extent = np.asarray([size, size, slices], np.float32) * np.asarray(spacing, np.float32)
    centre = extent / 2
    body_axes = np.asarray([extent[0] * rng.uniform(0.40, 0.46), extent[1] * rng.uniform(0.32, 0.40)])
    r_body = (((mm[..., :2] - centre[:2]) / body_axes) ** 2).sum(-1)
    hu = np.full(grid.shape[:3], -1000.0, np.float32)
    hu[r_body < 1.0] = -100.0  # subcutaneous fat
    hu[r_body < 0.8] = 40.0  # muscle and soft tissue
    spine = (((mm[..., :2] - centre[:2] - [0, body_axes[1] * 0.6]) / [14, 14]) ** 2).sum(-1) < 1
    hu[spine] = 700.0
    label = np.zeros(grid.shape[:3], np.uint8)
    body_lo = centre - np.r_[body_axes, centre[2]]
    body_span = np.r_[2 * body_axes, extent[2]]
    for organ, (frac, axes, mean_hu) in _PHANTOM.items():
        c = body_lo + (np.asarray(frac) + rng.normal(0, 0.03, 3)) * body_span
        # Published organ sizes are for a ~350 mm wide abdomen; scale them to this body.
        scale = 2 * body_axes[0] / 350
        a = np.asarray(axes, np.float32) * rng.uniform(0.8, 1.2, 3) * [scale, scale, extent[2] / 120]
        wobble = ndimage.gaussian_filter(rng.normal(0, 1, grid.shape[:3]), 3) * 4
        inside = (((mm - c) / a) ** 2).sum(-1) + wobble * 0.15 < 1.0
        inside &= r_body < 0.8
        label[inside] = organ
        hu[inside] = mean_hu + rng.normal(0, 8)
    hu += ndimage.gaussian_filter(rng.normal(0, 25, hu.shape), 0.7)
    hu[r_body >= 1.0] = -1000.0 + rng.normal(0, 5, int((r_body >= 1.0).sum()))
    return np.clip(hu, -1024, 3071).astype(np.int16), label, spacing


def _write_nifti(path: Path, data: np.ndarray, spacing: Sequence[float]) -> None:
    import nibabel as nib

    # LPS-like affine (as most CT exports) so that ingest's RAS reorientation is exercised.
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(tuple(spacing))
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def synth(out_dir: str | Path, cases: int = 10, seed: int = 0, size: int = 112, slices: int = 24) -> dict[str, int]:
    """Write a FLARE22-layout dataset: ``cases`` labelled cases and as many unlabelled ones.

    Reversed x/y axes in the affine mimic LPS exports. Returns counts written.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    n_labelled = cases
    n_unlabelled = cases
    for i in range(1, n_labelled + 1):
        hu, label, spacing = synth_case(rng, size, slices)
        stored = hu[::-1, ::-1]  # stored LPS: flip x and y to match the affine
        _write_nifti(out / "FLARE22_LabeledCase50" / "images" / f"FLARE22_Tr_{i:04d}_0000.nii.gz", stored, spacing)
        _write_nifti(out / "FLARE22_LabeledCase50" / "labels" / f"FLARE22_Tr_{i:04d}.nii.gz", label[::-1, ::-1].copy(), spacing)
    block = f"FLARE22_UnlabeledCase1-{max(1000, math.ceil(n_unlabelled / 1000) * 1000)}"
    for i in range(1, n_unlabelled + 1):
        hu, _, spacing = synth_case(rng, size, slices)
        _write_nifti(out / block / f"Case_{i:05d}_0000.nii.gz", hu[::-1, ::-1].copy(), spacing)
    return {"labelled": n_labelled, "unlabelled": n_unlabelled}
