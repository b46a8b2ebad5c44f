"""One axial slice of any manifest row: float32 ``(H, W)`` in the source's native units.

Every image file is seen as a stack of axial slices ``(D, H, W)`` whose shape is the
manifest's ``(depth, height, width)`` (all formats write them so):

==========  =====================================  ===========================================
kind        reader (axes)                          slice ``k``
==========  =====================================  ===========================================
NIfTI       :func:`read_nifti`, (X, Y, Z) RAS      ``np.flipud(vol[:, :, k].T)``: rows = Y with
                                                   anterior up, columns = X; a 2-D image is
                                                   one slice
MetaImage   :func:`read_mhd`, (Z, Y, X)            ``vol[k]``, as stored
DICOM       :func:`read_dicom`, (H, W) per frame   frame ``k`` (a single-frame file: ``k = 0``;
                                                   a one-file-per-slice series is one manifest
                                                   row per file)
PNG / JPEG  :func:`read_png`, (H, W)               the image (``k = 0``); RGB already
                                                   converted to luminance by the reader
==========  =====================================  ===========================================

The kind follows the file name of ``row["path"]``: ``.nii``/``.nii.gz``, ``.mhd``,
``.png``/``.jpg``/``.jpeg``; anything else (``.dcm``, ``.dicom``, no extension, UID-named
files) is read as DICOM. NIfTI columns run from the patient's left to right in RAS (x
grows to the right), so a NIfTI slice is the mirror image of a radiological DICOM display;
a 2-D pretraining pool does not care, a method comparing both should flip.

Units (nothing is windowed, clipped or normalised here):

- DICOM: the Modality LUT is applied (RescaleSlope/Intercept, so CT is in HU) and the VOI
  LUT/window is *not* (``read_dicom(voi=False)``). A MONOCHROME1 image (some CR/DX
  radiographs) comes back inverted by :func:`read_dicom` as ``max + min - x`` of that
  frame, so higher is brighter (denser) but the numbers are not the stored ones;
  radiographs without their VOI window are raw detector values, to be normalised per image.
  Enhanced multi-frame objects that keep the rescale per frame (functional groups) are
  not rescaled, as in :func:`read_dicom`.
- NIfTI: float32 after the header's ``scl_slope``/``scl_inter`` (nibabel applies them):
  HU for CT exports, arbitrary units for MR; NaN or Inf voxels are refused.
- MetaImage: stored values as float32 (HU for LUNA16).
- PNG: stored pixel values (0-255, or 0-65535 for 16-bit).

:class:`SliceReader` keeps the last decoded volume, so a caller walking the slices of one
file decodes it once: sort requests by path.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

from raysuite.data.readers import (
    ImageMeta,
    ReadError,
    confined,
    read_dicom,
    read_mhd,
    read_nifti,
    read_png,
)


def file_kind(path: str | Path) -> str:
    """``"nifti"``, ``"mhd"``, ``"png"`` (also JPEG) or ``"dicom"`` (any other name)."""
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".mhd"):
        return "mhd"
    if name.endswith((".png", ".jpg", ".jpeg")):
        return "png"
    return "dicom"


def read_volume(path: str | Path, root: str | Path | None = None) -> tuple[np.ndarray, ImageMeta]:
    """The file as a float32 ``(D, H, W)`` stack of axial slices (see the module docstring)
    and its reader's meta (a NIfTI stack is a strided view of the reader's array). ReadError
    (with the readers' reason codes) when unreadable; a MetaImage's data file must lie
    inside ``root`` (default: the header's folder), else ``outside_root``."""
    kind = file_kind(path)
    if kind == "nifti":
        return _nifti(path)
    if kind == "mhd":
        return _mhd(path, root)
    if kind == "png":
        image, meta = read_png(path)
        return image[None], meta
    return _dicom(path)


def read_slice(root: Path, row: Mapping[str, Any], index: int) -> np.ndarray:
    """Slice ``index`` of the file ``root / row["path"]``: float32 ``(H, W)``.

    Decodes the whole file each call; use a :class:`SliceReader` to read several slices.
    ReadError naming the file when ``index`` is outside ``0..depth-1``, the file's shape
    differs from the row's ``depth``/``height``/``width``, or the file (or a MetaImage's
    data file) resolves outside ``root`` (``outside_root``).
    """
    path = confined(root, str(row["path"]))
    return _take(read_volume(path, root)[0], path, row, index)


class SliceReader:
    """:func:`read_slice` with a one-volume memo: the last decoded file (keyed by its
    absolute path) is kept, so consecutive slices of one volume decode it once.

    Callers should sort their requests by path (then slice): interleaving two volumes
    decodes each again at every switch. Picklable: a copy (a DataLoader or Ray worker)
    starts with an empty memo. Not thread-safe; use one per worker. Returned slices are
    copies, safe to modify.
    """

    def __init__(self) -> None:
        self._key: str | None = None
        self._stack: np.ndarray | None = None

    def __call__(self, root: Path, row: Mapping[str, Any], index: int) -> np.ndarray:
        path = confined(root, str(row["path"]))
        key = str(path.absolute())
        if key != self._key or self._stack is None:
            self.clear()  # free the previous volume before decoding the next
            self._stack = read_volume(path, root)[0]
            self._key = key
        return _take(self._stack, path, row, index)

    def clear(self) -> None:
        """Drop the memo (the decoded volume)."""
        self._key, self._stack = None, None

    def __getstate__(self) -> dict[str, Any]:
        return {"_key": None, "_stack": None}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self._key, self._stack = None, None


# --------------------------------------------------------------------------- helpers


def _expected_shape(row: Mapping[str, Any]) -> tuple[int, int, int] | None:
    values: list[Any] = [row.get(k) for k in ("depth", "height", "width")]
    if any(v is None or v != v for v in values):  # v != v: NaN
        return None
    return int(values[0]), int(values[1]), int(values[2])


def _take(stack: np.ndarray, path: Path, row: Mapping[str, Any], index: int) -> np.ndarray:
    expected = _expected_shape(row)
    if expected is not None and tuple(stack.shape) != expected:
        raise ReadError(
            path,
            f"file is {tuple(stack.shape)} (depth, height, width), the manifest says {expected}",
            "shape_mismatch",
        )
    k = operator.index(index)
    if not 0 <= k < stack.shape[0]:
        raise ReadError(
            path, f"slice index {k} outside 0..{stack.shape[0] - 1}", "slice_out_of_range"
        )
    return np.array(stack[k], dtype=np.float32)


def _nifti(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    vol, meta = read_nifti(path, volume=_single_volume(path))
    if vol.ndim == 2:
        vol = vol[:, :, None]
    # (X, Y, Z) -> (Z, Y, X) with Y reversed: stack[k] == np.flipud(vol[:, :, k].T)
    return np.flip(vol.transpose(2, 1, 0), axis=1), meta


def _single_volume(path: str | Path) -> int | None:
    """0 for a 4-D NIfTI holding one volume ``(X, Y, Z, 1)``, else None (read_nifti refuses
    a true 4-D series with ``needs_volume_index``)."""
    import nibabel as nib
    from nibabel.dataobj_images import DataobjImage

    try:  # a NIfTI loads as a DataobjImage (typed as its base, FileBasedImage, which has no shape)
        shape = cast(DataobjImage, nib.load(str(path))).shape
    except Exception:  # read_nifti reports the file
        return None
    return 0 if len(shape) == 4 and shape[3] == 1 else None


def _mhd(path: str | Path, root: str | Path | None) -> tuple[np.ndarray, ImageMeta]:
    vol, meta = read_mhd(path, root)
    if vol.ndim == 2:
        return vol[None], meta
    if vol.ndim != 3:
        raise ReadError(path, f"{vol.ndim}-D MetaImage; 2-D or 3-D expected", "unsupported_image")
    return vol, meta


def _dicom(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    # read_dicom first, for its checks, reason codes and fixed messages; a multi-frame
    # file is then decoded a second time for all its frames (read_dicom returns one)
    first, meta = read_dicom(path, voi=False, frame=0)
    frames = dicom_frames(path)
    if frames <= 1:
        return first[None], meta
    return _dicom_frames(path, frames), meta


def dicom_frames(path: str | Path) -> int:
    """NumberOfFrames of a DICOM file (1 when absent), from its header."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["NumberOfFrames"])
        return int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as err:  # no message: pydicom's could echo element values
        raise ReadError(path, f"unreadable header ({type(err).__name__})", "not_dicom") from None


def _dicom_frames(path: str | Path, frames: int) -> np.ndarray:
    """Every frame of a multi-frame DICOM, decoded once, as :func:`read_dicom` treats one
    (Modality LUT, no VOI, MONOCHROME1 inverted per frame)."""
    import pydicom
    from pydicom.pixels.processing import apply_modality_lut

    ds = pydicom.dcmread(str(path))
    try:
        stack = np.asarray(apply_modality_lut(ds.pixel_array, ds), np.float32)
    except Exception as err:
        raise ReadError(path, f"cannot decode the frames ({type(err).__name__})", "truncated") from None
    if stack.shape[0] != frames or stack.ndim != 3:
        raise ReadError(
            path, f"pixel array of shape {stack.shape} for {frames} frames", "unsupported_image"
        )
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        lo = stack.min(axis=(1, 2), keepdims=True)
        hi = stack.max(axis=(1, 2), keepdims=True)
        stack = hi + lo - stack
    return stack
