"""Evaluation metrics on hand-made maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyCNN, images
from hypothesis import given
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
