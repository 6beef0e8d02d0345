"""Your system's neighbours (JSON lines, CSV, Python) and the FAISS search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TinyCNN
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Dataset

from captum_sfam import LayerSFAM
from captum_sfam.retrieval import (
    ImageSource,
    explain_retrieval,
    load_maps,
    read_results,
)
from captum_sfam.retrieval.neighbours import read_neighbours
from captum_sfam.retrieval.search import model_ranks
from captum_sfam.similarity import embed, similarity_matrix

TESTS = Path(__file__).parent


class Named(Dataset):
    """Images with file-like ids (``paths``) and labels."""

    def __init__(self, images, prefix, labels):
        self.images, self.labels = images, labels
        self.paths = [
            f"/data/{prefix}/{labels[i]}/{i:02d}.png" for i in range(len(images))
        ]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    labels_q, labels_g = ["a", "b", "a", "c", "b"], ["a", "b", "c"] * 4
    queries = Named(torch.rand(5, 3, 16, 16, generator=gen), "queries", labels_q)
    gallery = Named(torch.rand(12, 3, 16, 16, generator=gen), "gallery", labels_g)
    return queries, gallery


@pytest.fixture
def model():
    return TinyCNN(channels=6, embed=5).eval()


def _lists(gallery_size=12, k=3, queries=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randperm(gallery_size, generator=gen)[:k].tolist() for _ in range(queries)
    ]


def _short(dataset, index):
    """An id as a system would log it: the path's last two parts."""
    return "/".join(dataset.paths[index].split("/")[-2:])


def test_json_lines_are_explained_exactly_in_the_given_order(data, model, tmp_path):
    queries, gallery = data
    lists = _lists()
    file = tmp_path / "system.jsonl"
    with open(file, "w") as handle:
        for q in [3, 0, 4, 1, 2]:  # any line order
            scores = [0.9 - 0.1 * r for r in range(3)]
            names = [_short(gallery, g) for g in lists[q]]
            line = {"query": _short(queries, q), "neighbours": names, "scores": scores}
            handle.write(json.dumps(line) + "\n")
    out = tmp_path / "run"
    run = explain_retrieval(
        model, model.features, queries, gallery, out, "sfam", neighbours=file,
        batch_size=2, report=False,
    )  # fmt: skip
    assert run.k == 3 and run.pairs_explained == 15
    full = similarity_matrix(
        embed(model, queries.images), embed(model, gallery.images), "cosine"
    )
    sfam = LayerSFAM(model, model.features, metric="cosine")
    for record in read_results(out):
        q = record["query"]
        items = record["neighbours"]
        assert [n["index"] for n in items] == lists[q]  # the system's order
        assert [n["rank"] for n in items] == [1, 2, 3]
        assert [n["system_score"] for n in items] == pytest.approx([0.9, 0.8, 0.7])
        ours = torch.tensor([n["similarity"] for n in items])
        torch.testing.assert_close(ours, full[q, lists[q]], rtol=1e-5, atol=1e-5)
        # model_rank: each pair's place among the listed ones by our similarity
        expected = torch.sort(ours, descending=True, stable=True).indices
        assert [items[int(i)]["model_rank"] for i in expected] == [1, 2, 3]
        maps = load_maps(out, record)
        for j, g in enumerate(lists[q]):
            q_map, g_map = sfam.attribute(
                queries.images[q : q + 1], gallery.images[g][None],
                return_support_attributions=True,
            )  # fmt: skip
            torch.testing.assert_close(
                maps["query"][j].float(), q_map[0, 0], rtol=2e-3, atol=2e-3
            )
            torch.testing.assert_close(
                maps["neighbours"][j].float(), g_map[0, 0, 0], rtol=2e-3, atol=2e-3
            )
        # labels still give metrics, over the system's list
        hits = [gallery.labels[g] == record["label"] for g in lists[q]]
        assert record["metrics"]["recall@1"] == float(hits[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["neighbours"] == "system" and summary["neighbours_file"] == str(file)
    assert summary["system_scores"] is True


def test_csv_rows_in_any_order_give_the_same_pairs(data, model, tmp_path):
    queries, gallery = data
    lists = _lists(seed=2)
    rows = [
        f"{queries.paths[q]},{_short(gallery, g)},{r + 1}"
        for q in range(5)
        for r, g in enumerate(lists[q])
    ]
    file = tmp_path / "system.csv"
    file.write_text("query,neighbour,rank\n" + "\n".join(reversed(rows)) + "\n")
    out = tmp_path / "run"
    explain_retrieval(
        model, model.features, queries, gallery, out, "sfam", neighbours=file,
        k=3, batch_size=4, report=False,
    )  # fmt: skip
    for record in read_results(out):
        assert [n["index"] for n in record["neighbours"]] == lists[record["query"]]
        assert all("system_score" not in n for n in record["neighbours"])
    # in Python: a mapping of query id -> neighbour ids
    mapping = {queries.paths[q]: [gallery.paths[g] for g in lists[q]] for q in range(5)}
    again = explain_retrieval(
        model, model.features, queries, gallery, tmp_path / "again", "sfam",
        neighbours=mapping, batch_size=4, report=False,
    )  # fmt: skip
    assert [r["neighbours"] for r in again.records()] == [
        r["neighbours"] for r in read_results(out)
    ]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"query": "a/00.png", "neighbours": ["a/00.png", "nope.png"]}'],
         r"system.jsonl, line 1: unknown gallery id 'nope.png'"),
        (["", '{"query": "z/00.png", "neighbours": ["a/00.png"]}'],
         r"system.jsonl, line 2: unknown queries id 'z/00.png'"),
        (['{"query": "a/00.png", "neighbours": ["a/00.png", "b/01.png"]}',
          '{"query": "b/01.png", "neighbours": ["a/00.png"]}'],
         r"line 2: 1 neighbours, the lists before have 2"),
        (['{"query": "a/00.png", "neighbours": ["a/00.png"]}',
          '{"query": "queries/a/00.png", "neighbours": ["b/01.png"]}'],
         r"line 2: query 'queries/a/00.png' is listed again \(first at .*line 1\)"),
        (['{"query": "a/00.png", "neighbours": ["a/00.png"]}'],
         r"no neighbours for 4 of the 5 queries \(first: '/data/queries/b/01.png'\)"),
        (['{"query": "a/00.png", "neighbours": ["00.png"]}'],
         r"line 1: gallery id '00.png' matches several items"),
        (['{"query": "a/00.png", "neighbours": ["a/00.png", "a/00.png"]}'],
         r"line 1: a neighbour appears twice"),
        (['{"query": "a/00.png", "neighbours": ["a/00.png"'],
         r"line 1: not a JSON line"),
    ],
)  # fmt: skip
def test_bad_lists_are_errors_naming_the_file_and_line(
    data, model, tmp_path, lines, message
):
    queries, gallery = data
    gallery.paths[0] = "/data/gallery/a/00.png"
    gallery.paths[3] = "/data/other/00.png"  # "00.png" is now ambiguous
    file = tmp_path / "system.jsonl"
    file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        explain_retrieval(
            model, model.features, queries, gallery, tmp_path / "run", "sfam",
            neighbours=file, report=False,
        )  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_k_must_agree_with_the_lists(data, model, tmp_path):
    queries, gallery = data
    mapping = {q: gallery.paths[:2] for q in queries.paths}
    with pytest.raises(ValueError, match="k = 3 but neighbours= lists 2"):
        explain_retrieval(
            model, model.features, queries, gallery, tmp_path, neighbours=mapping, k=3
        )


def test_faiss_search_measures_its_recall_against_exact_search(model, tmp_path):
    pytest.importorskip("faiss")
    gen = torch.Generator().manual_seed(3)
    queries, gallery = (
        torch.rand(40, 3, 16, 16, generator=gen),
        torch.rand(300, 3, 16, 16, generator=gen),
    )
    out = tmp_path / "faiss"
    run = explain_retrieval(
        model, model.features, queries, gallery, out, "sfam", k=4,
        batch_size=16, report=False, search="faiss",
    )  # fmt: skip
    exact = explain_retrieval(
        model, model.features, queries, gallery, tmp_path / "exact", "sfam", k=4,
        batch_size=16, report=False,
    )  # fmt: skip
    found = [[n["index"] for n in r["neighbours"]] for r in run.records()]
    truth = [[n["index"] for n in r["neighbours"]] for r in exact.records()]
    recall = sum(len(set(f) & set(t)) for f, t in zip(found, truth)) / (40 * 4)
    summary = json.loads((out / "summary.json").read_text())
    check = summary["search_recall"]
    assert summary["neighbours"] == "faiss" and check["queries_checked"] == 40
    assert check["recall_at_k_vs_exact"] == pytest.approx(recall)
    assert recall > 0.9
    # similarities are the model's, each list sorted by them
    for record in run.records():
        sims = [n["similarity"] for n in record["neighbours"]]
        assert sims == sorted(sims, reverse=True)


def test_cli_neighbours_file(tmp_path, capsys):
    from PIL import Image

    from captum_sfam.app import cli

    for part, count in (("queries", 2), ("gallery", 4)):
        for i in range(count):
            folder = tmp_path / part / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 20), (40 * i, 90, 200 - 30 * i)).save(
                folder / f"{i}.png"
            )
    file = tmp_path / "system.csv"
    file.write_text(
        "c0/0.png,c1/3.png,1,0.5\nc0/0.png,c0/0.png,2,0.4\n"
        "c1/1.png,c1/1.png,1,0.9\nc1/1.png,c0/2.png,2,0.1\n"
    )
    factory = tmp_path / "tiny.py"
    factory.write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom helpers import TinyCNN\n"
        "def make():\n    return TinyCNN(channels=6, embed=5)\n"
    )
    out = tmp_path / "run"
    argv = [
        "retrieve", str(tmp_path / "queries"), str(tmp_path / "gallery"), "--out",
        str(out), "--neighbours", str(file), "--model", f"{factory}:make",
        "--layer", "features", "--size", "32", "--no-progress", "--no-report",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    assert "neighbours: system" in capsys.readouterr().out
    records = list(read_results(out))
    assert [Path(n["id"]).name for n in records[0]["neighbours"]] == ["3.png", "0.png"]
    file.write_text("c0/0.png,c1/9.png,1\n")
    assert cli.main([*argv, "--restart"]) == 2
    assert (
        "system.csv, line 1: unknown gallery id 'c1/9.png'" in capsys.readouterr().err
    )


# ------------------------------------------------------- properties ---------
@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, -1.0]), min_size=4, max_size=4),
        min_size=1,
        max_size=5,
    )
)
def test_model_ranks_equal_a_count_of_better_and_earlier_equal_entries(rows):
    values = torch.tensor(rows, dtype=torch.float32)
    ranks = model_ranks(values)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            better = sum(w > v for w in row) + sum(w == v for w in row[:j])
            assert int(ranks[i, j]) == 1 + better
        assert sorted(ranks[i].tolist()) == list(range(1, len(row) + 1))


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_csv_and_json_lines_in_any_order_resolve_to_the_same_lists(
    tmp_path_factory, data
):
    q_count, g_count = data.draw(st.integers(1, 5)), data.draw(st.integers(3, 9))
    k = data.draw(st.integers(1, 3))
    lists = [data.draw(st.permutations(range(g_count)))[:k] for _ in range(q_count)]
    queries = ImageSource(
        torch.zeros(q_count, 3, 2, 2),
        "queries",
        [f"/q/{i}.png" for i in range(q_count)],
    )
    gallery = ImageSource(
        torch.zeros(g_count, 3, 2, 2),
        "gallery",
        [f"/g/x/{i}.png" for i in range(g_count)],
    )
    rows = [
        f"q/{q}.png,x/{g}.png,{r + 1}"
        for q in range(q_count)
        for r, g in enumerate(lists[q])
    ]
    rows = data.draw(st.permutations(rows))
    lines = [
        json.dumps({"query": f"{q}.png", "neighbours": [f"{g}.png" for g in lists[q]]})
        for q in data.draw(st.permutations(range(q_count)))
    ]
    root = tmp_path_factory.mktemp("lists")
    (root / "s.csv").write_text("\n".join(rows) + "\n")
    (root / "s.jsonl").write_text("\n".join(lines) + "\n")
    expected = torch.tensor(lists)
    for name in ("s.csv", "s.jsonl"):
        found = read_neighbours(root / name, queries, gallery)
        assert torch.equal(found.indices, expected) and found.scores is None
