"""Pair-evaluation suite: conditional, simultaneous and contrastive
deletion/insertion, and correspondence PCK on pairs of known geometry.

Each metric is checked against an independent slow reference (Python loops,
numpy, scipy's Gaussian filter) and by properties with known answers.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers import TinyCNN, images
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from captum_sfam import SimilarityTarget
from captum_sfam.methods import LayerDecomposition, supports_contrast
from captum_sfam.metrics import (
    conditional_deletion_insertion,
    contrastive_deletion_insertion,
    correspondence_pck,
    crop_pair,
    deletion_insertion,
    flip_pair,
    known_geometry_pair,
    pair_similarity_fn,
    rescale_pair,
    simultaneous_deletion_insertion,
    true_cells,
)

# ------------------------------------------------------- slow references --


def slow_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian of radius max(1, int(3 sigma)), edge pixels repeated."""
    if sigma <= 0:
        return x.copy()
    radius = max(1, int(3 * sigma))
    return ndimage.gaussian_filter(
        x, sigma=(0, 0, sigma, sigma), mode="nearest", truncate=radius / sigma
    )


def slow_frames(image: np.ndarray, saliency: np.ndarray, steps: int, fill, base):
    """The steps + 1 perturbed copies, pixel by pixel in a Python loop."""
    count, height, width = saliency.shape
    per_step = math.ceil(height * width / steps)
    out = []
    for step in range(steps + 1):
        frame = base.copy()
        for n in range(count):
            flat = saliency[n].reshape(-1)
            order = sorted(range(flat.size), key=lambda p, f=flat: (-f[p], p))
            for p in order[: step * per_step]:
                y, x = divmod(p, width)
                frame[n, :, y, x] = fill[n, :, y, x]
        out.append(frame)
    return out


def slow_pair_curves(score, tracks, steps, substrate, sigma):
    """Deletion and insertion curves; tracks: [(images (N,C,H,W), maps (N,H,W))]."""
    deletion, insertion = [], []
    frames_del, frames_ins = [], []
    for imgs, maps in tracks:
        blurred = slow_blur(imgs, sigma)
        fill = np.zeros_like(imgs) if substrate == "zeros" else blurred
        frames_del.append(slow_frames(imgs, maps, steps, fill, imgs))
        frames_ins.append(slow_frames(imgs, maps, steps, imgs, blurred))
    for step in range(steps + 1):
        deletion.append(score(*[f[step] for f in frames_del]))
        insertion.append(score(*[f[step] for f in frames_ins]))
    deletion, insertion = np.array(deletion), np.array(insertion)
    return {
        "deletion_curve": deletion,
        "insertion_curve": insertion,
        "deletion_auc": np.trapezoid(deletion, dx=1 / steps),
        "insertion_auc": np.trapezoid(insertion, dx=1 / steps),
    }


def dot_score(queries: torch.Tensor, supports: torch.Tensor) -> torch.Tensor:
    """An additive pair score: <q, mean_k S_k> per pair (same image size)."""
    return (queries * supports.mean(dim=1)).flatten(1).sum(dim=1)


def np_dot(q: np.ndarray, s: np.ndarray) -> float:
    return float((q[0] * s.mean(axis=0)).sum())


def pair(seed=0, size=(6, 5), shots=1):
    q = images(3, *size, seed=seed).double()
    s = images(shots, 3, *size, seed=seed + 1).double()
    return q, s


def assert_matches(result, slow):
    for key in ("deletion_curve", "insertion_curve"):
        np.testing.assert_allclose(result[key].numpy(), slow[key], rtol=1e-9, atol=1e-9)
    for key in ("deletion_auc", "insertion_auc"):
        assert result[key] == pytest.approx(slow[key], rel=1e-9, abs=1e-9)


# ------------------------------------------- deletion / insertion family --


@pytest.mark.parametrize("substrate", ["zeros", "blur"])
@pytest.mark.parametrize("steps", [1, 4, 7, 30])
def test_conditional_matches_slow_reference(substrate, steps):
    q, s = pair(seed=steps, shots=2)
    m = images(6, 5, seed=9).round()  # ties resolved by position
    result = conditional_deletion_insertion(
        dot_score,
        q,
        s,
        m,
        steps=steps,
        substrate=substrate,
        blur_sigma=0.8,
        batch_size=3,
    )
    sn = s.numpy()
    slow = slow_pair_curves(
        lambda qf: np_dot(qf, sn),
        [(q[None].numpy(), m[None].double().numpy())],
        steps,
        substrate,
        0.8,
    )
    assert_matches(result, slow)
    # the support is never touched: the last deletion frame scores 0 on zeros
    if substrate == "zeros":
        assert float(result["deletion_curve"][-1]) == 0.0


def test_conditional_equals_rise_with_the_support_bound():
    q, s = pair(seed=3)
    m = images(6, 5, seed=4)
    seen = []

    def score(queries, supports):
        seen.append(supports)
        return dot_score(queries, supports)

    ours = conditional_deletion_insertion(score, q, s[0], m, steps=5)
    rise = deletion_insertion(
        lambda b: dot_score(b, s[None].expand(len(b), -1, -1, -1, -1)), q, m, steps=5
    )
    assert_matches(
        ours, {k: v.numpy() if torch.is_tensor(v) else v for k, v in rise.items()}
    )
    assert all(torch.equal(x, s.expand_as(x)) for x in seen)


@pytest.mark.parametrize("substrate", ["zeros", "blur"])
@pytest.mark.parametrize("shots", [1, 3])
def test_simultaneous_matches_slow_reference(substrate, shots):
    q, s = pair(seed=shots, shots=shots)
    mq = images(6, 5, seed=11)
    ms = images(shots, 6, 5, seed=12)
    result = simultaneous_deletion_insertion(
        dot_score,
        q,
        s,
        mq,
        ms if shots > 1 else ms[0],
        steps=6,
        substrate=substrate,
        blur_sigma=0.7,
        batch_size=4,
    )
    slow = slow_pair_curves(
        np_dot,
        [
            (q[None].numpy(), mq[None].double().numpy()),
            (s.numpy(), ms.double().numpy()),
        ],
        6,
        substrate,
        0.7,
    )
    assert_matches(result, slow)
    if substrate == "zeros":  # both images fully deleted
        assert float(result["deletion_curve"][-1]) == 0.0


def test_simultaneous_perturbs_each_image_by_its_own_map():
    # a score that reads one image only follows that image's map: the best
    # order for it (largest terms first) beats the reversed one, whatever the
    # other image's map is
    q = images(3, 6, 6, seed=2).abs().double()
    s = images(1, 3, 6, 6, seed=3).abs().double()
    m_q, m_s = q.sum(0), s[0].sum(0)
    other = images(6, 6, seed=4)

    def query_only(queries, supports):
        return queries.flatten(1).sum(1)

    def support_only(queries, supports):
        return supports.flatten(1).sum(1)

    for score, good, bad in (
        (query_only, (m_q, other), (-m_q, other)),
        (support_only, (other, m_s), (other, -m_s)),
    ):
        a = simultaneous_deletion_insertion(score, q, s, *good, steps=9)
        b = simultaneous_deletion_insertion(score, q, s, *bad, steps=9)
        assert a["deletion_auc"] < b["deletion_auc"]
        assert a["insertion_auc"] > b["insertion_auc"]


@settings(max_examples=40)
@given(
    seed=st.integers(0, 10_000),
    steps=st.integers(1, 12),
    size=st.tuples(st.integers(1, 5), st.integers(1, 5)),
)
def test_contrastive_map_is_optimal_for_an_additive_margin(seed, steps, size):
    # margin(q) = <q, S> - <q, S'> = sum_p q_p (S_p - S'_p): deleting (zeros)
    # the largest terms first leaves the smallest possible margin at every
    # step, so the contrastive map q (S - S') has the lowest deletion curve
    q = images(2, *size, seed=seed).double()
    s, c = (
        images(2, *size, seed=seed + 1).double(),
        images(2, *size, seed=seed + 2).double(),
    )
    contrastive = (q * (s - c)).sum(0)
    best = contrastive_deletion_insertion(dot_score, q, s, c, contrastive, steps=steps)
    for other in (
        (q * s).sum(0),  # explains S alone
        images(*size, seed=seed + 3),  # random
        -contrastive,  # reversed
    ):
        worse = contrastive_deletion_insertion(dot_score, q, s, c, other, steps=steps)
        assert bool((best["deletion_curve"] <= worse["deletion_curve"] + 1e-9).all())
        assert best["deletion_auc"] <= worse["deletion_auc"] + 1e-9
    start = float(dot_score(q[None], s[None, None]) - dot_score(q[None], c[None, None]))
    assert float(best["deletion_curve"][0]) == pytest.approx(start)


def test_contrastive_matches_slow_reference():
    q, s = pair(seed=5)
    _, c = pair(seed=7, shots=2)
    m = images(6, 5, seed=6)
    result = contrastive_deletion_insertion(
        dot_score, q, s, c, m, steps=4, substrate="blur", blur_sigma=1.0
    )
    sn, cn = s.numpy(), c.numpy()
    slow = slow_pair_curves(
        lambda qf: np_dot(qf, sn) - np_dot(qf, cn),
        [(q[None].numpy(), m[None].double().numpy())],
        4,
        "blur",
        1.0,
    )
    assert_matches(result, slow)


def test_defaults_are_32_steps_to_zeros_and_a_blur_of_sigma_5():
    # what the docstrings promise when only the images and maps are given
    q, s = pair(seed=2, size=(5, 7))  # 35 pixels: 2 per step, the last 1
    _, c = pair(seed=4, size=(5, 7), shots=2)
    mq, ms = images(5, 7, seed=8), images(5, 7, seed=9)
    sn, cn = s.numpy(), c.numpy()
    query = [(q[None].numpy(), mq[None].double().numpy())]

    def slow(score, tracks):
        return slow_pair_curves(score, tracks, 32, "zeros", 5.0)

    alone = slow(lambda qf: np_dot(qf, sn), query)
    assert_matches(conditional_deletion_insertion(dot_score, q, s, mq), alone)
    support = s[None].expand(33, -1, -1, -1, -1)
    rise = deletion_insertion(lambda b: dot_score(b, support[: len(b)]), q, mq)
    assert_matches(rise, alone)
    both = slow(np_dot, query + [(sn, ms[None].double().numpy())])
    assert_matches(simultaneous_deletion_insertion(dot_score, q, s, mq, ms), both)
    margin = slow(lambda qf: np_dot(qf, sn) - np_dot(qf, cn), query)
    assert_matches(contrastive_deletion_insertion(dot_score, q, s, c, mq), margin)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_pair_similarity_fn_is_the_similarity_of_similarity_target(metric):
    model = TinyCNN().eval()
    q, s = images(2, 3, 16, 16), images(3, 3, 16, 16, seed=1)
    score = pair_similarity_fn(model, metric)
    target = SimilarityTarget.from_support(model, s[None], metric=metric)
    expected = target(q)[:, 0].detach()
    torch.testing.assert_close(score(q, s[None].expand(2, -1, -1, -1, -1)), expected)
    # on a real model the curves are finite and start at the pair's similarity
    curves = conditional_deletion_insertion(
        score, q[:1], s, torch.rand(16, 16), steps=4
    )
    assert bool(torch.isfinite(curves["deletion_curve"]).all())
    assert float(curves["deletion_curve"][0]) == pytest.approx(
        float(expected[0]), rel=1e-5
    )
    assert curves["deletion_curve"].dtype == torch.float32


def test_pair_metric_argument_errors():
    q, s = pair()
    m = torch.rand(6, 5)
    with pytest.raises(TypeError, match="pair_score"):
        conditional_deletion_insertion(None, q, s, m)
    with pytest.raises(ValueError, match="query_saliency"):
        conditional_deletion_insertion(dot_score, q, s, torch.rand(5, 6))
    with pytest.raises(ValueError, match="support_saliency"):
        simultaneous_deletion_insertion(dot_score, q, s.expand(2, -1, -1, -1), m, m)
    with pytest.raises(ValueError, match="support "):
        bad = s.clone()
        bad[0, 0, 0, 0] = float("nan")
        conditional_deletion_insertion(dot_score, q, bad, m)
    with pytest.raises(ValueError, match="contrast"):
        contrastive_deletion_insertion(dot_score, q, s, torch.rand(2, 2), m)
    with pytest.raises(ValueError, match="query"):
        conditional_deletion_insertion(dot_score, torch.rand(2, 3, 6, 5), s, m)
    with pytest.raises(ValueError, match="saliency contains NaN"):
        contrastive_deletion_insertion(dot_score, q, s, s, m * float("nan"))
    with pytest.raises(ValueError, match="steps"):
        conditional_deletion_insertion(dot_score, q, s, m, steps=0)
    with pytest.raises(ValueError, match="substrate"):
        conditional_deletion_insertion(dot_score, q, s, m, substrate="noise")
    with pytest.raises(ValueError, match="one score per image"):
        conditional_deletion_insertion(lambda a, b: a.sum(), q, s, m)
    with pytest.raises(ValueError, match="NaN or inf"):
        conditional_deletion_insertion(lambda a, b: a.sum((1, 2, 3)) / 0.0, q, s, m)
    with pytest.raises(ValueError, match="metric"):
        pair_similarity_fn(TinyCNN(), "dot")


# --------------------------------------------------------- known geometry --


def photo(height=12, width=16):
    """Every pixel different: the value tells where it came from."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([y.float(), x.float(), (y * width + x).float()])


def slow_true_cells(transform, image_size, crop, h, w, hs, ws):
    """Pixel-space reference in exact arithmetic: each query cell's centre,
    moved by hand."""
    height, width = image_size
    out = np.full((h, w, 2), -1, dtype=np.int64)
    for i, j in itertools.product(range(h), range(w)):
        py = Fraction(2 * i + 1, 2 * h) * height  # pixels, exact
        px = Fraction(2 * j + 1, 2 * w) * width
        if transform == "flip":
            sy, sx, sh, sw = py, width - px, height, width
        elif transform == "rescale":
            sy, sx, sh, sw = py, px, height, width
        else:
            r0, r1, c0, c1 = crop
            if not (r0 <= py < r1 and c0 <= px < c1):
                continue
            sy, sx, sh, sw = py - r0, px - c0, r1 - r0, c1 - c0
        out[i, j] = (
            min(math.floor(sy / sh * hs), hs - 1),
            min(math.floor(sx / sw * ws), ws - 1),
        )
    return out


@given(
    h=st.integers(1, 9), w=st.integers(1, 9), hs=st.integers(1, 9), ws=st.integers(1, 9)
)
def test_true_cells_match_a_pixel_space_reference(h, w, hs, ws):
    img = photo(12, 16)
    for transform, options, crop in (
        ("flip", {}, None),
        ("rescale", {"scale": 0.5}, None),
        ("crop", {"box": (0.25, 1 / 3, 1.0, 5 / 6)}, (4, 10, 4, 16)),
    ):
        kp = known_geometry_pair(img, transform, **options)
        expected = slow_true_cells(transform, (12, 16), crop, h, w, hs, ws)
        np.testing.assert_array_equal(
            true_cells(kp, (h, w), (hs, ws)).numpy(), expected
        )


def test_flip_true_cells_are_the_mirror_cells():
    cells = true_cells(flip_pair(photo()), (7, 7), (7, 7))
    for i, j in itertools.product(range(7), range(7)):
        assert cells[i, j].tolist() == [i, 6 - j]


@pytest.mark.parametrize("transform", ["flip", "crop"])
def test_true_cells_agree_with_the_pixels_of_the_support(transform):
    # at pixel resolution the true cell of each query pixel holds that pixel
    img = photo(12, 16)
    kp = (
        flip_pair(img)
        if transform == "flip"
        else crop_pair(img, (0.25, 0.5, 0.75, 1.0), size=(6, 8))
    )
    q, s = kp.query[0], kp.support[0]
    cells = true_cells(kp, q.shape[-2:], s.shape[-2:])
    matched = 0
    for i, j in itertools.product(range(12), range(16)):
        y, x = cells[i, j].tolist()
        if y >= 0:
            torch.testing.assert_close(s[:, y, x], q[:, i, j])
            matched += 1
    assert matched == (192 if transform == "flip" else 48)


def test_known_pairs_shapes_and_errors():
    img = photo(12, 16)
    assert rescale_pair(img, 0.5).support.shape == (1, 3, 6, 8)
    assert crop_pair(img).support.shape == (1, 3, 12, 16)
    with pytest.raises(ValueError, match="transform"):
        known_geometry_pair(img, "rotate")
    with pytest.raises(ValueError, match="box"):
        crop_pair(img, (0.5, 0.0, 0.4, 1.0))
    with pytest.raises(ValueError, match="scale"):
        rescale_pair(img, 0.0)
    with pytest.raises(ValueError, match="image"):
        flip_pair(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="query_grid"):
        true_cells(flip_pair(img), (0, 3), (3, 3))


def pil_resize(image, size):
    """Bilinear resampling by Pillow (antialiased when it shrinks), channel by
    channel: (C, H, W) -> (C, H', W')."""
    pil = pytest.importorskip("PIL.Image")
    height, width = size

    def resize(channel):
        grey = pil.fromarray(channel.float().numpy())  # mode "F"
        out = grey.resize((width, height), pil.BILINEAR)
        return torch.tensor(np.array(out))

    return torch.stack([resize(c) for c in image])


def test_known_pair_defaults_and_resampling():
    img = torch.rand(3, 12, 16, generator=torch.Generator().manual_seed(0))
    # crop_pair keeps (0.25, 0.25, 1, 1): rows [3, 12), columns [4, 16)
    kp = crop_pair(img)
    assert kp.affine == pytest.approx((16 / 12, -4 / 12, 12 / 9, -3 / 9))
    torch.testing.assert_close(kp.support[0], pil_resize(img[:, 3:, 4:], (12, 16)))
    small = crop_pair(img, size=(4, 5))  # shrinking the crop: antialiased
    torch.testing.assert_close(small.support[0], pil_resize(img[:, 3:, 4:], (4, 5)))
    # rescale_pair: 0.75 by default, antialiased as it shrinks
    for scale, size in ((None, (9, 12)), (0.5, (6, 8)), (1.5, (18, 24))):
        kp = rescale_pair(img) if scale is None else rescale_pair(img, scale)
        assert kp.affine == (1.0, 0.0, 1.0, 0.0)
        torch.testing.assert_close(kp.support[0], pil_resize(img, size))


# --------------------------------------------------------------------- PCK --


def slow_pck(scores: np.ndarray, truth: np.ndarray, tolerance: int):
    """Per pair: mean over query cells of (correct maxima / maxima)."""
    batch, h, w, shots, hs, ws = scores.shape
    per_pair = []
    for b in range(batch):
        credits = []
        for i, j in itertools.product(range(h), range(w)):
            k0, y0, x0 = truth[b, i, j]
            if min(k0, y0, x0) < 0:
                continue
            row = scores[b, i, j]
            top = row.max()
            maxima = [
                (k, y, x)
                for k, y, x in itertools.product(range(shots), range(hs), range(ws))
                if row[k, y, x] == top
            ]
            hits = sum(
                k == k0 and abs(y - y0) <= tolerance and abs(x - x0) <= tolerance
                for k, y, x in maxima
            )
            credits.append(hits / len(maxima))
        per_pair.append(credits)
    return per_pair


def random_truth(gen, batch, h, w, shots, hs, ws, missing=0.2):
    truth = torch.stack(
        [
            torch.randint(0, shots, (batch, h, w), generator=gen),
            torch.randint(0, hs, (batch, h, w), generator=gen),
            torch.randint(0, ws, (batch, h, w), generator=gen),
        ],
        dim=-1,
    )
    gone = torch.rand(batch, h, w, generator=gen) < missing
    gone[:, 0, 0] = False  # every pair keeps a correspondence
    truth[gone] = -1
    return truth


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tolerance", [0, 1, 2])
def test_pck_matches_slow_reference(seed, tolerance):
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 3, 4, 2, 5, 3)
    scores = torch.randint(0, 4, shape, generator=gen).double()  # many ties
    truth = random_truth(gen, 2, 3, 4, 2, 5, 3)
    slow = slow_pck(scores.numpy(), truth.numpy(), tolerance)
    per_pair = correspondence_pck(scores, truth, tolerance, reduction="none")
    np.testing.assert_allclose(per_pair.numpy(), [np.mean(c) for c in slow], rtol=1e-12)
    pooled = np.mean([x for c in slow for x in c])
    assert correspondence_pck(scores, truth, tolerance) == pytest.approx(
        pooled, rel=1e-12
    )


@given(
    seed=st.integers(0, 10_000),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    hs=st.integers(1, 5),
    ws=st.integers(1, 5),
    shots=st.integers(1, 3),
)
def test_pck_of_the_exact_correspondence_is_one(seed, h, w, hs, ws, shots):
    gen = torch.Generator().manual_seed(seed)
    truth = random_truth(gen, 2, h, w, shots, hs, ws)
    scores = torch.rand(2, h, w, shots, hs, ws, generator=gen) * 0.5
    for b, i, j in itertools.product(range(2), range(h), range(w)):
        k, y, x = truth[b, i, j].tolist()
        if k >= 0:
            scores[b, i, j, k, y, x] = 1.0
    assert correspondence_pck(scores, truth, tolerance=0) == 1.0
    shuffled = torch.rand(2, h, w, shots, hs, ws, generator=gen)
    assert correspondence_pck(shuffled, truth, tolerance=max(hs, ws, 1)) <= 1.0


@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    hs=st.integers(1, 6),
    ws=st.integers(1, 6),
    tolerance=st.integers(0, 3),
    value=st.floats(-5, 5),
)
def test_pck_of_a_constant_map_is_chance(h, w, hs, ws, tolerance, value):
    truth = torch.stack(
        torch.meshgrid(
            torch.arange(h) * hs // h, torch.arange(w) * ws // w, indexing="ij"
        ),
        dim=-1,
    )
    scores = torch.full((h, w, hs, ws), value)
    # chance: the share of support cells within tolerance of the true one
    expected = np.mean(
        [
            sum(
                abs(y - int(truth[i, j, 0])) <= tolerance
                and abs(x - int(truth[i, j, 1])) <= tolerance
                for y in range(hs)
                for x in range(ws)
            )
            / (hs * ws)
            for i in range(h)
            for j in range(w)
        ]
    )
    assert correspondence_pck(scores, truth, tolerance) == pytest.approx(expected)


@given(
    seed=st.integers(0, 10_000), transform=st.sampled_from(["affine", "cube", "exp"])
)
def test_pck_is_invariant_to_increasing_transforms(seed, transform):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(-20, 20, (2, 3, 3, 1, 4, 4), generator=gen).double()
    truth = random_truth(gen, 2, 3, 3, 1, 4, 4)[..., 1:]
    moved = {
        "affine": lambda t: 3 * t + 7,
        "cube": lambda t: t**3,
        "exp": lambda t: torch.exp(t / 10),
    }[transform](scores)
    for tolerance in (0, 1):
        assert correspondence_pck(moved, truth, tolerance) == correspondence_pck(
            scores, truth, tolerance
        )


def test_pck_default_tolerance_is_one_cell():
    truth = torch.tensor([[[1, 1]]])  # one query cell, true support cell (1, 1)
    for peak, at_one_cell in (((1, 2), 1.0), ((0, 0), 1.0), ((1, 3), 0.0)):
        scores = torch.zeros(1, 1, 4, 4)
        scores[(0, 0, *peak)] = 1.0
        assert correspondence_pck(scores, truth) == at_one_cell
        assert correspondence_pck(scores, truth, tolerance=0) == 0.0


def test_pck_argument_errors():
    scores, truth = torch.rand(3, 3, 3, 3), torch.zeros(3, 3, 2, dtype=torch.long)
    assert correspondence_pck(scores, truth, 2) == 1.0  # a 3 x 3 grid, tolerance 2
    with pytest.raises(TypeError, match="scores"):
        correspondence_pck(scores.long(), truth)
    with pytest.raises(ValueError, match="scores"):
        correspondence_pck(scores * float("nan"), truth)
    with pytest.raises(ValueError, match="scores"):
        correspondence_pck(torch.rand(3, 3, 3), truth)
    with pytest.raises(ValueError, match="true_cells"):
        correspondence_pck(scores, truth.float())
    with pytest.raises(ValueError, match="true_cells"):
        correspondence_pck(scores, truth[:2])
    with pytest.raises(ValueError, match="true_cells"):
        correspondence_pck(scores, truth + 3)
    with pytest.raises(ValueError, match="true_cells"):
        correspondence_pck(torch.rand(1, 3, 3, 2, 3, 3), truth[None])
    with pytest.raises(ValueError, match="true_cells"):
        correspondence_pck(scores, truth - 1)  # no correspondence at all
    with pytest.raises(ValueError, match="tolerance"):
        correspondence_pck(scores, truth, -1)
    with pytest.raises(ValueError, match="reduction"):
        correspondence_pck(scores, truth, reduction="sum")


# ------------------------------------------- on a real network and photo --


@pytest.fixture(scope="module")
def lite0():
    from captum_sfam.demo.pretrained import efficientnet_lite0

    return efficientnet_lite0()


@pytest.fixture(scope="module")
def cat():
    from captum_sfam.demo.pretrained import preprocess, sample_images

    return preprocess(sample_images()["cat"])


def test_decomposition_point_to_point_finds_mirror_cells_on_a_photo(lite0, cat):
    kp = flip_pair(cat)
    method = LayerDecomposition(lite0, lite0.bn2)
    scores = method.point_to_point(kp.query, kp.support)  # (1, 7, 7, 1, 7, 7)
    cells = true_cells(kp, scores.shape[1:3], scores.shape[-2:])
    pck = correspondence_pck(scores, cells[None], tolerance=1)
    chance = correspondence_pck(torch.zeros_like(scores), cells[None], tolerance=1)
    # chance on a 7 x 7 grid at one cell: 0.15; the issue measured 0.83 with
    # the dot product of position features
    assert chance == pytest.approx(0.15, abs=0.01) and pck > 0.6


# ------------------------------------------------------------ the bench --


def test_bench_margin_is_contrastive_deletion():
    from captum_sfam.app.bench import margin_fn

    model = TinyCNN().eval()
    q, s, c = images(3, 16, 16), images(3, 16, 16, seed=1), images(3, 16, 16, seed=2)
    m = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    for metric in ("cosine", "euclidean"):
        bench_curves = deletion_insertion(margin_fn(model, s, c, metric), q, m, steps=5)
        ours = contrastive_deletion_insertion(
            pair_similarity_fn(model, metric), q, s, c, m, steps=5
        )
        for key in ("deletion_curve", "insertion_curve"):
            torch.testing.assert_close(bench_curves[key], ours[key])


def test_bench_rows_contrast_and_correspondence():
    from captum_sfam.app import bench
    from captum_sfam.methods import REGISTRY

    model = TinyCNN().eval()
    q, s, c = (
        images(1, 3, 16, 16),
        images(1, 3, 16, 16, seed=1),
        images(1, 3, 16, 16, seed=2),
    )
    box = (0, 0, 8, 16)
    summary = bench.evaluate(
        model, model.features, "cosine", [(q, s, c, box, True)],
        [(q, s, c, box, (8, 0, 16, 16))], steps=4, progress=False, label="t",
        ig_steps=4,
    )  # fmt: skip
    contrast_rows = [n for n in summary if n.endswith(bench.CONTRAST)]
    expected = [
        m.display_name + bench.CONTRAST
        for m in REGISTRY.values()
        if supports_contrast(m.cls(model, model.features))
    ]
    assert set(expected) <= set(contrast_rows)
    for row in summary.values():
        assert row["c_deletion_n"] == 1 and math.isfinite(row["c_deletion"])
        assert row["specificity_n"] == 1
    assert summary["RAM"]["specificity"] == pytest.approx(0.5)

    photo = images(3, 32, 32, seed=3)
    pck = bench.correspondence_setting(model, model.features, [photo])
    assert list(pck)[-1] == "chance" and len(pck) > 1
    kp = flip_pair(photo)
    grid = LayerDecomposition(model, model.features).point_to_point(kp.query, kp.query)
    cells = true_cells(kp, grid.shape[1:3], grid.shape[-2:])[None]
    assert pck["chance"]["flip"] == pytest.approx(
        correspondence_pck(torch.zeros_like(grid), cells)
    )
    for row in pck.values():
        assert 0.0 <= row["pck"] <= 1.0 and row["pck_n"] == 3


def test_docs_pck_example_runs():
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "docs" / "evaluation.md"
    snippet = next(
        b
        for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
        if "correspondence_pck(" in b
    )
    scope: dict = {}
    exec(snippet, scope)  # self-contained: a random ResNet-18 on a 128 px image
    assert scope["cells"].shape == (4, 4, 2)
    pck = scope["correspondence_pck"](scope["scores"], scope["cells"][None])
    assert 0.0 <= float(pck) <= 1.0
