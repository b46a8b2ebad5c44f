"""SimCLR building blocks: projection head, NT-Xent (single and 2-rank gloo), augmentations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.testing import assert_close

from raysuite.data.simclr_augment import SimCLRAugment, sample_crop, sample_sigma
from raysuite.methods.nn.simclr import ProjectionHead, nt_xent, nt_xent_accuracy


def _polar(
    *degrees: float, radius: float = 1.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(len(degrees), 2) vectors at the given angles; cos of the angle between two of them
    is cos(a - b), so the similarities below are written directly in degrees."""
    rad = [math.radians(d) for d in degrees]
    return radius * torch.tensor([[math.cos(r), math.sin(r)] for r in rad], dtype=dtype)


# ----------------------------------------------------------------------- NT-Xent, by hand


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_two_pairs_by_hand(t):
    # views v0 = 0 deg, v1 = 90 deg (z1); v2 = 30 deg, v3 = 120 deg (z2); positives 0<->2, 1<->3.
    # z2 scaled by 2 and 3: the loss must not see the norm.
    def views(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        z1 = _polar(0, 90, dtype=dtype)
        return z1, torch.cat(
            [_polar(30, radius=2.0, dtype=dtype), _polar(120, radius=3.0, dtype=dtype)]
        )

    def e(a: float, b: float) -> float:  # exp(sim / t)
        return math.exp(math.cos(math.radians(a - b)) / t)

    l0 = -math.log(e(0, 30) / (e(0, 90) + e(0, 30) + e(0, 120)))
    l1 = -math.log(e(90, 120) / (e(90, 0) + e(90, 30) + e(90, 120)))
    l2 = -math.log(e(30, 0) / (e(30, 0) + e(30, 90) + e(30, 120)))
    l3 = -math.log(e(120, 90) / (e(120, 0) + e(120, 90) + e(120, 30)))
    expected = (l0 + l1 + l2 + l3) / 4
    assert abs(nt_xent(*views(torch.float32), temperature=t).item() - expected) < 1e-6
    assert abs(nt_xent(*views(torch.float64), temperature=t).item() - expected) < 1e-12


def _hand_loss(angles: list[float], t: float, self_term: str = "excluded") -> float:
    """Eq. 1 over 2N views at ``angles`` (first N are z1, last N are z2), explicit sums.
    ``self_term``: "excluded" (NT-Xent), "included" (exp(s_ii / t) in the denominator),
    "zeroed" (logit 0, i.e. exp(0) = 1 in the denominator)."""
    m = len(angles)
    n = m // 2
    total = 0.0
    for i in range(m):
        p = (i + n) % m
        num = math.exp(math.cos(math.radians(angles[i] - angles[p])) / t)
        den = sum(
            math.exp(math.cos(math.radians(angles[i] - angles[k])) / t) for k in range(m) if k != i
        )
        den += {"excluded": 0.0, "included": math.exp(1.0 / t), "zeroed": 1.0}[self_term]
        total += -math.log(num / den)
    return total / m


def test_nt_xent_three_pairs_by_hand():
    angles = [0.0, 100.0, 200.0, 20.0, 130.0, 250.0]
    z1, z2 = _polar(*angles[:3]), _polar(*angles[3:])
    for t in (0.1, 0.3):
        assert abs(nt_xent(z1, z2, temperature=t).item() - _hand_loss(angles, t)) < 1e-6
    assert abs(nt_xent(z1, z2).item() - _hand_loss(angles, 0.1)) < 1e-6  # default t = 0.1


def test_nt_xent_excludes_self_similarity():
    angles = [0.0, 100.0, 200.0, 20.0, 130.0, 250.0]
    z1, z2 = _polar(*angles[:3]), _polar(*angles[3:])
    got = nt_xent(z1, z2, temperature=0.5).item()
    assert abs(got - _hand_loss(angles, 0.5)) < 1e-6
    assert abs(got - _hand_loss(angles, 0.5, "included")) > 0.1
    assert abs(got - _hand_loss(angles, 0.5, "zeroed")) > 0.1  # masking is -inf, not 0
    # one pair: the only other view is the positive, so the loss is exactly 0 whatever the
    # embeddings; with the self term kept (or zeroed) it would not be
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 5, generator=g), torch.randn(1, 5, generator=g)
    assert abs(nt_xent(a, b).item()) < 1e-6


@pytest.mark.parametrize("t", [0.05, 0.2, 1.0, 3.0])
def test_nt_xent_temperature_closed_form(t):
    # positives identical, every negative orthogonal: each anchor has s_pos = 1/t and
    # 2N - 2 negatives at 0, so l = log(1 + (2N - 2) exp(-1/t)) for every anchor
    n = 3
    z = torch.eye(2 * n)[:n]  # (3, 6), orthonormal rows
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
    assert abs(nt_xent(z, z.clone(), temperature=t).item() - expected) < 1e-6


def test_nt_xent_temperature_limits():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    # t -> inf: every logit -> 0, softmax uniform over the 2N - 1 others
    assert abs(nt_xent(z1, z2, temperature=1e6).item() - math.log(7)) < 1e-5
    losses = [nt_xent(z1, z1 + 0.01 * z2, temperature=t).item() for t in (1.0, 0.3, 0.1, 0.03)]
    assert all(
        a > b for a, b in zip(losses, losses[1:], strict=False)
    )  # positives closest: sharper, lower


def test_nt_xent_gradcheck_and_no_group():
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, temperature=0.2), (z1, z2))
    assert not dist.is_initialized()
    assert nt_xent(z1, z2, gather=True).item() == nt_xent(z1, z2, gather=False).item()
    loss = nt_xent(z1, z2)
    loss.backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


def test_nt_xent_bf16_inputs_computed_in_fp32():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    lo = nt_xent(z1.bfloat16(), z2.bfloat16())
    assert lo.dtype == torch.float32
    assert_close(lo, nt_xent(z1.bfloat16().float(), z2.bfloat16().float()))


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"expected two \(N, d\) tensors of equal shape, got \(3, 4\) and \(2, 4\)"):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4))


def test_nt_xent_accuracy():
    z1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    z2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.1]])
    # z2[2] is nearer z1[0] and z2[0] (cos 0.995) than its positive z1[2] (cos 0.0995);
    # every other anchor, z1[2] included, finds its positive first: 5 of 6
    acc = nt_xent_accuracy(z1, z2)
    assert not acc.requires_grad
    assert abs(acc.item() - 5 / 6) < 1e-6
    assert nt_xent_accuracy(z1, z1.detach() * 2).item() == 1.0
    # the hand-checked 2-pair set: every anchor's nearest other view is its positive
    assert nt_xent_accuracy(_polar(0, 90), _polar(30, 120)).item() == 1.0
    assert nt_xent_accuracy(_polar(0, 90), _polar(120, 30)).item() == 0.0


def test_projection_head():
    head = ProjectionHead(16, hidden_dim=32)
    layers = [type(m) for m in head.net]
    assert layers == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    x = torch.randn(4, 16)
    assert head(x).shape == (4, 128)
    assert ProjectionHead(16, 8, 3).eval()(x).shape == (4, 3)


# ------------------------------------------------------------- NT-Xent across 2 gloo ranks

_WORLD, _N, _D_IN, _D, _T = 2, 3, 5, 4, 0.2


def _ddp_worker(
    rank: int, init_file: str, state: dict, x1: torch.Tensor, x2: torch.Tensor, ref: dict
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=_WORLD)
    try:
        rows = slice(rank * _N, (rank + 1) * _N)
        model = nn.Linear(_D_IN, _D)
        model.load_state_dict(state)
        ddp = DistributedDataParallel(model)
        a, b = x1[rows].clone().requires_grad_(), x2[rows].clone().requires_grad_()
        z1, z2 = ddp(torch.cat([a, b])).chunk(2)
        loss = nt_xent(z1, z2, temperature=_T)  # gathers: 2 * N * W views
        loss.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        tol = {"rtol": 1e-5, "atol": 1e-6}
        # the mean of the ranks' losses is the one-process loss on the whole 2N batch ...
        assert_close(mean / _WORLD, ref["loss"], **tol)
        # ... DDP's averaged parameter gradients are that loss's gradients ...
        assert_close(model.weight.grad, ref["weight"], **tol)
        assert_close(model.bias.grad, ref["bias"], **tol)
        # ... and each rank's inputs get the gradient of the *sum* of the ranks' losses
        # (the gather's backward sums; DDP's 1/W applies to parameters only)
        assert_close(a.grad, _WORLD * ref["x1"][rows], **tol)
        assert_close(b.grad, _WORLD * ref["x2"][rows], **tol)
        # gather=False: negatives from this rank only
        assert_close(nt_xent(z1.detach(), z2.detach(), _T, gather=False), ref["local"][rank], **tol)
        assert not torch.allclose(loss.detach(), ref["local"][rank])
    finally:
        dist.destroy_process_group()


def test_nt_xent_gather_matches_single_process(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(_D_IN, _D)
    x1 = torch.randn(_WORLD * _N, _D_IN, requires_grad=True)
    x2 = torch.randn(_WORLD * _N, _D_IN, requires_grad=True)
    z1, z2 = model(torch.cat([x1, x2])).chunk(2)
    loss = nt_xent(z1, z2, temperature=_T)
    loss.backward()
    with torch.no_grad():
        local = [
            nt_xent(z1[r * _N : (r + 1) * _N], z2[r * _N : (r + 1) * _N], _T) for r in range(_WORLD)
        ]
    ref = {
        "loss": loss.detach(),
        "weight": model.weight.grad,
        "bias": model.bias.grad,
        "x1": x1.grad,
        "x2": x2.grad,
        "local": local,
    }
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # fork: the children reuse this process's imported torch (spawn re-imports it in each,
    # several seconds on a busy machine); nothing here has touched CUDA
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    args = (str(tmp_path / "pg-init"), state, x1.detach(), x2.detach(), ref)
    mp.start_processes(_ddp_worker, args=args, nprocs=_WORLD, join=True, start_method=method)


# ------------------------------------------------------------------------- augmentations


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(h: int = 48, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, h, w, generator=_gen(seed))


def test_augment_shapes_dtype_range():
    aug = SimCLRAugment(size=24)
    x = _image()
    v = aug(x, _gen())
    assert v.shape == (1, 24, 24) and v.dtype == torch.float32
    assert v.min() >= 0.0 and v.max() <= 1.0  # clipped after the noise
    assert aug(x.double(), _gen()).dtype == torch.float64
    batch = torch.stack([_image(seed=s) for s in range(3)])
    out = aug(batch, _gen(5))
    assert out.shape == (3, 1, 24, 24)
    g = _gen(5)  # a batch is the per-image calls in order, sharing the generator
    assert_close(out, torch.stack([aug(b, g) for b in batch]))
    v1, v2 = aug.pair(x, _gen())
    assert v1.shape == v2.shape == (1, 24, 24) and not torch.equal(v1, v2)
    assert SimCLRAugment(size=24, noise_frac=(0.0, 0.0), clip=False)(x, _gen()).max() <= 1.0
    raw = SimCLRAugment(size=24, clip=False)(torch.ones(1, 30, 30), _gen())
    assert raw.max() > 1.0  # unclipped noise leaves [0, 1]
    with pytest.raises(TypeError, match=r"expected a float image in \[0, 1\], got torch\.uint8"):
        aug(torch.ones(1, 8, 8, dtype=torch.uint8), _gen())
    with pytest.raises(ValueError, match="blur_kernel must be a positive odd integer, got 20"):
        SimCLRAugment(blur_kernel=20)
    with pytest.raises(ValueError, match=r"scale must be an ordered range of positive numbers, got \(0\.5, 0\.2\)"):
        SimCLRAugment(scale=(0.5, 0.2))


def test_augment_deterministic_given_generator():
    aug, x = SimCLRAugment(size=24), _image()
    assert torch.equal(aug(x, _gen(7)), aug(x, _gen(7)))
    assert not torch.equal(aug(x, _gen(7)), aug(x, _gen(8)))
    g = _gen(7)
    first, second = aug(x, g), aug(x, g)
    assert not torch.equal(first, second)  # two calls: two different views


def test_augment_identity_when_everything_is_off():
    aug = SimCLRAugment(
        size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, blur_p=0.0, noise_frac=(0.0, 0.0)
    )
    x = _image(32, 32)
    assert_close(aug(x, _gen()), x)
    flipped = SimCLRAugment(
        size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, blur_p=0.0, noise_frac=(0.0, 0.0)
    )
    assert_close(flipped(x, _gen()), x.flip(-1))
    half = SimCLRAugment(
        size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), blur_p=0.0, noise_frac=(0.0, 0.0)
    )
    g = _gen(3)
    flips = sum(torch.equal(half(x, g), x.flip(-1)) for _ in range(200))
    assert 70 < flips < 130  # p = 0.5


def test_sample_crop_area_and_bounds():
    g = _gen(11)
    for h, w in ((224, 224), (300, 256), (512, 512), (37, 41)):
        fracs = []
        for _ in range(1000):
            top, left, ch, cw = sample_crop(h, w, (0.2, 1.0), (3 / 4, 4 / 3), g)
            assert top >= 0 and left >= 0 and top + ch <= h and left + cw <= w
            fracs.append(ch * cw / (h * w))
        assert 0.2 <= min(fracs) < 0.25 and 0.95 < max(fracs) <= 1.0
        assert (
            0.5 < sum(fracs) / len(fracs) < 0.7
        )  # mean of U(0.2, 1) is 0.6, large ones fall back to 1
    # aspect ratios of the accepted tries stay in [3/4, 4/3] up to rounding
    for _ in range(500):
        _, _, ch, cw = sample_crop(512, 512, (0.2, 0.8), (3 / 4, 4 / 3), g)
        assert 3 / 4 - 0.02 < cw / ch < 4 / 3 + 0.02


def test_sample_sigma_bounds():
    g = _gen(12)
    sigmas = [sample_sigma((0.1, 2.0), g) for _ in range(2000)]
    assert 0.1 <= min(sigmas) < 0.12 and 1.98 < max(sigmas) <= 2.0


def test_blur_applied_and_sigma_matters():
    base = dict(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, noise_frac=(0.0, 0.0))
    x = torch.zeros(1, 32, 32)
    x[0, 16, 16] = 1.0  # impulse: the view is the blur kernel
    for seed in range(5):
        v = SimCLRAugment(**base, blur_p=1.0)(x, _gen(seed))
        assert v[0, 16, 16] < 1.0 and abs(v.sum().item() - 1.0) < 1e-5  # blurred, mass kept
        g = _gen(seed)
        g_crop = sample_crop(32, 32, (1.0, 1.0), (1.0, 1.0), g)
        assert g_crop == (0, 0, 32, 32)
        torch.rand((), generator=g), torch.rand((), generator=g)  # flip and blur draws
        sigma = sample_sigma((0.1, 2.0), g)
        # peak of a normalised 21-tap Gaussian of this sigma
        taps = torch.exp(-0.5 * (torch.arange(-10.0, 11.0) / sigma) ** 2)
        assert abs(v[0, 16, 16].item() - (taps.max() / taps.sum()).item() ** 2) < 1e-5
    assert_close(SimCLRAugment(**base, blur_p=0.0)(x, _gen()), x)
    narrow = SimCLRAugment(**base, blur_sigma=(0.1, 0.1))(x, _gen())
    assert narrow[0, 16, 16] > 0.999  # sigma 0.1 is nearly the identity
    wide = SimCLRAugment(**base, blur_sigma=(2.0, 2.0))(x, _gen())
    assert wide[0, 16, 16] < 0.05


@pytest.mark.parametrize("level", [0.5, 0.2])
def test_noise_sigma_relative_to_mean(level):
    aug = SimCLRAugment(size=128, blur_p=0.0)
    g = _gen(13)
    x = torch.full((1, 160, 144), level)
    ratios = []
    for _ in range(40):
        v = aug(x, g)
        assert abs(v.mean().item() - level) < 0.01 * level + 1e-3
        ratios.append(v.std().item() / level)
    # 16384 pixels: the std estimate is within about 1 % of sigma
    assert 0.125 * 0.97 < min(ratios) < 0.14 and 0.23 < max(ratios) < 0.25 * 1.03


def test_noise_uses_the_view_mean():
    aug = SimCLRAugment(
        size=128,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip_p=0.0,
        blur_p=0.0,
        noise_frac=(0.2, 0.2),
        clip=False,
    )
    x = torch.rand(1, 128, 128, generator=_gen(14)) * 0.4  # mean about 0.2
    residual = aug(x, _gen()) - x
    assert abs(residual.std().item() / x.mean().item() - 0.2) < 0.2 * 0.03
