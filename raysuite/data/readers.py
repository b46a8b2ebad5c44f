"""Image readers returning ``(array, meta)``.

``meta`` carries geometry, modality and encoding only, never a patient-identifying field:
a DICOM's patient and study identifiers leave the reader as salted keys
(:mod:`raysuite.data.privacy`), and the header strings it copies (modality, photometric
interpretation, transfer syntax) are kept only when they are DICOM defined terms
(:mod:`raysuite.data.dicom_codes`). Every failure is a :class:`ReadError` whose ``code``
names the reason class used by ingest error tables (``truncated``, ``no_pixel_data``,
``bad_header``, ``outside_root``...) and whose ``reason`` is a fixed sentence written here:
it quotes no exception text and no header value, which could carry a name or a path.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raysuite.data import dicom_codes, privacy


class ReadError(ValueError):
    """A file that cannot be read; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str, code: str = "unreadable"):
        self.path = str(path)
        self.reason = reason
        self.code = code
        super().__init__(f"{path}: {reason}")

    def __reduce__(self) -> tuple:  # keep the fields when Ray or a process pool ships it
        return (type(self), (self.path, self.reason, self.code))


@dataclass(frozen=True)
class ImageMeta:
    """Geometry and encoding of an image. ``spacing`` follows the array's axes for 2-D
    images (row, column) and NIfTI (x, y, z); MetaImage gives (x, y, z) with ``origin``
    and ``direction`` so world (mm) coordinates can be mapped to voxels."""

    spacing: tuple[float, ...]
    affine: np.ndarray | None = field(default=None, repr=False)
    modality: str = ""
    orientation: str = ""
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    photometric: str = ""
    transfer_syntax: str = ""
    bits: int = 0
    patient_key: str | None = None
    study_key: str | None = None

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) world coordinates in mm -> (N, 3) continuous voxel indices (x, y, z)."""
        if self.origin is None or self.direction is None:
            raise ValueError("image has no origin/direction")
        return world_to_voxel(np.atleast_2d(xyz), self.origin, self.spacing, self.direction)


def world_to_voxel(
    world_xyz: Sequence[float] | np.ndarray,
    origin: Sequence[float],
    spacing: Sequence[float],
    transform: Sequence[float] | None = None,
) -> np.ndarray:
    """World millimetres ``(3,)`` or ``(N, 3)`` (x, y, z) -> continuous voxel indices of the
    same shape, (x, y, z) = (column, row, slice) of a MetaImage's ``(Z, Y, X)`` array.

    ``origin`` is the MetaImage ``Offset``, ``spacing`` its ``ElementSpacing`` and
    ``transform`` its nine ``TransformMatrix`` numbers (identity when ``None``). As in ITK's
    MetaImageIO, row ``i`` of ``TransformMatrix`` is the world direction of voxel axis
    ``i``: ``world = origin + sum_i v_i * spacing_i * T[i]``. (All LUNA16 scans have the
    identity, for which this is ``(world - origin) / spacing``.)
    """
    world = np.asarray(world_xyz, float)
    t = np.eye(3) if transform is None else np.asarray(transform, float).reshape(3, 3)
    m = t.T * np.asarray(spacing, float)  # column i = spacing_i * direction of axis i
    voxel = np.linalg.solve(m, (np.atleast_2d(world) - np.asarray(origin, float)).T).T
    return voxel.reshape(world.shape)


def _exists(path: str | Path) -> None:
    if not Path(path).is_file():
        raise ReadError(path, "file not found", "missing_file")


def is_inside(root: str | Path, path: str | Path) -> bool:
    """Whether ``path`` (symbolic links resolved) lies in the folder ``root`` (resolved)."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def confined(root: str | Path, rel: str | Path) -> Path:
    """``root / rel`` after checking that it resolves inside ``root``; ReadError
    ``outside_root`` (naming ``rel``) when a symbolic link or ``..`` leads out."""
    path = Path(root) / rel
    if not is_inside(root, path):
        raise ReadError(rel, "resolves outside the dataset root (a symbolic link or ..)", "outside_root")
    return path


# ----------------------------------------------------------------------------- DICOM


def read_dicom(path: str | Path, voi: bool = True, frame: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Read a grayscale DICOM image as float32 ``(H, W)``.

    Applies the Modality LUT (rescale slope/intercept or LUT), then, when ``voi``, the VOI
    LUT or window; MONOCHROME1 is inverted so that higher is brighter. Compressed transfer
    syntaxes decode through pydicom's pylibjpeg/pyjpegls plugins. Multi-frame images need
    ``frame``. A header value that is not what its element holds (text in PixelSpacing,
    a bad RescaleSlope) fails ``bad_header``.
    """
    import pydicom
    from pydicom.config import IGNORE, settings
    from pydicom.errors import InvalidDicomError

    _exists(path)
    settings.reading_validation_mode = IGNORE  # validation warnings would echo element values
    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError:
        raise ReadError(path, "not a DICOM file (no DICM preamble)", "not_dicom") from None
    except (EOFError, OSError) as err:
        raise ReadError(path, f"truncated or unreadable header ({type(err).__name__})", "truncated") from None
    except Exception as err:  # pydicom raises many types for scrambled headers
        raise ReadError(path, f"unreadable header ({type(err).__name__})", "not_dicom") from None
    if "PixelData" not in ds:
        # pydicom drops encapsulated pixel data that the end of the file cuts off
        if b"\xe0\x7f\x10\x00" in Path(path).read_bytes():  # the (7FE0,0010) tag, little endian
            raise ReadError(path, "file ends inside the pixel data", "truncated")
        raise ReadError(path, "no pixel data", "no_pixel_data")
    try:
        return _dicom_image(ds, path, voi, frame)
    except ReadError:
        raise
    except Exception as err:  # a header value of the wrong kind (text in PixelSpacing...)
        raise ReadError(path, f"unreadable header value ({type(err).__name__})", "bad_header") from None


def _dicom_image(ds: Any, path: str | Path, voi: bool, frame: int | None) -> tuple[np.ndarray, ImageMeta]:
    """The image and meta of a read dataset; any exception other than ReadError is a
    header value of the wrong kind (the caller's ``bad_header``)."""
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    ts_name = dicom_codes.transfer_syntax_name(ts) if ts else "implicit VR little endian"
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ReadError(path, f"{int(ds.SamplesPerPixel)} samples per pixel; grayscale expected", "unsupported_image")
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError, ImportError) as err:
        syntax = ts_name or "an unnamed transfer syntax"
        raise ReadError(path, f"cannot decode {syntax} ({type(err).__name__})", "undecodable_transfer_syntax") from None
    except Exception as err:
        raise ReadError(path, f"pixel data truncated or corrupt ({type(err).__name__})", "truncated") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        if frame is None:
            raise ReadError(path, f"{frames} frames: pass a frame index", "unsupported_image")
        if not 0 <= frame < len(pixels):
            raise ReadError(path, f"frame {frame} outside 0..{len(pixels) - 1}", "slice_out_of_range")
        pixels = pixels[frame]
    if pixels.ndim != 2:
        raise ReadError(path, f"pixel array of shape {pixels.shape}; 2-D expected", "unsupported_image")
    arr = apply_modality_lut(pixels, ds)
    if voi:
        arr = apply_voi_lut(arr, ds)
    arr = np.asarray(arr, np.float32)
    photometric = dicom_codes.code_string(ds.get("PhotometricInterpretation", "MONOCHROME2"), dicom_codes.PHOTOMETRIC)
    if photometric == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or (1.0, 1.0)
    patient_id = str(ds.get("PatientID", "") or "").strip()
    study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    meta = ImageMeta(
        spacing=tuple(float(s) for s in spacing),
        modality=dicom_codes.modality(ds.get("Modality", "")),
        photometric=photometric,
        transfer_syntax=ts_name,
        bits=int(ds.get("BitsStored", 0) or 0),
        patient_key=privacy.salted_key(patient_id) if patient_id else None,
        study_key=privacy.salted_key(study_uid, "s") if study_uid else None,
    )
    return arr, meta


# ------------------------------------------------------------------------- PNG / JPEG


def read_png(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read an 8- or 16-bit grayscale PNG/JPEG as float32 ``(H, W)`` in stored units.

    RGB(A) images (a few ChestX-ray14 and MURA files) are converted to luminance.
    """
    from PIL import Image, UnidentifiedImageError

    _exists(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("RGB", "RGBA", "P", "LA"):
                img = img.convert("L")
            arr = np.asarray(img)
    except UnidentifiedImageError:
        raise ReadError(path, "not a PNG/JPEG image", "unreadable") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ReadError(path, f"truncated or corrupt image ({type(err).__name__})", "truncated") from None
    if arr.ndim != 2:
        raise ReadError(path, f"image of shape {arr.shape}; grayscale expected", "unsupported_image")
    bits = 16 if arr.dtype.itemsize >= 2 or mode.startswith("I") else 8
    return arr.astype(np.float32), ImageMeta(spacing=(1.0, 1.0), modality="", bits=bits)


# -------------------------------------------------------------------------- MetaImage

_MET_TYPES = {
    "MET_UCHAR": np.uint8, "MET_CHAR": np.int8, "MET_USHORT": np.uint16, "MET_SHORT": np.int16,
    "MET_UINT": np.uint32, "MET_INT": np.int32, "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64,
}  # fmt: skip


def read_mhd_header(path: str | Path) -> dict[str, str]:
    _exists(path)
    header: dict[str, str] = {}
    try:
        for line in Path(path).read_text(errors="strict").splitlines():
            if "=" in line:
                key, value = line.split("=", 1)
                header[key.strip()] = value.strip()
    except (UnicodeDecodeError, OSError) as err:
        raise ReadError(path, f"unreadable MetaImage header ({type(err).__name__})", "unreadable") from None
    for key in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if key not in header:
            raise ReadError(path, f"MetaImage header lacks {key}", "unreadable")
    return header


def read_mhd(path: str | Path, root: str | Path | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Read a MetaImage ``.mhd`` (+ ``.raw`` or ``.zraw``) as float32 ``(Z, Y, X)``.

    ``meta`` gives origin, spacing (x, y, z) and the 3x3 direction (``TransformMatrix``,
    row-major) so :meth:`ImageMeta.world_to_voxel` maps LUNA16 world coordinates. The
    ``ElementDataFile`` must resolve inside ``root`` (default: the header's own folder),
    else ReadError ``outside_root``: a header is a file anyone can write.
    """
    header = read_mhd_header(path)
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        ndim = int(header["NDims"])
    except ValueError:
        raise ReadError(path, "DimSize or NDims is not a list of integers", "bad_header") from None
    dtype = _MET_TYPES.get(header["ElementType"])
    if dtype is None or len(dims) != ndim:
        raise ReadError(path, "unsupported ElementType, or DimSize does not have NDims sizes", "unsupported_image")
    msb = header.get("ElementByteOrderMSB", header.get("BinaryDataByteOrderMSB", "False")).lower() == "true"
    dt = np.dtype(dtype).newbyteorder(">" if msb else "<")
    data_file = header["ElementDataFile"]
    if data_file == "LOCAL":
        raise ReadError(path, "inline (LOCAL) MetaImage data is not supported", "unsupported_image")
    raw_path = Path(path).parent / data_file
    if not is_inside(Path(path).parent if root is None else root, raw_path):
        raise ReadError(path, "ElementDataFile resolves outside the dataset root", "outside_root")
    _exists(raw_path)
    blob = raw_path.read_bytes()
    if header.get("CompressedData", "False").lower() == "true":
        try:
            blob = zlib.decompress(blob)
        except zlib.error:
            raise ReadError(raw_path, "corrupt compressed data (zlib)", "truncated") from None
    expected = int(np.prod(dims)) * dt.itemsize
    if len(blob) != expected:
        raise ReadError(raw_path, f"{len(blob)} bytes of voxel data, header needs {expected}", "truncated")
    arr = np.frombuffer(blob, dt).reshape(dims[::-1]).astype(np.float32)
    if not np.isfinite(arr).all():
        raise ReadError(path, "contains NaN or Inf voxels", "nan_volume")
    try:
        spacing = tuple(float(v) for v in header.get("ElementSpacing", " ".join(["1"] * ndim)).split())
        origin = tuple(float(v) for v in header.get("Offset", header.get("Origin", " ".join(["0"] * ndim))).split())
        direction = tuple(float(v) for v in header.get("TransformMatrix", " ".join(str(float(v)) for v in np.eye(ndim).ravel())).split())
    except ValueError:
        raise ReadError(path, "ElementSpacing, Offset or TransformMatrix is not numeric", "bad_header") from None
    return arr, ImageMeta(spacing=spacing, origin=origin, direction=direction, modality=mhd_modality(header, "CT"))


def mhd_modality(header: dict[str, str], default: str = "") -> str:
    """The header's ``Modality`` (``MET_MOD_CT`` -> ``CT``) when it is a DICOM modality
    code, ``default`` when the header has none, else ``""``."""
    if "Modality" not in header:
        return default
    return dicom_codes.modality(header["Modality"].removeprefix("MET_MOD_"))


# ------------------------------------------------------------------------------ NIfTI


def read_nifti(path: str | Path, volume: int | None = None, dtype: type = np.float32) -> tuple[np.ndarray, ImageMeta]:
    """Read a NIfTI file reoriented to RAS. Returns (X, Y, Z) array and its meta.

    NaN or Inf voxels are refused; 4-D images need ``volume`` (the index along axis 4).
    """
    import nibabel as nib

    _exists(path)
    try:
        img = nib.load(str(path))
        img = nib.as_closest_canonical(img)
    except Exception as err:  # nibabel raises many types for broken files
        raise ReadError(path, f"not a readable NIfTI file ({type(err).__name__})", "unreadable") from None
    shape = img.shape
    if len(shape) == 4:
        if volume is None:
            raise ReadError(path, f"4-D image {shape}: pass a volume index", "needs_volume_index")
        if not 0 <= volume < shape[3]:
            raise ReadError(path, f"volume index {volume} outside 0..{shape[3] - 1}", "needs_volume_index")
        img = img.slicer[..., volume]
    elif len(shape) not in (2, 3):
        raise ReadError(path, f"unsupported NIfTI shape {shape}", "unsupported_image")
    try:
        data = np.asarray(img.dataobj, dtype=dtype)
    except Exception as err:
        raise ReadError(path, f"cannot decode voxel data ({type(err).__name__})", "truncated") from None
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise ReadError(path, "contains NaN or Inf voxels", "nan_volume")
    zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
    return data, ImageMeta(spacing=zooms, affine=img.affine.copy(), modality="CT", orientation="RAS")
