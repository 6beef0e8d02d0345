"""explain_retrieval: pair maps, on-disk format, resume, report, CLI (the exact
search: tests/test_retrieval_topk.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyCNN
from PIL import Image
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset

from captum_sfam import LayerCGRAM, LayerRAM, LayerSFAM
from captum_sfam.methods import REGISTRY
from captum_sfam.metrics import recall_at_k
from captum_sfam.retrieval import (
    MAP_DTYPE,
    average_precision_at_k,
    explain_retrieval,
    load_maps,
    mean_retrieval_metrics,
    read_results,
    supports_contrast,
)
from captum_sfam.retrieval.report.order import badness
from captum_sfam.similarity import embed, similarity_matrix


def images(count: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(
        count, 3, size, size, generator=torch.Generator().manual_seed(seed)
    )


class CountingTiny(TinyCNN):
    """TinyCNN recording the batch size of every forward pass."""

    def __init__(self) -> None:
        super().__init__(channels=6, embed=5)
        self.batches: list = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return super().forward(x)


@pytest.fixture
def model():
    return CountingTiny().eval()


# ----------------------------------------------------------- a run ---------
def test_run_writes_neighbours_and_the_pair_maps_of_attribute(model, tmp_path):
    queries, gallery = images(7, 0), images(20, 1)
    k, batch = 3, 4
    run = explain_retrieval(
        model, model.features, queries, gallery, tmp_path, "sfam", k=k,
        metric="euclidean", batch_size=batch, report=False,
    )  # fmt: skip
    records = list(read_results(tmp_path))
    assert [r["query"] for r in records] == list(range(7))
    assert run.pairs_explained == 7 * k
    # memory bounded by the batch: no forward pass sees more than batch_size
    # images although the gallery has 20
    assert max(model.batches) <= batch
    q_emb, g_emb = embed(model, queries), embed(model, gallery)
    full = similarity_matrix(q_emb, g_emb, "euclidean")
    expected = torch.sort(full, dim=1, descending=True, stable=True)
    sfam = LayerSFAM(model, model.features, metric="euclidean")
    for record in records:
        q = record["query"]
        neighbours = record["neighbours"]
        assert [n["rank"] for n in neighbours] == [1, 2, 3]
        assert [n["index"] for n in neighbours] == expected.indices[q, :k].tolist()
        sims = torch.tensor([n["similarity"] for n in neighbours])
        torch.testing.assert_close(sims, expected.values[q, :k], rtol=1e-5, atol=1e-5)
        maps = load_maps(tmp_path, record)
        assert maps["query"].dtype == MAP_DTYPE and maps["query"].shape == (k, 8, 8)
        assert maps["neighbours"].shape == (k, 8, 8) and "contrast" not in maps
        for j, n in enumerate(neighbours):
            q_map, g_map = sfam.attribute(
                queries[q : q + 1], gallery[n["index"]][None],
                return_support_attributions=True,
            )  # fmt: skip
            torch.testing.assert_close(
                maps["query"][j].float(), q_map[0, 0], rtol=2e-3, atol=2e-3
            )
            torch.testing.assert_close(
                maps["neighbours"][j].float(), g_map[0, 0, 0], rtol=2e-3, atol=2e-3
            )
    with safe_open(str(tmp_path / "gallery_embeddings.safetensors"), "pt") as handle:
        torch.testing.assert_close(handle.get_tensor("embeddings"), g_emb)
    # no pickle anywhere in the output
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), path


def test_gradient_member_maps_equal_one_pair_at_a_time(model, tmp_path):
    queries, gallery = images(3, 2), images(6, 3)
    cgram = LayerCGRAM(model, model.features, metric="cosine")
    explain_retrieval(
        model, model.features, queries, gallery, tmp_path, cgram, k=2,
        batch_size=2, report=False,
    )  # fmt: skip
    for record in read_results(tmp_path):
        maps = load_maps(tmp_path, record, dtype=torch.float32)
        q = record["query"]
        for j, n in enumerate(record["neighbours"]):
            q_map, g_map = cgram.attribute(
                queries[q : q + 1], gallery[n["index"]][None, None],
                return_support_attributions=True,
            )  # fmt: skip
            torch.testing.assert_close(
                maps["query"][j], q_map[0, 0], rtol=2e-3, atol=2e-3
            )
            torch.testing.assert_close(
                maps["neighbours"][j], g_map[0, 0, 0], rtol=2e-3, atol=2e-3
            )


class Labelled(Dataset):
    """(image, label) items, the labels also as an attribute, paths as ids."""

    def __init__(self, tensor, labels, prefix):
        self.tensor, self.labels = tensor, labels
        self.paths = [f"{prefix}/{i}.png" for i in range(len(tensor))]

    def __len__(self):
        return len(self.tensor)

    def __getitem__(self, i):
        return self.tensor[i], self.labels[i]


def test_leave_one_out_metrics_agree_with_recall_at_k(model, tmp_path):
    data = images(12, 4)
    labels = [i % 3 for i in range(12)]
    both = Labelled(data, torch.tensor(labels), "set")  # tensor labels: plain in JSON
    # the same dataset as queries and gallery: each query skips itself (same id)
    run = explain_retrieval(
        model, model.features, DataLoader(both, batch_size=5), both, tmp_path,
        "ram", k=5, metric="cosine", report=False,
    )  # fmt: skip
    records = list(read_results(tmp_path))
    assert all(r["id"] != n["id"] for r in records for n in r["neighbours"])
    assert records[0]["id"] == "set/0.png" and records[0]["label"] == 0
    emb = embed(model, data)
    target = torch.tensor(labels)
    assert run.metrics["recall@1"] == pytest.approx(
        recall_at_k(emb, target, "cosine", 1)
    )
    assert run.metrics["recall@5"] == pytest.approx(
        recall_at_k(emb, target, "cosine", 5)
    )
    ranked = [[n["label"] for n in r["neighbours"]] for r in records]
    means = mean_retrieval_metrics(ranked, labels, labels)
    # each label has 4 items, 3 relevant once the query itself is left out;
    # mean_retrieval_metrics counts 4, the run 3: recompute with 3
    hits = [[lab == r["label"] for lab in row] for r, row in zip(records, ranked)]
    ap = np.mean([average_precision_at_k(h, 3, 5) for h in hits])
    assert run.metrics["map@5"] == pytest.approx(ap)
    assert means["recall@1"] == pytest.approx(run.metrics["recall@1"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics"] == run.metrics


def test_average_precision_by_hand():
    assert average_precision_at_k([True, False, True], 2, 3) == pytest.approx(
        (1 + 2 / 3) / 2
    )
    assert average_precision_at_k([False, True], 5, 2) == pytest.approx(0.5 / 2)
    assert average_precision_at_k([False, False], 1, 2) == 0.0


def test_run_means_are_mean_retrieval_metrics_of_its_ranked_lists(model, tmp_path):
    """Without exclusion, the run's means are mean_retrieval_metrics of the
    written lists (k >= 5: the search and the lines hold the same k), over
    the queries whose label the gallery has."""
    q_labels = ["a", "b", "a", "z", "b", "a", "z"]  # "z": no relevant item
    g_labels = ["a", "b", "c"] * 4
    run = explain_retrieval(
        model, model.features, images(7, 11), images(12, 12), tmp_path, "ram",
        k=6, batch_size=3, query_labels=q_labels, gallery_labels=g_labels,
        report=False,
    )  # fmt: skip
    records = list(read_results(tmp_path))
    ranked = [[n["label"] for n in r["neighbours"]] for r in records]
    expected = mean_retrieval_metrics(ranked, q_labels, g_labels)
    assert set(expected) == {"recall@1", "recall@5", "map@6"}
    assert run.metrics == {**expected, "queries_with_relevant": 5}
    per_query = [r["metrics"] for r in records if r["label"] != "z"]
    assert run.metrics["map@6"] == pytest.approx(
        np.mean([m["ap@6"] for m in per_query])
    )
    assert [r["relevant"] for r in records if r["label"] == "z"] == [0, 0]


def test_retrieval_imports_no_demo_or_app():
    """The floors: retrieval sits on the core, images, metrics and
    visualization, never on captum_sfam.demo or captum_sfam.app."""
    code = (
        "import sys, captum_sfam.retrieval\n"
        "bad = [m for m in sys.modules if m.startswith(('captum_sfam.demo', "
        "'captum_sfam.app'))]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rerun_resumes_after_the_finished_batches(model, tmp_path):
    queries, gallery = images(9, 5), images(11, 6)
    args = (model, model.features, queries, gallery, tmp_path, "sfam")
    explain_retrieval(*args, k=2, batch_size=3, report=False)
    before = (tmp_path / "results.jsonl").read_text()
    shard = load_maps(tmp_path, list(read_results(tmp_path))[4])  # batch 1
    # an interrupted run: batch 1 never finished, nothing merged yet
    (tmp_path / "parts/batch-000001.jsonl").unlink()
    (tmp_path / "maps/batch-000001.safetensors").unlink()
    (tmp_path / "results.jsonl").unlink()
    model.batches.clear()
    run = explain_retrieval(*args, k=2, batch_size=3, report=False)
    assert (tmp_path / "results.jsonl").read_text() == before
    again = load_maps(tmp_path, list(read_results(tmp_path))[4])
    assert all(torch.equal(shard[key], again[key]) for key in shard)
    # gallery embeddings read from disk; only batch 1's queries embedded
    # (3 images) and explained (3 queries + their neighbours, one pass for the
    # maps and one up to the layer for the point maps of .maps.point_maps)
    assert run.pairs_explained == 3 * 2
    # (a full run would embed the 11 gallery images first: 17 images or more)
    assert model.batches[0] == 3 and sum(model.batches) <= 3 + 2 * (3 + 3 * 2)
    # other settings in the same directory: refused, unless resume=False
    with pytest.raises(ValueError, match="other settings.*k"):
        explain_retrieval(*args, k=3, batch_size=3, report=False)
    explain_retrieval(*args, k=3, batch_size=3, report=False, resume=False)
    assert len(next(read_results(tmp_path))["neighbours"]) == 3


def test_arguments_are_checked(model, tmp_path):
    q, g = images(2, 0), images(3, 1)
    with pytest.raises(ValueError, match="gallery has 3"):
        explain_retrieval(model, model.features, q, g, tmp_path, k=4)
    with pytest.raises(ValueError, match="member must be"):
        explain_retrieval(model, model.features, q, g, tmp_path, "nope", k=2)
    with pytest.raises(TypeError, match="queries must"):
        explain_retrieval(model, model.features, [1, 2], g, tmp_path, k=2)
    with pytest.raises(ValueError, match="1 ids for 2 items"):
        explain_retrieval(model, model.features, q, g, tmp_path, k=2, query_ids=["a"])
    sfam = LayerSFAM(model, model.features, metric="cosine")
    with pytest.raises(ValueError, match="differs"):
        explain_retrieval(
            model, model.features, q, g, tmp_path, sfam, k=2, metric="euclidean"
        )


@pytest.mark.parametrize("member", ["ram", "gradfam"])
def test_contrast_refused_by_members_whose_maps_ignore_the_support(
    model, tmp_path, member
):
    """RAM "self" (the registry's default) and Grad-FAM would give all-zero or
    unchanged contrast maps: the run refuses before any work."""
    assert not supports_contrast(REGISTRY[member].cls(model, model.features))
    with pytest.raises(ValueError, match="no contrastive map"):
        explain_retrieval(
            model, model.features, images(2, 7), images(4, 8), tmp_path, member,
            k=2, contrast=True,
        )  # fmt: skip
    assert not list(tmp_path.iterdir())
    ram_other = LayerRAM(model, model.features, weighting="other")
    assert supports_contrast(ram_other) and supports_contrast(LayerSFAM)


def test_contrast_maps_are_rank_one_against_rank_two(model, tmp_path):
    queries, gallery = images(3, 7), images(8, 8)
    run = explain_retrieval(
        model, model.features, queries, gallery, tmp_path, "sfam", k=2,
        batch_size=2, contrast=True, report=True,
    )  # fmt: skip
    page = _Page()
    page.feed(run.report.read_text())
    contrast = [a for _, a in page.images if a["class"] == "contrast-map"]
    assert len(contrast) == 3 and all((tmp_path / a["src"]).is_file() for a in contrast)
    sfam = LayerSFAM(model, model.features, metric="cosine")
    for record in run.records():
        maps = run.maps(record)
        first, second = (gallery[n["index"]][None, None] for n in record["neighbours"])
        q = record["query"]
        expected = sfam.attribute(queries[q : q + 1], first, contrast=second)
        torch.testing.assert_close(
            maps["contrast"].float(), expected[0, 0], rtol=2e-3, atol=2e-3
        )


# ----------------------------------------------------------- report --------
class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.cells, self.images, self.stack = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and attrs.get("class") == "query":
            self.rows.append(attrs["id"])
        if tag == "td" and self.rows:
            self.cells.append((self.rows[-1], attrs.get("class", "")))
        if tag == "img":
            self.images.append((self.rows[-1] if self.rows else None, attrs))


def test_report_renders_ranked_lists_with_maps(model, tmp_path):
    queries, gallery = images(5, 9, size=24), images(9, 10, size=24)
    labels = ["a", "b", "c"]
    run = explain_retrieval(
        model, model.features, queries, gallery, tmp_path, "sfam", k=3,
        batch_size=2, query_labels=[labels[i % 3] for i in range(5)],
        gallery_labels=[labels[i % 3] for i in range(9)], report_limit=4,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    )  # fmt: skip
    assert run.report == tmp_path / "index.html"
    page = _Page()
    page.feed(run.report.read_text())
    page.close()
    # report_limit keeps the 4 worst (tests/test_report.py checks the order)
    records = sorted(run.records(), key=badness)
    assert page.rows == [f"q{r['query']:06d}" for r in records[:4]]
    for row in page.rows:
        imgs = [a for r, a in page.images if r == row]
        kinds = ("query", "neighbour-map", "query-map")
        imgs = [a for a in imgs if a["class"] in kinds]
        assert len(imgs) == 1 + 2 * 3  # the query, then neighbour + query maps
        assert [a["class"] for a in imgs[1:3]] == ["neighbour-map", "query-map"]
        for attrs in imgs:
            path = tmp_path / attrs["src"]
            assert path.is_file() and not Path(attrs["src"]).is_absolute()
            with Image.open(path) as picture:
                assert picture.format == "PNG" and picture.size == (128, 128)
        verdicts = [c for r, c in page.cells if r == row][1:4]  # then missed ones
        assert all(c in ("neighbour hit", "neighbour miss") for c in verdicts)
    # the map is drawn: a neighbour's thumbnail differs from the bare picture
    record = next(run.records())
    with Image.open(tmp_path / "thumbs/q000000-r01-query.png") as drawn:
        with Image.open(tmp_path / "thumbs/q000000.png") as bare:
            assert np.abs(np.asarray(drawn, float) - np.asarray(bare, float)).mean() > 5
    assert record["neighbours"][0]["rank"] == 1


def test_report_draws_images_with_the_package_display(model, tmp_path):
    """Thumbnails go through captum_sfam.images.to_display: an image in
    [0, 1] is shown as it is; images outside [0, 1] (normalised, no mean/std
    given) are min-max scaled with one warning for the whole report."""
    queries, gallery = images(3, 13), images(6, 14) * 4 - 2
    queries[0] = 0.25  # a flat grey query: not stretched to black or white
    with pytest.warns(UserWarning) as caught:
        explain_retrieval(
            model, model.features, queries, gallery, tmp_path, "sfam", k=2,
            batch_size=2,
        )  # fmt: skip
    scaled = [w for w in caught if "min-max" in str(w.message)]
    assert len(scaled) == 1 and "mean=" in str(scaled[0].message)
    with Image.open(tmp_path / "thumbs/q000000.png") as bare:
        assert np.unique(np.asarray(bare)).tolist() == [64]  # 0.25 * 255
    with Image.open(tmp_path / "thumbs/q000000-r01-neighbour.png") as drawn:
        assert np.asarray(drawn).std() > 10
