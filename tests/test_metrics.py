"""Evaluation metrics on hand-made maps with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from helpers import TinyCNN, images
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_sfam import LayerSFAM
from captum_sfam.metrics import (
    box_from_map,
    box_iou,
    deletion_insertion,
    localization,
    nearest_neighbours,
    normalize_map,
    pair_specificity,
    pointing_game,
    recall_at_k,
    sanity_check,
    spearman,
)


def blob(h=20, w=20, box=(5, 4, 12, 10), value=1.0):
    m = torch.zeros(h, w)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = value
    return m


def test_box_from_map_finds_the_largest_component():
    m = blob(box=(5, 4, 12, 10))
    m[15:17, 15:17] = 1.0  # a smaller second component
    m[0, 0] = 0.1  # below the 0.2 threshold after normalisation
    assert box_from_map(m) == (5.0, 4.0, 12.0, 10.0)
    assert box_from_map(torch.ones(5, 5)) is None  # nothing stands out


def test_box_iou_known_values():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 2, 2), (3, 3, 4, 4)) == 0.0
    assert box_iou(None, (0, 0, 1, 1)) == 0.0


@given(st.integers(0, 10), st.integers(0, 10), st.integers(1, 9), st.integers(1, 9))
def test_localization_is_perfect_on_box_shaped_maps(x0, y0, w, h):
    box = (x0, y0, x0 + w, y0 + h)
    result = localization([blob(box=box)], [box])
    assert result["mean_iou"] == 1.0 and result["accuracy"] == 1.0


def test_localization_counts_correct_samples_only():
    good, bad_box = (2, 2, 8, 8), (12, 12, 18, 18)
    maps = [blob(box=good), blob(box=good)]
    result = localization(maps, [good, bad_box], correct=[True, False])
    assert result["count"] == 1 and result["accuracy"] == 1.0
    both = localization(maps, [good, bad_box])
    assert both["accuracy"] == 0.5 and both["mean_iou"] == 0.5


def test_pointing_game():
    m = torch.zeros(10, 10)
    m[3, 7] = 1.0  # y = 3, x = 7
    assert pointing_game(m, (6, 2, 8, 4))
    assert not pointing_game(m, (0, 0, 5, 5))
    assert pointing_game(m, (0, 0, 5, 5), tolerance=3)


def test_pair_specificity_known_answers():
    box_a, box_b = (0, 0, 10, 20), (10, 0, 20, 20)
    on_a, on_b = blob(box=box_a), blob(box=box_b)
    perfect = pair_specificity(on_a, on_b, box_a, box_b)
    assert perfect["specificity"] == 1.0 and perfect["shift"] == pytest.approx(1.0)
    agnostic = pair_specificity(on_a + 0.3 * on_b, on_a + 0.3 * on_b, box_a, box_b)
    assert agnostic["specificity"] == pytest.approx(0.5) and agnostic["shift"] == 0.0
    reversed_ = pair_specificity(on_b, on_a, box_a, box_b)
    assert reversed_["specificity"] == 0.0
    # 3/4 of each map's mass on the matching object: specificity 0.75, and
    # half of the mass moves (3/4 - 1/4 on each object) when the support swaps
    partial = pair_specificity(3 * on_a + on_b, on_a + 3 * on_b, box_a, box_b)
    assert partial["share_a"] == partial["share_b"] == 0.75
    assert partial["specificity"] == 0.75
    assert partial["shift"] == pytest.approx(0.5)


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_pair_agnostic_maps_always_score_one_half(a, b):
    box_a, box_b = (0, 0, 10, 20), (10, 0, 20, 20)
    m = a * blob(box=box_a) + b * blob(box=box_b)
    assert pair_specificity(m, m, box_a, box_b)["specificity"] == pytest.approx(0.5)


def test_deletion_insertion_orders_good_and_bad_maps():
    # score = mean of the image inside a region: the right map points there
    region = (slice(None), slice(None), slice(4, 12), slice(4, 12))
    image = torch.zeros(1, 3, 16, 16)
    image[region] = torch.rand(1, 3, 8, 8) + 0.5  # content only in the region

    def score(batch):
        return batch[region].mean(dim=(1, 2, 3))

    good = torch.zeros(16, 16)
    good[4:12, 4:12] = 1.0
    bad = 1.0 - good
    g = deletion_insertion(score, image, good, steps=16)
    b = deletion_insertion(score, image, bad, steps=16)
    assert g["deletion_auc"] < b["deletion_auc"]
    assert g["insertion_auc"] > b["insertion_auc"]
    assert len(g["deletion_curve"]) == 17
    assert float(g["deletion_curve"][-1]) == 0.0  # everything deleted
    torch.testing.assert_close(g["insertion_curve"][-1], score(image)[0])


def test_spearman_and_normalize():
    a = torch.arange(10.0)
    assert spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, torch.ones(10)) == 0.0
    n = normalize_map(torch.tensor([[2.0, 4.0], [6.0, 10.0]]))
    assert float(n.min()) == 0.0 and float(n.max()) == 1.0


def test_sanity_check_cascades_and_leaves_the_model_alone():
    model = TinyCNN().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q, s = images(1, 3, 16, 16), images(1, 3, 16, 16, seed=1)

    def explain(m):
        return LayerSFAM(m, m.features).attribute(q, s)[0, 0]

    rows = sanity_check(model, explain, ["head", "features", "stem"])
    assert [r["layer"] for r in rows] == ["head", "features", "stem"]
    # SFAM reads `features`: randomising the head above it cannot change the map
    assert rows[0]["spearman"] == pytest.approx(1.0)
    assert rows[1]["spearman"] < 0.9
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v)


def test_metric_argument_errors():
    with pytest.raises(ValueError, match="saliency"):
        pointing_game(torch.rand(2, 3, 3), (0, 0, 1, 1))
    with pytest.raises(ValueError, match="same length"):
        localization([torch.rand(4, 4)], [])
    with pytest.raises(ValueError, match="substrate"):
        deletion_insertion(
            lambda b: b.mean((1, 2, 3)),
            torch.rand(3, 4, 4),
            torch.rand(4, 4),
            substrate="noise",
        )
    with pytest.raises(ValueError, match="match"):
        deletion_insertion(
            lambda b: b.mean((1, 2, 3)), torch.rand(3, 4, 4), torch.rand(5, 5)
        )
    assert np.isnan(
        localization([torch.rand(4, 4)], [(0, 0, 1, 1)], [False])["mean_iou"]
    )


# ----------------------------------------------- graded maps and thresholds --
def slow_box(values, threshold=0.2):
    """The protocol's box by hand: min-max normalise, keep the cells at or above
    ``threshold``, flood-fill 8-connected components in raster order, box
    (x0, y0, x1, y1) with x1, y1 excluded of the largest (the first found among
    equals); None for a constant map."""
    flat = [v for row in values for v in row]
    low, high = min(flat), max(flat)
    if high == low:
        return None
    h, w = len(values), len(values[0])
    keep = {
        (y, x)
        for y in range(h)
        for x in range(w)
        if (values[y][x] - low) / (high - low) >= threshold
    }
    seen, best = set(), []
    for start in sorted(keep):
        if start in seen:
            continue
        seen.add(start)
        stack, component = [start], []
        while stack:
            y, x = stack.pop()
            component.append((y, x))
            for dy, dx in itertools.product((-1, 0, 1), repeat=2):
                near = (y + dy, x + dx)
                if near in keep and near not in seen:
                    seen.add(near)
                    stack.append(near)
        if len(component) > len(best):
            best = component
    ys, xs = [p[0] for p in best], [p[1] for p in best]
    return (min(xs), min(ys), max(xs) + 1, max(ys) + 1)


# eighths: every min-max normalised value is exact enough that float32 and the
# reference agree on each side of 0.2 and 0.5 (1/8 over 5/8 is 0.2 itself)
graded_maps = st.integers(2, 7).flatmap(
    lambda h: st.integers(2, 7).flatmap(
        lambda w: st.lists(
            st.lists(st.integers(0, 8), min_size=w, max_size=w),
            min_size=h,
            max_size=h,
        )
    )
)


@settings(max_examples=300)
@given(graded_maps)
def test_box_from_map_equals_the_protocol_by_hand(rows):
    values = [[v / 8 for v in row] for row in rows]
    got = box_from_map(torch.tensor(values))
    assert got == slow_box(values)  # the paper's threshold, 0.2
    assert box_from_map(torch.tensor(values), 0.5) == slow_box(values, 0.5)


def test_box_threshold_on_a_graded_map():
    # a core (1.0) inside a halo (0.3): 0.2 keeps the halo, 0.5 the core only
    m = torch.zeros(20, 20)
    m[6:14, 4:16] = 0.3
    m[8:12, 8:12] = 1.0
    halo, core = (4.0, 6.0, 16.0, 14.0), (8.0, 8.0, 12.0, 12.0)
    assert box_from_map(m) == halo
    assert box_from_map(m, threshold=0.5) == core
    assert localization([m], [halo])["mean_iou"] == 1.0  # default: the paper's
    result = localization([m], [halo], threshold=0.5)
    assert result["mean_iou"] == pytest.approx(16 / 96)
    # a cell exactly at the threshold is kept; one diagonal step joins it
    m[12, 12] = 0.5
    assert box_from_map(m, threshold=0.5) == (8.0, 8.0, 13.0, 13.0)
    m[12, 12] = 0.25  # below 0.5 (and 0.25 >= 0.2: part of the halo)
    assert box_from_map(m, threshold=0.5) == core


def test_box_is_of_the_largest_component_even_when_it_is_found_last():
    m = torch.zeros(12, 12)
    m[0:2, 0:2] = 1.0  # 4 cells, first in raster order
    m[5:10, 4:9] = 0.6  # 25 cells, weaker but larger: the box
    assert box_from_map(m) == (4.0, 5.0, 9.0, 10.0)
    m[5:10, 6] = 0.0  # cut in two 10-cell halves: the first in raster order
    assert box_from_map(m) == (4.0, 5.0, 6.0, 10.0)


def test_box_components_are_8_connected():
    m = torch.zeros(10, 10)
    m[0, 0] = m[1, 1] = m[2, 2] = 1.0  # one component through the corners
    m[6, 6] = m[6, 7] = 1.0  # 2 cells side by side
    assert box_from_map(m) == (0.0, 0.0, 3.0, 3.0)


def test_localization_accuracy_counts_ious_at_or_above_one_half():
    m = blob(box=(0, 0, 10, 10))  # its box is (0, 0, 10, 10)
    boxes = [(0, 0, 7, 10), (0, 0, 5, 10), (0, 0, 3, 10)]  # IoU 0.7, 0.5, 0.3
    result = localization([m] * 3, boxes)
    assert result["ious"] == pytest.approx([0.7, 0.5, 0.3])
    assert result["mean_iou"] == pytest.approx(0.5)
    assert result["accuracy"] == pytest.approx(2 / 3)  # 0.7 and 0.5 hit
    assert localization([m] * 3, boxes, iou_threshold=0.25)["accuracy"] == 1.0
    assert localization([m] * 3, boxes, iou_threshold=0.75)["accuracy"] == 0.0


boxes_on_a_grid = st.tuples(
    st.integers(0, 8), st.integers(0, 8), st.integers(1, 6), st.integers(1, 6)
).map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))


@given(boxes_on_a_grid, boxes_on_a_grid)
def test_box_iou_counts_pixels(a, b):
    def pixels(box):
        x0, y0, x1, y1 = box
        return {(x, y) for x in range(x0, x1) for y in range(y0, y1)}

    pa, pb = pixels(a), pixels(b)
    assert box_iou(a, b) == pytest.approx(len(pa & pb) / len(pa | pb))
    assert box_iou(a, b) == box_iou(b, a)


def test_pointing_game_boxes_are_half_open():
    m = torch.zeros(10, 10)
    m[3, 7] = 1.0  # y = 3, x = 7
    assert pointing_game(m, (7, 3, 8, 4))  # first column and row hold it
    assert not pointing_game(m, (5, 1, 7, 4))  # x1 = 7 is outside
    assert not pointing_game(m, (5, 1, 8, 3))  # y1 = 3 is outside
    assert pointing_game(m, (5, 1, 7, 3), tolerance=1)  # grown by one pixel
    assert pointing_game(m, (9, 5, 12, 8), tolerance=2)  # x0 - 2 = 7, y0 - 2 = 3
    assert not pointing_game(m, (9, 5, 12, 8), tolerance=1.5)


# ------------------------------------------ pair specificity, edge cases --
def test_pair_specificity_without_positive_mass():
    box_a, box_b = (0, 0, 10, 20), (10, 0, 20, 20)
    on_a, nothing = blob(box=box_a), -blob(box=box_b)  # no positive mass
    one = pair_specificity(on_a, nothing, box_a, box_b)
    # no mass in either box: share 1/2; all of one map's mass against none
    assert one == {"specificity": 0.75, "share_a": 1.0, "share_b": 0.5, "shift": 1.0}
    none = pair_specificity(nothing, nothing, box_a, box_b)
    assert none == {"specificity": 0.5, "share_a": 0.5, "share_b": 0.5, "shift": 0.0}


def test_pair_specificity_ignores_negative_values():
    box_a, box_b = (0, 0, 10, 20), (10, 0, 20, 20)
    on_a, on_b = blob(box=box_a), blob(box=box_b)
    signed = pair_specificity(on_a - 2 * on_b, on_b - 3 * on_a, box_a, box_b)
    assert signed == pair_specificity(on_a, on_b, box_a, box_b)
    assert signed["specificity"] == 1.0


def test_pair_specificity_rounds_boxes_to_the_nearest_pixel_edge():
    m = torch.zeros(20, 20)
    m[:, 9] = 1.0  # column 9: inside box_a once x1 = 9.6 rounds to 10
    m[:, 15] = 1.0  # column 15: inside box_b
    box_a, box_b = (0, 0, 9.6, 20), (10.4, 0, 20, 20)
    result = pair_specificity(m, m, box_a, box_b)
    assert result["share_a"] == 0.5 and result["share_b"] == 0.5
    # x0 = 9.4 rounds to 9: column 9 is in both boxes
    both = pair_specificity(m, m, (0, 0, 10, 20), (9.4, 0, 20, 20))
    assert both["share_a"] == pytest.approx(1 / 3)


# ------------------------------------------------- sanity check, contract --
def test_sanity_check_reinitialises_as_documented():
    # each parameter of each named layer in turn: N(0, 1 / fan_in) draws of one
    # generator seeded with `seed`, fan_in the size of one output's weights
    model = TinyCNN().eval()
    states = []

    def explain(m):
        states.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return torch.rand(4, 4)

    layers = ["head", "features.0"]
    for seed in (0, 3):
        states.clear()
        kwargs = {} if seed == 0 else {"seed": seed}  # 0 by default
        sanity_check(model, explain, layers, **kwargs)
        gen = torch.Generator().manual_seed(seed)
        for step, layer in enumerate(layers, start=1):
            for name, p in model.get_submodule(layer).named_parameters():
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                expected = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
                for later in states[step:]:  # cumulative: kept by later steps
                    torch.testing.assert_close(later[f"{layer}.{name}"], expected)
            assert torch.equal(
                states[step - 1][f"{layer}.weight"], states[0][f"{layer}.weight"]
            )


def test_sanity_check_compares_signs_and_magnitudes():
    m = torch.arange(1.0, 17.0).reshape(4, 4)
    maps = iter([m, -m])  # the randomised model flips the map's sign
    rows = sanity_check(TinyCNN(), lambda _: next(maps), ["head"])
    assert rows[0]["spearman"] == pytest.approx(-1.0)
    assert rows[0]["spearman_abs"] == pytest.approx(1.0)


# ------------------------------------------------------------ retrieval ----
def slow_similarity(a, b, metric):
    if metric == "cosine":
        return float(a @ b) / (float(a.norm()) * float(b.norm()))
    return -sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))


def slow_nearest(embeddings, metric, k):
    """Each item's k most similar others, by a Python loop."""
    out = []
    for i, e in enumerate(embeddings):
        scores = [
            (slow_similarity(e, other, metric), j)
            for j, other in enumerate(embeddings)
            if j != i
        ]
        scores.sort(key=lambda t: -t[0])
        out.append([j for _, j in scores[:k]])
    return out


def slow_recall(embeddings, labels, metric, k):
    nearest = slow_nearest(embeddings, metric, k)
    hits = [any(labels[j] == labels[i] for j in row) for i, row in enumerate(nearest)]
    return sum(hits) / len(hits)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("seed", range(3))
def test_retrieval_metrics_match_a_slow_loop(metric, k, seed):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (30,), generator=gen)
    nearest = nearest_neighbours(emb, metric, k)
    assert nearest.tolist() == slow_nearest(emb, metric, k)
    assert recall_at_k(emb, labels, metric, k) == pytest.approx(
        slow_recall(emb, labels.tolist(), metric, k), abs=0
    )


def test_recall_at_k_known_values():
    # two tight clusters (labels 0 and 1) and a stray of label 0 near cluster 1:
    # every cluster point's nearest neighbour shares its label, the stray's
    # does not -> Recall@1 = 4 / 5; its 3 nearest hold one of label 0 -> R@3 = 1
    emb = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [4.0, 4.0]])
    labels = torch.tensor([0, 0, 1, 1, 0])
    assert recall_at_k(emb, labels, "euclidean", k=1) == 4 / 5
    assert recall_at_k(emb, labels, "euclidean", k=3) == 1.0
    assert nearest_neighbours(emb, "euclidean")[:, 0].tolist() == [1, 0, 3, 2, 2]
    # cosine ranks directions: the stray points the way of cluster 1 too
    directions = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    assert recall_at_k(directions, torch.tensor([0, 0, 1, 1]), "cosine") == 1.0
    flipped = torch.tensor([0, 1, 0, 1])
    assert recall_at_k(directions, flipped, "cosine") == 0.0
    assert nearest_neighbours(directions, "cosine")[:, 0].tolist() == [1, 0, 3, 2]


def test_retrieval_metric_errors():
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(torch.rand(3, 2), torch.zeros(3), k=3)
    with pytest.raises(ValueError, match="labels"):
        recall_at_k(torch.rand(3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="embeddings"):
        nearest_neighbours(torch.rand(3))
