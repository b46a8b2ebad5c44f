"""Seed 004 Table 4.1 augmentation (fastai v1 get_transforms semantics) and cutout."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch.testing import assert_close

from raysuite.data.cxr_augment import (
    AugmentConfig,
    adjust_brightness,
    adjust_contrast,
    augment,
    cutout,
    rotation_matrix,
    sampling_grid,
    symmetric_warp_matrix,
    zoom_matrix,
)

NONE = AugmentConfig.none()
GEOMETRY = dataclasses.replace(NONE, p_flip=0.5, p_warp=1.0, p_rotate=1.0, p_zoom=1.0)
SINGLE = {
    "flip": dataclasses.replace(NONE, p_flip=1.0),
    "warp": dataclasses.replace(NONE, p_warp=1.0),
    "rotate": dataclasses.replace(NONE, p_rotate=1.0),
    "zoom": dataclasses.replace(NONE, p_zoom=1.0),
    "brightness": dataclasses.replace(NONE, p_brightness=1.0),
    "contrast": dataclasses.replace(NONE, p_contrast=1.0),
    "all": AugmentConfig(),
}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _centred(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (y, x) relative to the image centre, (size, size) each."""
    c = torch.arange(size) - (size - 1) / 2
    return torch.meshgrid(c, c, indexing="ij")


def _blobs(b: int = 6, size: int = 64, seed: int = 0) -> torch.Tensor:
    """(b, size, size) int64 masks: an off-centre ellipse and a rectangle per sample."""
    g = _gen(seed)
    y, x = _centred(size)
    masks = []
    for _ in range(b):
        cy, cx = (torch.rand(2, generator=g) - 0.5) * size / 2
        ellipse = ((y - cy) / 12) ** 2 + ((x - cx) / 7) ** 2 < 1
        r0, c0 = torch.randint(4, size // 2, (2,), generator=g)
        rect = torch.zeros(size, size, dtype=torch.bool)
        rect[r0 : r0 + 10, c0 : c0 + 20] = True
        masks.append(ellipse | rect)
    return torch.stack(masks).long()


def test_config_defaults_are_table_4_1():
    cfg = AugmentConfig()
    assert (cfg.p_flip, cfg.p_warp, cfg.p_rotate, cfg.p_zoom) == (0.5, 0.75, 0.75, 0.75)
    assert (cfg.warp, cfg.max_rotate, cfg.zoom) == (0.2, 10.0, (1.0, 1.1))
    assert (cfg.p_brightness, cfg.brightness) == (0.75, (0.4, 0.6))
    assert (cfg.p_contrast, cfg.contrast) == (0.75, (0.8, 1.25))
    assert NONE.p_flip == NONE.p_warp == NONE.p_rotate == NONE.p_zoom == 0.0
    assert NONE.p_brightness == NONE.p_contrast == 0.0 and NONE.warp == 0.2
    with pytest.raises(ValueError, match="p_rotate"):
        AugmentConfig(p_rotate=1.5)


def test_none_is_identity():
    x, m = torch.rand(4, 3, 64, 64), _blobs(4)
    out, out_m = augment(x, m, NONE, _gen())
    assert_close(out, x, atol=1e-6, rtol=0)
    assert torch.equal(out_m, m)
    assert augment(x, None, NONE)[1] is None


def test_flip_only_is_torch_flip():
    x, m = torch.rand(4, 3, 64, 64), _blobs(4)
    out, out_m = augment(x, m, SINGLE["flip"], _gen())
    assert torch.equal(out, torch.flip(x, [-1]))
    assert torch.equal(out_m, torch.flip(m, [-1]))


def test_flip_probability_is_per_sample():
    x = torch.rand(400, 1, 8, 8)
    out, _ = augment(x, None, dataclasses.replace(NONE, p_flip=0.5), _gen())
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert ((out == x).flatten(1).all(1) ^ flipped).all()
    assert 0.4 < flipped.float().mean() < 0.6


def test_zero_warp_is_identity():
    assert_close(
        symmetric_warp_matrix(torch.zeros(3, 4, dtype=torch.float64)),
        torch.eye(3).expand(3, 3, 3).double(),
    )
    x, m = torch.rand(2, 3, 64, 64), _blobs(2)
    out, out_m = augment(x, m, dataclasses.replace(NONE, p_warp=1.0, warp=0.0), _gen())
    assert_close(out, x, atol=1e-6, rtol=0)
    assert torch.equal(out_m, m)


def test_symmetric_warp_maps_targets_to_corners():
    m = (torch.rand(5, 4, generator=_gen(), dtype=torch.float64) - 0.5) * 0.4
    m0, m1, m2, m3 = m.unbind(-1)
    targets = torch.stack(
        [
            torch.stack([-1 - m3, -1 - m1], -1),
            torch.stack([-1 - m2, 1 + m1], -1),
            torch.stack([1 + m3, -1 - m0], -1),
            torch.stack([1 + m2, 1 + m0], -1),
        ],
        1,
    )
    homogeneous = torch.cat([targets, torch.ones(5, 4, 1, dtype=m.dtype)], -1)
    mapped = homogeneous @ symmetric_warp_matrix(m).transpose(1, 2)
    corners = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], dtype=m.dtype)
    assert_close(mapped[..., :2] / mapped[..., 2:], corners.expand(5, 4, 2))


@pytest.mark.parametrize("degrees", [10.0, -7.5])
def test_rotation_matches_torchvision(degrees):
    # fastai's rotation turns the content the way torchvision's positive angle does
    img = TF.gaussian_blur(torch.rand(1, 1, 64, 64, generator=_gen()), [9, 9], [3.0, 3.0])
    mat = rotation_matrix(torch.tensor([degrees], dtype=torch.float64), 64, 64).float()
    grid = sampling_grid(mat, torch.tensor([False]), 64, 64)
    ours = torch.nn.functional.grid_sample(img, grid, align_corners=False)
    ref = TF.rotate(img, degrees, interpolation=TF.InterpolationMode.BILINEAR)
    y, x = _centred()
    disc = y**2 + x**2 < 25**2
    assert_close(ours[..., disc], ref[..., disc], atol=1e-5, rtol=0)


def test_rotation_leaves_centred_disc_unchanged():
    y, x = _centred()
    disc = (y**2 + x**2 < 20**2).long().expand(8, 64, 64)
    bar = ((y.abs() < 3) & (x.abs() < 25)).long().expand(8, 64, 64)
    _, out = augment(disc.float()[:, None], disc, SINGLE["rotate"], _gen())
    changed = out != disc  # only pixels the boundary passes through
    assert ((y**2 + x**2).sqrt() - 20).abs().expand(8, 64, 64)[changed].max() < 1
    assert changed.float().mean() < 0.01
    _, out = augment(bar.float()[:, None], bar, SINGLE["rotate"], _gen())
    assert (out != bar).flatten(1).any(1).sum() >= 6  # the angles are random, not 0


def test_zoom_window_stays_inside_image():
    scale = torch.full((4,), 1.1, dtype=torch.float64)
    centre = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    grid = sampling_grid(zoom_matrix(scale, centre), torch.zeros(4, dtype=torch.bool), 64, 64)
    assert grid.abs().max() <= 1.0
    assert_close(grid[0].amin((0, 1)), torch.full((2,), -1.0 + 1 / 64 / 1.1).double())
    assert_close(grid[1].amax((0, 1)), torch.full((2,), 1.0 - 1 / 64 / 1.1).double())


@pytest.mark.parametrize("name", list(SINGLE))
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.float32])
def test_masks_stay_binary_with_their_dtype(name, dtype):
    m = _blobs(4).to(dtype)
    out, out_m = augment(torch.rand(4, 3, 64, 64), m, SINGLE[name], _gen())
    assert out_m.dtype == dtype and out_m.shape == m.shape
    assert set(out_m.unique().tolist()) <= {0, 1}
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("cfg", [GEOMETRY, AugmentConfig()], ids=["geometry", "table_4_1"])
def test_image_and_mask_stay_aligned(cfg):
    m = _blobs(8)
    out, out_m = augment(m.float()[:, None].expand(8, 3, 64, 64), m, cfg, _gen(3))
    agree = ((out[:, 0] > 0.5).long() == out_m).flatten(1).float().mean(1)
    assert agree.min() >= 0.98
    assert not torch.equal(out_m, m)


def test_brightness_and_contrast_by_hand():
    x = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0]).view(1, 1, 1, 5).repeat(2, 3, 4, 1)
    assert_close(adjust_brightness(x, torch.tensor([0.5, 0.5])), x, atol=1e-6, rtol=0)
    assert_close(adjust_contrast(x, torch.tensor([1.0, 1.0])), x, atol=1e-6, rtol=0)
    # odds(0.25) = 1/3; brightness b multiplies the odds by b / (1 - b), contrast c powers them
    quarter = torch.full((2, 1, 1, 1), 0.25)
    assert_close(
        adjust_brightness(quarter, torch.tensor([0.6, 0.4])).flatten(),
        torch.tensor([1 / 3, 2 / 11]),
    )
    assert_close(
        adjust_contrast(quarter, torch.tensor([2.0, 0.5])).flatten(),
        torch.tensor([0.1, 1 / (1 + 3**0.5)]),
    )


def test_same_seed_same_output():
    x, m = torch.rand(4, 3, 64, 64), _blobs(4)
    a = augment(x, m, AugmentConfig(), _gen(7))
    b = augment(x, m, AugmentConfig(), _gen(7))
    c = augment(x, m, AugmentConfig(), _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, m = torch.rand(4, 3, 64, 64), _blobs(4)
    cpu = augment(x, m, AugmentConfig(), _gen(5))
    gpu = augment(x.cuda(), m.cuda(), AugmentConfig(), _gen(5))
    assert gpu[0].is_cuda and gpu[1].is_cuda
    assert_close(gpu[0].cpu(), cpu[0], atol=1e-4, rtol=0)
    assert (gpu[1].cpu() == cpu[1]).float().mean() > 0.999


def test_cutout_zeroes_only_inside_squares():
    x = 0.1 + 0.9 * torch.rand(16, 3, 64, 64, generator=_gen())
    out = cutout(x, (1, 4), (0.04, 0.18), _gen())
    zero = out == 0
    assert torch.equal(out[~zero], x[~zero])
    assert (zero.all(1) == zero.any(1)).all()  # every channel of a hole
    side = round(0.18 * 64)
    assert (zero[:, 0].flatten(1).sum(1) <= 4 * side**2).all()
    assert zero[:, 0].flatten(1).any(1).all()

    one = cutout(x, (1, 1), (0.04, 0.18), _gen(1))[:, 0] == 0
    for hole in one:
        rows, cols = hole.any(1).nonzero()[:, 0], hole.any(0).nonzero()[:, 0]
        box = torch.zeros_like(hole)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(hole, box)  # one (clipped) square
        assert len(rows) <= side and len(cols) <= side
    assert torch.equal(cutout(x, (0, 0), (0.04, 0.18), _gen()), x)
