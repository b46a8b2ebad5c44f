import math

import numpy as np
import pytest
import torch

from raysuite.methods.nn.det_metrics import DetectionEvaluator, average_precision, box_iou

E = np.zeros((0, 4))  # no boxes
N = np.zeros(0)  # no scores / labels


def _ev(num_classes: int, images: list, **kw) -> dict[str, float]:
    ev = DetectionEvaluator(num_classes, **kw)
    for img in images:
        ev.add(*img)
    return ev.compute()


def test_box_iou_by_hand():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]])
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])
    # [0,0,2,2] vs [1,1,3,3]: inter 1, union 4 + 4 - 1 = 7 (no VOC +1)
    expected = np.array([[1 / 7, 1.0, 0.0], [0.0, 1 / 4, 0.0]])
    np.testing.assert_allclose(box_iou(a, b), expected, atol=1e-12)
    assert box_iou(E, b).shape == (0, 3) and box_iou(a, E).shape == (2, 0)


def test_perfect_detections_ap_one():
    gt = np.array([[10, 10, 50, 60], [100, 100, 120, 130]], dtype=float)
    out = _ev(
        2,
        [
            (gt, [0.9, 0.3], [0, 1], gt, [0, 1]),
            (gt[:1], [0.2], [1], gt[:1], [1]),
        ],
    )
    assert out == {
        "map40": 1.0,
        "ap40/0": 1.0,
        "ap40/1": 1.0,
        **dict.fromkeys(["map50", "ap50/0", "ap50/1"], 1.0),
    }


def test_hand_worked_two_images_two_classes():
    # Image A then image B (add order). Class 0 GT: A: a1=[0,0,10,10], a2=[20,20,30,30],
    # a3=[50,50,60,60] (never detected); B: b1=[0,0,10,10], b2=[30,0,40,10]. npos = 5.
    # Class 0 detections, ranked by score (IoUs are 1, 0, or 90/110 for r3, same at 0.4/0.5):
    #   r1 .95 A [0,0,10,10]      -> a1 TP
    #   r2 .90 B [100,..]         -> FP (no overlap)
    #   r3 .85 A [1,0,11,10]      -> IoU 0.82 with a1, but a1 is taken: duplicate -> FP
    #   r4 .80 B [0,0,10,10]      -> b1 TP
    #   r5 .75 A [20,20,30,30]    -> a2 TP
    #   r6 .70 B [30,0,40,10]     -> b2 TP
    #   r7 .60 A [200,..]         -> FP
    #   rank  TP FP  P     R    envelope
    #   1     1  0   1     .2   1
    #   2     1  1   1/2   .2   2/3
    #   3     1  2   1/3   .2   2/3
    #   4     2  2   1/2   .4   2/3   <- raw P 1/2 < later 2/3: envelope matters
    #   5     3  2   3/5   .6   2/3
    #   6     4  2   2/3   .8   2/3
    #   7     4  3   4/7   .8   4/7
    # AP0 = .2*1 + .2*2/3 + .2*2/3 + .2*2/3 (+ .2*0 for the missed a3) = 0.6 at both thresholds
    # (raw precision at recall steps would give .2*(1 + 1/2 + 3/5 + 2/3) = 0.5533).
    #
    # Class 1 GT: A: c1=[0,0,10,10]; B: c2=[0,0,10,10]. npos = 2.
    #   q1 .80 A [0,0,10,4.5]  IoU 45/100 = .45 with c1
    #   q2 .70 B [50,50,60,60] FP
    #   q3 .60 B [0,0,10,10]   c2 TP
    #   q4 .50 A [0,0,10,10]   IoU 1 with c1
    # IoU > .4: q1 TP, q2 FP, q3 TP, q4 FP (c1 already matched by q1)
    #   rank P/R: 1/1 R.5, 1/2 R.5, 2/3 R1, 2/4 R1 -> AP = .5*1 + .5*2/3 = 5/6
    # IoU > .5: q1 FP, q2 FP, q3 TP, q4 TP (c1 still free)
    #   rank P/R: 0 R0, 0 R0, 1/3 R.5, 1/2 R1; envelope at rank 3 is 1/2
    #   -> AP = .5*1/2 + .5*1/2 = 1/2 (raw would be 5/12)
    # map40 = (0.6 + 5/6) / 2 = 43/60; map50 = (0.6 + 0.5) / 2 = 0.55
    img_a = (
        [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [200, 200, 210, 210],
         [0, 0, 10, 4.5], [0, 0, 10, 10]],
        [0.95, 0.85, 0.75, 0.60, 0.80, 0.50],
        [0, 0, 0, 0, 1, 1],
        [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [0, 0, 10, 10]],
        [0, 0, 0, 1],
    )  # fmt: skip
    img_b = (
        [[100, 100, 110, 110], [0, 0, 10, 10], [30, 0, 40, 10], [50, 50, 60, 60],
         [0, 0, 10, 10]],
        [0.90, 0.80, 0.70, 0.70, 0.60],
        [0, 0, 0, 1, 1],
        [[0, 0, 10, 10], [30, 0, 40, 10], [0, 0, 10, 10]],
        [0, 0, 1],
    )  # fmt: skip
    out = _ev(2, [img_a, img_b])
    expected = {
        "ap40/0": 0.6,
        "ap50/0": 0.6,
        "ap40/1": 5 / 6,
        "ap50/1": 0.5,
        "map40": 43 / 60,
        "map50": 0.55,
    }
    assert out.keys() == expected.keys()
    for k, v in expected.items():
        assert out[k] == pytest.approx(v, abs=1e-9), k


def test_iou_exactly_at_threshold():
    # [0,0,2,1] vs [0,0,1,1]: inter 1, union 2 -> IoU 0.5 exactly.
    # [0,0,5,1] vs [0,0,2,1]: inter 2, union 5 -> 2/5, the same double as the literal 0.4.
    assert box_iou([[0, 0, 2, 1]], [[0, 0, 1, 1]])[0, 0] == 0.5
    assert box_iou([[0, 0, 5, 1]], [[0, 0, 2, 1]])[0, 0] == 0.4
    at50 = ([[0, 0, 2, 1]], [1.0], [0], [[0, 0, 1, 1]], [0])
    at40 = ([[0, 0, 5, 1]], [1.0], [0], [[0, 0, 2, 1]], [0])
    # strict (IoU > t): the single detection is a FP -> AP 0; non-strict (>=): TP -> AP 1
    assert _ev(1, [at50], iou_thresholds=(0.5,))["map50"] == 0.0
    assert _ev(1, [at50], iou_thresholds=(0.5,), strict=False)["map50"] == 1.0
    assert _ev(1, [at40], iou_thresholds=(0.4,))["map40"] == 0.0
    assert _ev(1, [at40], iou_thresholds=(0.4,), strict=False)["map40"] == 1.0


def test_class_without_gt_excluded_and_class_without_detections_zero():
    # 3 classes. Class 0: perfect (AP 1). Class 1: GT, no detections (AP 0).
    # Class 2: only a FP detection, no GT anywhere -> excluded. mAP = (1 + 0) / 2.
    box = [[0, 0, 10, 10]]
    images = [
        (box + [[50, 50, 60, 60]], [0.9, 0.8], [0, 2], box, [0]),
        (E, N, N, box, [1]),
    ]
    out = _ev(3, images)
    assert out == {
        "map40": 0.5, "ap40/0": 1.0, "ap40/1": 0.0,
        "map50": 0.5, "ap50/0": 1.0, "ap50/1": 0.0,
    }  # fmt: skip
    ap = DetectionEvaluator(3)
    for img in images:
        ap.add(*img)
    assert np.isnan(ap.per_class_ap()[:, 2]).all()
    # no GT at all -> NaN mAP and no per-class keys
    out = _ev(3, [(box, [0.9], [0], E, N)])
    assert set(out) == {"map40", "map50"} and all(math.isnan(v) for v in out.values())
    assert all(math.isnan(v) for v in DetectionEvaluator(2).compute().values())


def test_wrong_class_never_matches():
    # A perfect box with label 1 on a GT of class 0: class 0 has GT and no detection (AP 0);
    # class 1 has no GT (excluded). mAP = 0.
    box = [[0, 0, 10, 10]]
    assert _ev(2, [(box, [0.99], [1], box, [0])]) == {
        "map40": 0.0, "ap40/0": 0.0, "map50": 0.0, "ap50/0": 0.0,
    }  # fmt: skip


def test_score_ties_keep_add_order():
    # One GT (image 2). Both detections score 0.5; the FP (image 1) was added first, so it
    # ranks first: P/R = (0, 0), (1/2, 1) -> AP 1/2. Added the other way round: (1, 1) -> AP 1.
    fp = ([[50, 50, 60, 60]], [0.5], [0], E, N)
    tp = ([[0, 0, 10, 10]], [0.5], [0], [[0, 0, 10, 10]], [0])
    assert _ev(1, [fp, tp], iou_thresholds=(0.4,))["map40"] == 0.5
    assert _ev(1, [tp, fp], iou_thresholds=(0.4,))["map40"] == 1.0


def test_average_precision_by_hand():
    # P/R (1, .5), (.5, .5), (2/3, 1): envelope (1, 2/3, 2/3) -> .5*1 + .5*2/3
    assert average_precision([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]) == pytest.approx(5 / 6)
    assert average_precision([], []) == 0.0


def test_torch_inputs_and_validation():
    ev = DetectionEvaluator(2)
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]], requires_grad=True)
    ev.add(box, torch.tensor([0.9]), torch.tensor([1]), box.detach(), torch.tensor([1]))
    assert ev.compute()["map40"] == 1.0
    with pytest.raises(ValueError, match=r"pred_labels outside \[0, 2\): \[2\]"):
        ev.add(box, [0.9], [2], E, N)  # label outside [0, 2)
    with pytest.raises(ValueError, match="prediction lengths differ: 1, 2, 1"):
        ev.add(box, [0.9, 0.1], [0], E, N)  # length mismatch
    with pytest.raises(ValueError, match=r"IoU thresholds give duplicate keys: \(0\.5, 0\.501\)"):
        DetectionEvaluator(2, iou_thresholds=(0.5, 0.501))  # both keys "50"


# --- cross-check against an independent, straightforward implementation -------------------


def _iou_scalar(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_map(images, num_classes: int, thr: float) -> tuple[float, dict[int, float]]:
    """Python lists and loops; AP = Σ over TPs of (1/npos) * max precision at rank >= it."""
    aps = {}
    for c in range(num_classes):
        gts = {
            i: [g for g, lab in zip(img[3], img[4], strict=True) if lab == c]
            for i, img in enumerate(images)
        }
        npos = sum(len(v) for v in gts.values())
        if npos == 0:
            continue
        dets = [
            (-float(s), seq, i, box)
            for seq, (i, box, s) in enumerate(
                (i, b, s)
                for i, img in enumerate(images)
                for b, s, lab in zip(img[0], img[1], img[2], strict=True)
                if lab == c
            )
        ]
        dets.sort(key=lambda d: (d[0], d[1]))  # descending score, ties in add order
        used = {i: [False] * len(v) for i, v in gts.items()}
        is_tp, precision = [], []
        n_tp = 0
        for k, (_, _, i, box) in enumerate(dets, start=1):
            best, best_j = -1.0, None
            for j, g in enumerate(gts[i]):
                if not used[i][j] and _iou_scalar(box, g) > best:
                    best, best_j = _iou_scalar(box, g), j
            hit = best_j is not None and best > thr
            if hit:
                used[i][best_j] = True
                n_tp += 1
            is_tp.append(hit)
            precision.append(n_tp / k)
        ap = 0.0
        for k, hit in enumerate(is_tp):
            if hit:
                ap += max(precision[k:]) / npos
        aps[c] = ap
    return (sum(aps.values()) / len(aps) if aps else math.nan), aps


def test_matches_reference_on_random_data():
    rng = np.random.default_rng(0)
    images = []
    for _ in range(20):
        g = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 30, (g, 2))], 1)
        gl = rng.integers(0, 3, g)
        # jittered copies of GT (some duplicated, some relabelled) plus random boxes
        src = rng.integers(0, max(g, 1), int(rng.integers(0, 8))) if g else np.zeros(0, int)
        near = gt[src] + rng.normal(0, 3, (len(src), 4)) if g else np.zeros((0, 4))
        near_l = np.where(rng.random(len(src)) < 0.8, gl[src], rng.integers(0, 3, len(src)))
        r = int(rng.integers(0, 4))
        rxy = rng.uniform(0, 80, (r, 2))
        rand = np.concatenate([rxy, rxy + rng.uniform(5, 30, (r, 2))], 1)
        pb = np.concatenate([near, rand])
        pl = np.concatenate([near_l, rng.integers(0, 3, r)]).astype(int)
        ps = np.round(rng.random(len(pb)), 1)  # coarse scores: many ties across images
        images.append((pb, ps, pl, gt, gl))
    ev = DetectionEvaluator(3, iou_thresholds=(0.3, 0.4, 0.5))
    for img in images:
        ev.add(*img)
    out = ev.compute()
    for thr in (0.3, 0.4, 0.5):
        ref_map, ref_aps = _reference_map(images, 3, thr)
        key = int(round(100 * thr))
        assert out[f"map{key}"] == pytest.approx(ref_map, abs=1e-9)
        for c, ap in ref_aps.items():
            assert out[f"ap{key}/{c}"] == pytest.approx(ap, abs=1e-9)
        assert 0 < ref_map < 1  # non-trivial


def test_merge_equals_single_pass():
    rng = np.random.default_rng(1)
    images = []
    for _ in range(6):
        gt = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], float)
        pb = gt[[0, 1, 1]] + rng.normal(0, 2, (3, 4))
        images.append((pb, rng.random(3), [0, 1, 1], gt, [0, 1]))
    whole, a, b = DetectionEvaluator(2), DetectionEvaluator(2), DetectionEvaluator(2)
    for k, img in enumerate(images):
        whole.add(*img)
        (a if k < 3 else b).add(*img)
    a.merge(b)
    assert len(a) == 6 and a.compute() == whole.compute()
