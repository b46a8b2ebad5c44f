"""The learning-rate and momentum schedules of :mod:`raysuite.train.optim` at their mid
points, against values worked out by hand (in the comments): a schedule whose shape is
wrong between its end points (a linear decay, a warm-up off by one step, a cosine over the
wrong span) fails here, not only one whose ends are wrong.

Hand arithmetic uses cos(pi/4) = sqrt(2)/2 = 0.70710678, so (1 + cos(pi/4)) = 1.70710678
and (1 + cos(3 pi/4)) = 0.29289322."""

import pytest

from raysuite.train.optim import OneCycle, annealing_cos, cycle_of, warmup_cosine

BASE, FINAL = 1e-3, 5e-5


@pytest.mark.parametrize(
    ("step", "lr"),
    [
        (0, 1e-4),  # warm-up: base * (step + 1) / warmup = 1e-3 * 1/10
        (4, 5e-4),  # half-way through the warm-up: 1e-3 * 5/10
        (9, 1e-3),  # the warm-up's last step reaches base: 1e-3 * 10/10
        (10, 1e-3),  # cosine progress 0: final + (base - final) = base
        # total 110 - warmup 10 = a span of 100 steps; lr = final + (base - final)/2 * (1 + cos(pi p))
        (35, 8.608757210636101e-4),  # p = 0.25: 5e-5 + 4.75e-4 * 1.70710678 = 8.6087572e-4
        (60, 5.25e-4),  # p = 0.5: 5e-5 + 4.75e-4 * 1 = 5.25e-4 (the mean of base and final)
        (85, 1.8912427893638995e-4),  # p = 0.75: 5e-5 + 4.75e-4 * 0.29289322 = 1.8912428e-4
        (110, 5e-5),  # p = 1: final
        (200, 5e-5),  # past the end: progress is clipped at 1
    ],
)
def test_warmup_cosine_at_its_mid_points(step, lr):
    assert warmup_cosine(step, 110, 10, BASE, FINAL) == pytest.approx(lr, rel=1e-12)


def test_warmup_cosine_without_warmup_starts_at_base():
    # warmup 0: p = step / total; step 50 of 100 with final 0: 1e-3 / 2 * (1 + cos(pi/2)) = 5e-4
    assert warmup_cosine(0, 100, 0, BASE, 0.0) == pytest.approx(1e-3, rel=1e-12)
    assert warmup_cosine(50, 100, 0, BASE, 0.0) == pytest.approx(5e-4, rel=1e-12)


@pytest.mark.parametrize(
    ("pct", "value"),
    [
        (-1.0, 1.0),  # clipped to pct 0: start
        (0.0, 1.0),
        (0.25, 0.8535533905932737),  # 0 + (1 - 0)/2 * 1.70710678
        (0.5, 0.5),
        (0.75, 0.14644660940672627),  # 0 + 1/2 * 0.29289322
        (1.0, 0.0),
        (2.0, 0.0),  # clipped to pct 1: end
    ],
)
def test_annealing_cos_from_one_to_zero(pct, value):
    assert annealing_cos(1.0, 0.0, pct) == pytest.approx(value, rel=1e-12, abs=1e-15)


# OneCycle(peak 1e-3) over 200 steps: warm-up a1 = int(200 * 0.3) = 60 steps from
# peak/25 = 4e-5 up to 1e-3, then 140 steps down to peak/25e4 = 4e-9.
@pytest.mark.parametrize(
    ("step", "lr"),
    [
        (0, 4e-5),
        (
            15,
            1.8058874503045722e-4,
        ),  # p = 15/60 = .25: 1e-3 + (4e-5 - 1e-3)/2 * 1.70710678 = 1e-3 - 4.8e-4 * 1.70710678
        (30, 5.2e-4),  # p = .5: (4e-5 + 1e-3) / 2
        (45, 8.594112549695428e-4),  # p = .75: 1e-3 - 4.8e-4 * 0.29289322
        (60, 1e-3),  # the peak, first step of the second phase
        (95, 8.535539763797113e-4),  # p = 35/140 = .25: 4e-9 + (1e-3 - 4e-9)/2 * 1.70710678
        (130, 5.00002e-4),  # p = .5: (1e-3 + 4e-9) / 2
        (165, 1.4645002362028865e-4),  # p = .75: 4e-9 + 4.99998e-4 * 0.29289322
        (200, 4e-9),
    ],
)
def test_one_cycle_lr_at_its_mid_points(step, lr):
    assert OneCycle(1e-3).lr(step, 200) == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize(
    ("step", "momentum"),
    [
        (0, 0.95),
        (15, 0.9353553390593273),  # warm-up p = .25: 0.85 + (0.95 - 0.85)/2 * 1.70710678
        (30, 0.90),  # p = .5: the mean of .95 and .85
        (45, 0.8646446609406726),  # p = .75: 0.85 + 0.05 * 0.29289322
        (60, 0.85),  # the lowest momentum at the lr's peak
        (95, 0.8646446609406726),  # second phase p = .25: 0.95 + (0.85 - 0.95)/2 * 1.70710678
        (165, 0.9353553390593273),  # p = .75: 0.95 - 0.05 * 0.29289322
        (200, 0.95),
    ],
)
def test_one_cycle_momentum_mirrors_the_lr(step, momentum):
    assert OneCycle(1e-3).momentum(step, 200) == pytest.approx(momentum, rel=1e-12)


def test_one_cycle_floors_its_warmup():
    # 7 steps: a1 = int(7 * 0.3) = int(2.1) = 2, so step 1 is half-way up: (4e-5 + 1e-3)/2
    assert OneCycle(1e-3).lr(1, 7) == pytest.approx(5.2e-4, rel=1e-12)
    # 2 steps: a1 = max(1, int(0.6)) = 1; step 1 starts the second phase at the peak
    assert OneCycle(1e-3).lr(1, 2) == pytest.approx(1e-3, rel=1e-12)


@pytest.mark.parametrize(
    ("step", "total", "where"),
    [
        # (6, 12) epochs over 180 steps: 10 steps per epoch, cycles of 60 and 120 steps
        (30, 180, (0, 30, 60)),  # half-way through the first cycle
        (119, 180, (1, 59, 120)),  # just before half-way through the second: 119 - 60
        (120, 180, (1, 60, 120)),  # half-way through the second
        # 185 steps: 185 // 18 = 10 per epoch still; a step past 180 stays in the last cycle
        (182, 185, (1, 122, 120)),
    ],
)
def test_cycle_of_mid_points(step, total, where):
    assert cycle_of(step, total, (6, 12)) == where


def test_cycle_of_refuses_an_empty_cycle():
    with pytest.raises(ValueError, match=r"cycles need positive epoch counts, got \(0, 10\)"):
        cycle_of(0, 10, (0, 10))
    with pytest.raises(ValueError, match=r"cycles need positive epoch counts, got \(\)"):
        cycle_of(0, 10, ())
