"""Readers on files written here: LUTs, photometric inversion, encodings, broken files."""

import io

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from raysuite.data.readers import ReadError, read_dicom, read_mhd, read_nifti, read_png
from raysuite.data.synth.dicom_writer import Identity, write_dicom

IDENTITY = Identity("PID-4471", "QUILL^AGATHA", "19451102", "ACC-99812", "St Elsewhere Clinic", "HOUSE^GREGORY")
PIXELS = np.random.default_rng(0).integers(0, 4096, (48, 40)).astype(np.uint16)


def _dicom(path, **kwargs):
    write_dicom(path, kwargs.pop("pixels", PIXELS), IDENTITY, **kwargs)
    return path


def test_modality_and_voi_lut_by_hand(tmp_path):
    # slope 2, intercept -1024: HU = 2 p - 1024; window centre 1000 width 2001 (linear,
    # DICOM PS3.3 C.11.2.1.2): y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (ymax - ymin) + ymin
    # with the output range that of the rescaled 12-bit input, [-1024, 2 * 4095 - 1024]
    path = _dicom(tmp_path / "a.dcm", rescale=(2, -1024), window=(1000, 2001))
    raw, _ = read_dicom(path, voi=False)
    np.testing.assert_allclose(raw, 2.0 * PIXELS - 1024)
    windowed, _ = read_dicom(path)
    x = 2.0 * PIXELS - 1024
    y = ((x - 999.5) / 2000 + 0.5) * (7166 + 1024) - 1024
    np.testing.assert_allclose(windowed, np.clip(y, -1024, 7166), rtol=1e-6, atol=1e-3)


def test_monochrome1_is_inverted(tmp_path):
    plain, _ = read_dicom(_dicom(tmp_path / "m2.dcm"), voi=False)
    inverted, meta = read_dicom(_dicom(tmp_path / "m1.dcm", photometric="MONOCHROME1"), voi=False)
    assert meta.photometric == "MONOCHROME1"
    np.testing.assert_array_equal(inverted, PIXELS.max() + PIXELS.min() - plain)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
def test_lossless_encodings_decode_identically(tmp_path, syntax):
    reference, _ = read_dicom(_dicom(tmp_path / "raw.dcm"))
    decoded, meta = read_dicom(_dicom(tmp_path / "c.dcm", transfer_syntax=syntax))
    assert meta.transfer_syntax == syntax.name
    np.testing.assert_array_equal(decoded, reference)


def test_jpeg_baseline_decodes_like_pillow(tmp_path):
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    pixels = (np.add.outer(np.arange(32), np.arange(48)) * 2).astype(np.uint8)
    path = _dicom(tmp_path / "j.dcm", pixels=pixels, bits_stored=8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    ds = dcmread(path)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    decoded, meta = read_dicom(path, voi=False)
    pillow = np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float32)
    assert meta.transfer_syntax == JPEGBaseline8Bit.name
    assert np.abs(decoded - pillow).max() <= 1  # two IJG decoders, rounding only


def test_meta_has_keys_not_identity(tmp_path):
    _, meta = read_dicom(_dicom(tmp_path / "a.dcm"))
    text = repr(meta)
    for value in ("PID-4471", "QUILL", "AGATHA", "19451102", "ACC-99812", "Elsewhere", "HOUSE"):
        assert value not in text
    assert meta.patient_key.startswith("p_") and meta.study_key.startswith("s_")
    _, again = read_dicom(_dicom(tmp_path / "b.dcm"))
    assert again.patient_key == meta.patient_key  # same patient, same salted key


def test_broken_dicoms_raise_read_errors_with_codes(tmp_path):
    path = _dicom(tmp_path / "good.dcm")
    blob = path.read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(blob[: len(blob) - 1000])
    (tmp_path / "head.dcm").write_bytes(blob[:200])
    scrambled = bytearray(blob)
    scrambled[128:132] = b"XXXX"  # the DICM magic
    (tmp_path / "scrambled.dcm").write_bytes(bytes(scrambled))
    from pydicom import dcmread

    ds = dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    codes = {}
    for name in ("trunc", "head", "scrambled", "nopix", "missing"):
        with pytest.raises(ReadError, match="(pixel data truncated or corrupt|no pixel data|not a DICOM file|file not found)") as err:
            read_dicom(tmp_path / f"{name}.dcm")
        codes[name] = err.value.code
        assert "QUILL" not in str(err.value) and "PID-4471" not in str(err.value)
    assert codes == {
        "trunc": "truncated",
        "head": "no_pixel_data",  # cut inside the header: nothing of the pixel element left
        "scrambled": "not_dicom",
        "nopix": "no_pixel_data",
        "missing": "missing_file",
    }


def test_undecodable_transfer_syntax(tmp_path):
    from pydicom import dcmread

    path = _dicom(tmp_path / "a.dcm")
    from pydicom.encaps import encapsulate

    ds = dcmread(path)
    ds.PixelData = encapsulate([bytes(ds.PixelData)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder exists
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ReadError, match="cannot decode MPEG2 Main Profile") as err:
        read_dicom(path)
    assert err.value.code == "undecodable_transfer_syntax"


def test_png_8_and_16_bit(tmp_path):
    eight = (np.arange(64).reshape(8, 8) * 3).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "a.png")
    sixteen = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "b.png")
    rgb = np.stack([eight] * 3, -1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    a, ma = read_png(tmp_path / "a.png")
    b, mb = read_png(tmp_path / "b.png")
    c, _ = read_png(tmp_path / "c.png")
    np.testing.assert_array_equal(a, eight)
    np.testing.assert_array_equal(b, sixteen)
    np.testing.assert_array_equal(c, eight)  # equal channels: luminance is the channel
    assert (ma.bits, mb.bits) == (8, 16)
    (tmp_path / "t.png").write_bytes((tmp_path / "b.png").read_bytes()[:60])
    with pytest.raises(ReadError, match="truncated or corrupt image") as err:
        read_png(tmp_path / "t.png")
    assert err.value.code == "truncated"


def _write_mhd(tmp_path, data, **header):
    fields = {
        "ObjectType": "Image", "NDims": "3", "BinaryData": "True", "BinaryDataByteOrderMSB": "False",
        "CompressedData": "False", "TransformMatrix": "1 0 0 0 1 0 0 0 1", "Offset": "-100 -50.5 -300",
        "ElementSpacing": "0.7 0.7 2.5", "DimSize": " ".join(str(n) for n in data.shape[::-1]),
        "ElementType": "MET_SHORT", "ElementDataFile": "v.raw",
    }  # fmt: skip
    fields.update(header)
    (tmp_path / "v.mhd").write_text("".join(f"{k} = {v}\n" for k, v in fields.items()))
    (tmp_path / "v.raw").write_bytes(data.astype("<i2").tobytes())
    return tmp_path / "v.mhd"


def test_mhd_geometry_and_world_to_voxel(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (Z, Y, X)
    arr, meta = read_mhd(_write_mhd(tmp_path, data))
    np.testing.assert_array_equal(arr, data)
    assert meta.origin == (-100, -50.5, -300) and meta.spacing == (0.7, 0.7, 2.5)
    # voxel (x=2, y=3, z=1) sits at origin + index * spacing
    world = np.array([-100 + 2 * 0.7, -50.5 + 3 * 0.7, -300 + 1 * 2.5])
    np.testing.assert_allclose(meta.world_to_voxel(world), [[2, 3, 1]], atol=1e-9)
    raw = tmp_path / "v.raw"
    raw.write_bytes(raw.read_bytes()[:-10])
    with pytest.raises(ReadError, match="230 bytes of voxel data, header needs 240") as err:
        read_mhd(tmp_path / "v.mhd")
    assert err.value.code == "truncated"


def test_nifti_nan_and_4d(tmp_path):
    import nibabel as nib

    nan = np.zeros((4, 4, 4), np.float32)
    nan[1, 2, 3] = np.inf
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    vol4 = np.stack([np.full((3, 3, 3), v, np.int16) for v in (5, 7)], -1)
    nib.save(nib.Nifti1Image(vol4, np.eye(4)), str(tmp_path / "four.nii.gz"))
    with pytest.raises(ReadError, match="contains NaN or Inf voxels") as err:
        read_nifti(tmp_path / "nan.nii.gz")
    assert err.value.code == "nan_volume"
    with pytest.raises(ReadError, match=r"4-D image \(3, 3, 3, 2\): pass a volume index") as err:
        read_nifti(tmp_path / "four.nii.gz")
    assert err.value.code == "needs_volume_index"
    second, _ = read_nifti(tmp_path / "four.nii.gz", volume=1)
    assert second.shape == (3, 3, 3) and (second == 7).all()


def _with_text(path, **elements):
    """``path`` rewritten with ``elements`` stored as LO text (a value of the wrong kind)."""
    from pydicom import datadict, dcmread

    ds = dcmread(path)
    for keyword, value in elements.items():
        tag = datadict.tag_for_keyword(keyword)
        del ds[tag]
        ds.add_new(tag, "LO", value)
    ds.save_as(path)
    return path


def test_header_values_of_the_wrong_kind_fail_without_quoting_them(tmp_path):
    spacing = _with_text(_dicom(tmp_path / "s.dcm"), PixelSpacing="PID-4471\\1")
    with pytest.raises(ReadError, match="unreadable header value") as err:
        read_dicom(spacing)
    assert err.value.code == "bad_header" and "4471" not in err.value.reason
    slope = _with_text(_dicom(tmp_path / "r.dcm", rescale=(1, 0)), RescaleSlope="QUILL")
    with pytest.raises(ReadError, match="unreadable header value") as err:
        read_dicom(slope)
    assert err.value.code == "bad_header" and "QUILL" not in err.value.reason
    _, meta = read_dicom(_with_text(_dicom(tmp_path / "m.dcm"), Modality="QUILL^AGATHA"))
    assert meta.modality == "" and meta.photometric == "MONOCHROME2"  # not a DICOM code: dropped


def test_reader_reasons_quote_neither_paths_nor_exceptions(tmp_path):
    folder = tmp_path / "QUILL AGATHA"
    folder.mkdir()
    (folder / "x.nii.gz").write_bytes(b"not a nifti at all")
    (folder / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    for reader, name in ((read_nifti, "x.nii.gz"), (read_png, "x.png")):
        with pytest.raises(ReadError, match="(not a readable NIfTI file|not a PNG/JPEG image)") as err:
            reader(folder / name)
        assert "QUILL" not in err.value.reason and str(tmp_path) not in err.value.reason


def test_a_metaimage_data_file_outside_the_root_is_refused(tmp_path):
    from raysuite.data.slices import read_slice

    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.raw").write_bytes(data.astype("<i2").tobytes())
    (tmp_path / "root" / "p1").mkdir(parents=True)
    mhd = _write_mhd(tmp_path / "root" / "p1", data, ElementDataFile="../../outside/x.raw")
    row = {"path": "p1/v.mhd", "depth": 2, "height": 3, "width": 4}
    for read in (lambda: read_mhd(mhd), lambda: read_mhd(mhd, tmp_path / "root"),
                 lambda: read_slice(tmp_path / "root", row, 0)):  # fmt: skip
        with pytest.raises(ReadError, match="ElementDataFile resolves outside the dataset root") as err:
            read()
        assert err.value.code == "outside_root"
    inside = _write_mhd(tmp_path / "root" / "p1", data, ElementDataFile="../p2/x.raw")
    (tmp_path / "root" / "p2").mkdir()
    (tmp_path / "root" / "p2" / "x.raw").write_bytes(data.astype("<i2").tobytes())
    np.testing.assert_array_equal(read_mhd(inside, tmp_path / "root")[0], data)  # inside the root
    with pytest.raises(ReadError, match="outside"):
        read_mhd(inside)  # the default root is the header's own folder


def test_read_slice_follows_links_only_inside_the_root(tmp_path):
    from raysuite.data.slices import SliceReader, read_slice

    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    (tmp_path / "outside").mkdir()
    Image.fromarray(gray).save(tmp_path / "outside" / "g.png")
    root = tmp_path / "root"
    (root / "p").mkdir(parents=True)
    Image.fromarray(gray).save(root / "real.png")
    (root / "p" / "in.png").symlink_to(root / "real.png")
    (root / "p" / "out.png").symlink_to(tmp_path / "outside" / "g.png")
    np.testing.assert_array_equal(read_slice(root, {"path": "p/in.png"}, 0), gray)
    for read in (read_slice, SliceReader()):
        with pytest.raises(ReadError, match=r"resolves outside the dataset root \(a symbolic link or \.\.\)") as err:
            read(root, {"path": "p/out.png"}, 0)
        assert err.value.code == "outside_root"
        with pytest.raises(ReadError, match="outside"):
            read(root, {"path": "../outside/g.png"}, 0)
