"""Synthetic data, trained models and the benchmark, end to end in seconds."""

from __future__ import annotations

import json

import pytest
import torch

from captum_sfam.app import bench
from captum_sfam.demo.synthetic import ShapesFewShot, TwoObjectScenes, class_split
from captum_sfam.demo.trained import (
    cache_dir,
    cosine_embedder,
    fewshot_accuracy,
    multi_similarity_loss,
    protonet,
    retrieval_recall_at_1,
)


class Constant(torch.nn.Module):
    """Every image gets the same embedding: every score ties."""

    def __init__(self, metric):
        super().__init__()
        self.metric = metric

    def forward(self, x):
        return torch.ones(x.shape[0], 4)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTUM_SFAM_CACHE", str(tmp_path / "cache"))


def test_classes_are_disjoint_and_images_deterministic():
    train, test = class_split(0)
    assert not set(train) & set(test) and len(train) + len(test) == 256
    a, b = ShapesFewShot("test", seed=3), ShapesFewShot("test", seed=3)
    x1, y1, box1 = a[17]
    x2, y2, box2 = b[17]
    assert torch.equal(x1, x2) and y1 == y2 and box1 == box2
    assert not torch.equal(a[18][0], x1)
    assert x1.shape == (3, 64, 64) and float(x1.min()) >= 0 and float(x1.max()) <= 1


def test_boxes_are_tight_around_the_pasted_object():
    from captum_sfam.demo.synthetic import _background

    data = ShapesFewShot("train", seed=0)
    for i in range(0, 200, 23):
        image, _, (x0, y0, x1, y1) = data[i]
        background = _background(64, data._generator(i))  # same draws, no object
        changed = (image - background).abs().sum(0) > 1e-6
        ys, xs = torch.nonzero(changed, as_tuple=True)
        assert (float(xs.min()), float(ys.min())) == (x0, y0)
        assert (float(xs.max()) + 1, float(ys.max()) + 1) == (x1, y1)


def test_two_object_scenes_put_objects_in_halves():
    scenes = TwoObjectScenes(ShapesFewShot("test"), count=5)
    for i in range(5):
        image, (a, b), (box_a, box_b) = scenes[i]
        assert a != b and box_a[2] <= 32 and box_b[0] >= 32


def test_multi_similarity_loss_prefers_clustered_embeddings():
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]]), dim=1
    )
    bad = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0.1, 1]]), dim=1
    )
    assert float(multi_similarity_loss(good, labels)) < float(
        multi_similarity_loss(bad, labels)
    )


def test_models_train_briefly_and_are_cached():
    model = protonet(steps=2)
    files = list(cache_dir().glob("protonet-*.pt"))
    assert len(files) == 1
    again = protonet(steps=2)
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
    # 2 episodes of 5-way x 5 queries: the accuracy is a multiple of 1/50
    accuracy = fewshot_accuracy(model, episodes=2)
    assert isinstance(accuracy, float) and round(accuracy * 50, 6).is_integer()
    # a constant embedding ties every score; argmax picks the first class, so
    # exactly the queries of class 0 are right: accuracy = 1 / ways
    for metric in ("euclidean", "cosine"):
        assert fewshot_accuracy(Constant(metric), episodes=3) == 1 / 5
        assert fewshot_accuracy(Constant(metric), episodes=3, ways=4) == 1 / 4
    emb = cosine_embedder(steps=2)(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_recall_at_1_of_a_constant_embedding_is_known():
    # ties: image 0 retrieves image 1, every other image retrieves image 0, so
    # exactly the images of class 0 (3 of them) are hits
    recall, info = retrieval_recall_at_1(Constant("euclidean"), images_per_class=3)
    labels = info["labels"]
    assert info["nearest"].tolist() == [1] + [0] * (len(labels) - 1)
    assert recall == 3 / len(labels) and len(labels) == 3 * 77


def test_benchmark_runs_end_to_end(tmp_path):
    out = tmp_path / "bench"
    code = bench.main(
        [
            "--quick",
            "--settings",
            "fewshot",
            "retrieval",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    fewshot = report["settings"]["fewshot"]["methods"]
    assert "SFAM" in fewshot and "Captum IntegratedGradients" in fewshot
    assert "Decomposition" not in fewshot  # cosine only
    assert "Decomposition" in report["settings"]["retrieval"]["methods"]
    # RAM and Grad-FAM ignore the support: specificity exactly 0.5, no shift
    for name in ("RAM", "Grad-FAM"):
        assert fewshot[name]["specificity"] == pytest.approx(0.5, abs=1e-6)
        assert fewshot[name]["shift"] == pytest.approx(0.0, abs=1e-6)
    assert (out / "bench.csv").read_text().startswith("setting,method")
    assert "| SFAM |" in (out / "bench.md").read_text()
