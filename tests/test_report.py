"""The audit report of a retrieval run: order, missed true matches, contrastive
maps of wrong matches above a true one, point maps, curves, plots."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution
from helpers import TinyCNN
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_sfam import LayerCGRAM, LayerSFAM
from captum_sfam.retrieval import explain_retrieval
from captum_sfam.retrieval.audit import MISSED_LIMIT
from captum_sfam.retrieval.report.curves import (
    precision_recall,
    recall_at,
    roc_curve,
)
from captum_sfam.retrieval.report.order import badness, worst
from captum_sfam.retrieval.store import write_lines
from captum_sfam.similarity import embed, similarity_matrix

LABELS = ["a", "b", "c"]


def _images(count: int, seed: int, size: int = 24) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=gen)


def _labels(count: int, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [LABELS[i] for i in torch.randint(0, 3, (count,), generator=gen)]


class Data:
    def __init__(self, out, member="sfam", limit=3):
        self.model = TinyCNN().eval()
        self.queries, self.gallery = _images(6, 1), _images(16, 2)
        self.q_labels, self.g_labels = _labels(6, 3), _labels(16, 4)
        self.out = out
        self.run = explain_retrieval(
            self.model, self.model.features, self.queries, self.gallery, out,
            member, k=2, metric="euclidean", batch_size=4, query_labels=self.q_labels,
            gallery_labels=self.g_labels, report_limit=limit,
        )  # fmt: skip
        self.records = list(self.run.records())

    def full_ranking(self):
        """(Q, M) gallery indices by similarity, best first, from a full sort."""
        with torch.no_grad():
            q = embed(self.model, self.queries)
            g = embed(self.model, self.gallery)
        scores = similarity_matrix(q, g, "euclidean")
        return torch.sort(scores, dim=1, descending=True, stable=True).indices

    def true_ranks(self, query: int):
        """Ranks (from 1) and gallery indices of the query's true matches."""
        order = self.full_ranking()[query].tolist()
        label = self.q_labels[query]
        return [(r + 1, g) for r, g in enumerate(order) if self.g_labels[g] == label]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return Data(tmp_path_factory.mktemp("report"))


# ------------------------------------------------------------ the order ---
def _record(query, rank=None, ap=None, sims=(0.9, 0.5), label="a"):
    record = {
        "query": query,
        "neighbours": [
            {"rank": i + 1, "index": i, "similarity": s} for i, s in enumerate(sims)
        ],
        "maps": {"file": "x", "row": 0},
    }
    if label is not None:
        record["label"] = label
        record["relevant"] = 0 if rank is None else 3
        if rank is not None:
            record["first_true"] = {"rank": rank, "index": 0, "similarity": 0.1}
            record["metrics"] = {"recall@1": float(rank == 1), "ap@5": ap}
    return record


def test_worst_first_by_first_true_rank_then_ap_then_margin(tmp_path):
    records = [
        _record(0, rank=1, ap=1.0),
        _record(1, rank=7, ap=0.1),
        _record(2, rank=3, ap=0.5),
        _record(3, rank=3, ap=0.2),
        _record(4, rank=3, ap=0.2, sims=(0.9, 0.85)),  # smaller margin: worse
        _record(5, rank=None),  # no true match in the gallery: last
    ]
    write_lines(tmp_path / "results.jsonl", records)
    kept, total = worst(tmp_path, 10)
    assert total == 6
    assert [r["query"] for r in kept] == [1, 4, 3, 2, 0, 5]
    kept, _ = worst(tmp_path, 3)  # the report limit keeps the worst 3
    assert [r["query"] for r in kept] == [1, 4, 3]


def test_without_labels_smallest_margin_first(tmp_path):
    records = [
        _record(0, sims=(0.9, 0.2), label=None),
        _record(1, sims=(0.9, 0.89), label=None),
        _record(2, sims=(0.9,), label=None),  # one neighbour: no margin, last
        _record(3, sims=(0.5, 0.3), label=None),
    ]
    write_lines(tmp_path / "results.jsonl", records)
    assert [r["query"] for r in worst(tmp_path, 10)[0]] == [1, 3, 0, 2]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 30), st.floats(0, 1), st.floats(0, 1)),
        min_size=1,
        max_size=20,
    )
)
def test_the_order_never_puts_a_better_first_true_rank_first(values):
    records = [
        _record(i, rank=r, ap=a, sims=(1.0, m)) for i, (r, a, m) in enumerate(values)
    ]
    ranks = [r["first_true"]["rank"] for r in sorted(records, key=badness)]
    assert ranks == sorted(ranks, reverse=True)


# --------------------------------------------------- missed true matches ---
def test_first_true_and_missed_matches_equal_a_full_sort(data):
    for record in data.records:
        expected = data.true_ranks(record["query"])
        assert record["relevant"] == len(expected)
        if not expected:
            assert "first_true" not in record
            continue
        first = record["first_true"]
        assert (first["rank"], first["index"]) == expected[0]
        assert first["label"] == record["label"]
        missed = [(m["rank"], m["index"]) for m in record["missed"]]
        assert missed == [t for t in expected if t[0] > 2][:MISSED_LIMIT]


def test_leave_one_out_ranks_skip_the_query_itself(tmp_path):
    """Queries that are gallery items (same ids): the item itself is neither
    a true match nor counted above one."""
    model = TinyCNN().eval()
    gallery, labels = _images(12, 5), _labels(12, 6)
    ids = [f"img{i}" for i in range(12)]
    run = explain_retrieval(
        model, model.features, gallery[:6], gallery, tmp_path, "sfam", k=2,
        metric="euclidean", query_ids=ids[:6], gallery_ids=ids,
        query_labels=labels[:6], gallery_labels=labels, report=False,
    )  # fmt: skip
    with torch.no_grad():
        table = embed(model, gallery)
    scores = similarity_matrix(table[:6], table, "euclidean")
    scores[torch.arange(6), torch.arange(6)] = -torch.inf  # itself, skipped
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    for record in run.records():
        q = record["query"]
        ranked = order[q].tolist()[:-1]  # the last one is the query itself
        expected = [(r + 1, g) for r, g in enumerate(ranked) if labels[g] == labels[q]]
        assert record["relevant"] == len(expected)
        if expected:
            first = record["first_true"]
            assert (first["rank"], first["index"]) == expected[0]
            missed = [(m["rank"], m["index"]) for m in record["missed"]]
            assert missed == [t for t in expected if t[0] > 2]


def test_a_systems_lists_keep_their_ranks(tmp_path):
    """With your system's neighbours, a listed true match keeps its place in
    the list (even when the model ranks it far down); the wrong ones above it
    are contrasted with it."""
    model = TinyCNN().eval()
    queries, gallery = _images(2, 1), _images(8, 2)
    labels = ["a", "a", "b", "b", "b", "b", "b", "b"]
    q_ids, g_ids = ["q0", "q1"], [f"g{i}" for i in range(8)]
    lists = {"q0": ["g2", "g3", "g1"], "q1": ["g0", "g4", "g5"]}
    run = explain_retrieval(
        model, model.features, queries, gallery, tmp_path, "sfam",
        metric="euclidean", query_ids=q_ids, gallery_ids=g_ids,
        query_labels=["a", "b"], gallery_labels=labels, neighbours=lists,
        report=False,
    )  # fmt: skip
    first, second = run.records()
    assert [n["id"] for n in first["neighbours"]] == lists["q0"]
    assert first["first_true"]["rank"] == 3 and first["first_true"]["id"] == "g1"
    assert first["wrong_above_true"]["ranks"] == [1, 2]
    assert [t["id"] for t in first["wrong_above_true"]["true"]] == ["g1", "g1"]
    assert [m["id"] for m in first["missed"]] == ["g0"]  # not listed
    assert first["missed"][0]["rank"] >= 4
    assert second["first_true"]["rank"] == 2  # g4, listed second


def test_report_limit_keeps_the_worst_queries(data):
    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows = []

        def handle_starttag(self, tag, attrs):
            if tag == "tr" and dict(attrs).get("class") == "query":
                self.rows.append(dict(attrs))

    page = Rows()
    page.feed((data.out / "index.html").read_text())
    # independent: the worst 3 by the full sort's first true rank
    ranks = {
        r["query"]: (data.true_ranks(r["query"]) or [(0, 0)])[0][0]
        for r in data.records
    }
    shown = [int(a["data-order"]) for a in page.rows]
    assert len(shown) == 3
    assert sorted(ranks[q] for q in shown) == sorted(ranks.values())[-3:]
    assert [ranks[q] for q in shown] == sorted((ranks[q] for q in shown), reverse=True)
    assert [a["data-worst"] for a in page.rows] == ["0", "1", "2"]


# ------------------------------------------------------- contrastive maps ---
def _check_wrong_contrast(data, method):
    """Each wrong neighbour ranked above a true match: its contrastive map
    against the first true match after it (from a full sort) equals
    ``attribute(query, support=wrong, contrast=true)``; zero elsewhere."""
    checked = 0
    for record in data.records:
        maps = data.run.maps(record)
        q = record["query"]
        truths = data.true_ranks(q)
        expected_pairs = {}
        for n in record["neighbours"]:
            after = [t for t in truths if t[0] > n["rank"]]
            if n["label"] != record["label"] and after:
                expected_pairs[n["rank"]] = after[0]
        wrong = record.get("wrong_above_true")
        if not expected_pairs:
            assert wrong is None
            if "wrong_contrast" in maps:
                assert maps["wrong_contrast"].abs().max() == 0
            continue
        assert wrong["ranks"] == list(expected_pairs) and wrong["maps"] is True
        given = [(t["rank"], t["index"]) for t in wrong["true"]]
        assert given == list(expected_pairs.values())
        for n in record["neighbours"]:
            stored = maps["wrong_contrast"][n["rank"] - 1].float()
            if n["rank"] not in expected_pairs:
                assert stored.abs().max() == 0
                continue
            true = data.gallery[expected_pairs[n["rank"]][1]][None, None]
            expected = method.attribute(
                data.queries[q : q + 1],
                data.gallery[n["index"]][None, None],
                contrast=true,
            )[0, 0]
            scale = float(expected.abs().max()) + 1e-6
            torch.testing.assert_close(stored, expected, rtol=2e-3, atol=2e-3 * scale)
            checked += 1
    assert checked > 0  # the data has wrong matches above true ones


def test_wrong_above_true_gets_the_contrastive_map_of_attribute(data):
    sfam = LayerSFAM(data.model, data.model.features, metric="euclidean")
    _check_wrong_contrast(data, sfam)


def test_gradient_member_contrastive_and_point_maps(tmp_path):
    data = Data(tmp_path, member="cgram")
    cgram = LayerCGRAM(data.model, data.model.features, metric="euclidean")
    _check_wrong_contrast(data, cgram)
    record = data.records[1]  # point maps from their own forward pass
    points = data.run.maps(record)["points"].float()
    q = record["query"]
    for j, n in enumerate(record["neighbours"]):
        direct = cgram.point_to_point(
            data.queries[q : q + 1], data.gallery[n["index"]][None]
        )[0, :, :, 0]
        torch.testing.assert_close(points[j], direct, rtol=1e-3, atol=1e-3)


def test_the_member_object_is_left_as_it_was(tmp_path):
    model = TinyCNN().eval()
    sfam = LayerSFAM(model, model.features, metric="cosine")
    explain_retrieval(
        model, model.features, _images(3, 1), _images(5, 2), tmp_path, sfam, k=2,
        report=False,
    )  # fmt: skip
    assert "_features" not in vars(sfam)


def test_members_without_contrast_say_so(tmp_path):
    data = Data(tmp_path, member="gradfam")
    wrong = [r["wrong_above_true"] for r in data.records if "wrong_above_true" in r]
    assert wrong and all("maps" not in w and "support" in w["refusal"] for w in wrong)
    assert "no contrastive map" in (tmp_path / "index.html").read_text()
    assert "wrong_contrast" not in data.run.maps(data.records[0])


# ------------------------------------------------------------ point maps ---
def test_point_maps_are_float16_and_equal_point_map(data):
    sfam = LayerSFAM(data.model, data.model.features, metric="euclidean")
    record = data.records[0]
    maps = data.run.maps(record)
    points = maps["points"]
    assert points.dtype == torch.float16
    q = record["query"]
    query = data.queries[q : q + 1]
    for j, n in enumerate(record["neighbours"]):
        neighbour = data.gallery[n["index"]][None]
        direct = sfam.point_to_point(query, neighbour)[0, :, :, 0]
        assert points[j].shape == direct.shape
        torch.testing.assert_close(points[j].float(), direct, rtol=1e-3, atol=1e-3)
        # the viewer's reading: one query point's map on the neighbour
        h, w = direct.shape[:2]
        size = query.shape[-2:]
        for a, b in [(0, 0), (h - 1, w // 2)]:
            point = ((a + 0.5) * size[0] / h, (b + 0.5) * size[1] / w)
            expected = sfam.point_map(query, neighbour, point)[0, 0]
            drawn = LayerAttribution.interpolate(
                points[j, a, b][None, None].float(), tuple(size), "bilinear"
            )[0]
            torch.testing.assert_close(drawn, expected, rtol=1e-3, atol=1e-3)
    # the page's pair file holds the same scores
    text = (data.out / "pairs").glob("*.js").__next__().read_text()
    assert text.startswith("sfamPair(")
    payload = json.loads(text[text.index("{") : text.rindex("}") + 1])
    identifier = text[len("sfamPair(") :].split(",")[0].strip('"')
    q, rank = int(identifier[1:7]), int(identifier[-2:])
    record = next(r for r in data.records if r["query"] == q)
    scores = data.run.maps(record)["points"][rank - 1].float().numpy()
    levels = np.frombuffer(base64.b64decode(payload["u8"]), dtype=np.uint8)
    decoded = payload["low"] + (payload["high"] - payload["low"]) * levels / 255
    assert (payload["h"], payload["w"], payload["h2"], payload["w2"]) == scores.shape
    span = scores.max() - scores.min()
    np.testing.assert_allclose(decoded, scores.ravel(), atol=span / 510 + 1e-6)


# ------------------------------------------------------------ the curves ---
def _slow_roc(scores, positive, weights):
    """Threshold by threshold, from above every score down."""
    fpr, tpr = [0.0], [0.0]
    pos_total, neg_total = weights[positive].sum(), weights[~positive].sum()
    for t in sorted(set(scores.tolist()), reverse=True):
        kept = scores >= t
        tpr.append(weights[kept & positive].sum() / pos_total)
        fpr.append(weights[kept & ~positive].sum() / neg_total)
    return np.array(fpr), np.array(tpr)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.booleans(), st.floats(0.1, 5)),
        min_size=2,
        max_size=30,
    ).filter(lambda v: any(p for _, p, _ in v) and not all(p for _, p, _ in v))
)
def test_roc_and_precision_recall_equal_a_threshold_loop(values):
    scores = np.array([s / 6 for s, _, _ in values])  # ties on purpose
    positive = np.array([p for _, p, _ in values])
    weights = np.array([w for _, _, w in values])
    fpr, tpr = roc_curve(scores, positive, weights)
    slow_fpr, slow_tpr = _slow_roc(scores, positive, weights)
    np.testing.assert_allclose(fpr, slow_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, slow_tpr, atol=1e-12)
    recall, precision = precision_recall(scores, positive, weights)
    for t, r, p in zip(sorted(set(scores.tolist()), reverse=True), recall, precision):
        kept = scores >= t
        tp, fp = weights[kept & positive].sum(), weights[kept & ~positive].sum()
        assert r == pytest.approx(tp / weights[positive].sum())
        assert p == pytest.approx(tp / (tp + fp))


def test_recall_at_r_counts_first_true_ranks():
    ranks = np.array([1, 3, 3, 8])
    np.testing.assert_allclose(recall_at(ranks, 4), [0.25, 0.25, 0.75, 0.75])


def test_curve_samples_are_weighted_and_bounded(data, monkeypatch):
    from captum_sfam.retrieval.report import curves

    rows = {}
    for record in data.records:
        if record.get("relevant"):
            where = record["maps"]
            rows.setdefault(where["file"], []).append(
                (where["row"], record["relevant"])
            )
    samples = curves.read_samples(data.out, rows, len(data.gallery))
    # each query's true samples stand for its R true pairs, its false ones
    # for its M - R false pairs
    total = sum(w.sum() for w, p in zip(samples.weights, samples.positive) if p[0])
    assert total == pytest.approx(sum(r["relevant"] for r in data.records))
    monkeypatch.setattr(curves, "MAX_CURVE_QUERIES", 2)
    few = curves.read_samples(data.out, rows, len(data.gallery))
    assert sum(1 for p in few.positive if p[0]) <= 2


def test_summary_plots_exist(data):
    page = (data.out / "index.html").read_text()
    for name in ("recall", "roc", "pr", "similarities"):
        path = data.out / "plots" / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 1000
        assert f'src="plots/{name}.png"' in page
    assert "ROC AUC (all pairs)" in page and "recall@1" in page
