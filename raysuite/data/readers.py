"""Image readers returning ``(array, meta)``; meta holds geometry and modality only, never a
patient-identifying field. (DICOM, PNG and MHD readers arrive with the data layer, issue 3.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class ReadError(ValueError):
    """A file that cannot be read; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self) -> tuple:  # keep (path, reason) when Ray ships the error across processes
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class ImageMeta:
    spacing: tuple[float, ...]
    affine: np.ndarray = field(repr=False)
    modality: str = "CT"
    orientation: str = "RAS"


def read_nifti(path: str | Path, volume: int | None = None, dtype: type = np.float32) -> tuple[np.ndarray, ImageMeta]:
    """Read a NIfTI file reoriented to RAS. Returns (X, Y, Z) array and its meta.

    NaN or Inf voxels are refused; 4-D images need ``volume`` (the index along axis 4).
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        img = nib.as_closest_canonical(img)
    except Exception as err:  # nibabel raises many types for broken files
        raise ReadError(path, f"not a readable NIfTI file ({err})") from None
    shape = img.shape
    if len(shape) == 4:
        if volume is None:
            raise ReadError(path, f"4-D image {shape}: pass a volume index")
        if not 0 <= volume < shape[3]:
            raise ReadError(path, f"volume index {volume} outside 0..{shape[3] - 1}")
        img = img.slicer[..., volume]
    elif len(shape) not in (2, 3):
        raise ReadError(path, f"unsupported NIfTI shape {shape}")
    try:
        data = np.asarray(img.dataobj, dtype=dtype)
    except Exception as err:
        raise ReadError(path, f"cannot decode voxel data ({err})") from None
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise ReadError(path, "contains NaN or Inf voxels")
    zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
    return data, ImageMeta(spacing=zooms, affine=img.affine.copy())
