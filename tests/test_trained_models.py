"""The two demo models: shipped trained, and the training code still learns."""

from __future__ import annotations

import pytest
import torch

from captum_sfam.demo import trained
from captum_sfam.demo.trained import (
    ProtoNet,
    cosine_embedder,
    fewshot_accuracy,
    protonet,
    retrieval_recall_at_1,
)


@pytest.fixture
def no_training(monkeypatch, tmp_path):
    """An empty cache, and training that fails: only shipped weights load."""
    monkeypatch.setenv("CAPTUM_SFAM_CACHE", str(tmp_path))

    def refuse(*_args, **_kwargs):
        raise AssertionError("the default models must load without training")

    monkeypatch.setattr(trained, "_train", refuse)


def test_the_shipped_protonet_reaches_its_stated_accuracy(no_training):
    """5-way 1-shot on the unseen test classes, 100 episodes: 94.1 % with
    the shipped weights (docs/evaluation.md); chance is 20 %."""
    assert fewshot_accuracy(protonet(), episodes=100) >= 0.93


def test_the_shipped_cosine_embedder_reaches_its_stated_recall(no_training):
    """Leave-one-out Recall@1 on the test classes: 73.0 % (docs/evaluation.md)."""
    recall, _ = retrieval_recall_at_1(cosine_embedder())
    assert recall >= 0.72


def test_a_short_training_run_still_learns(tmp_path, monkeypatch):
    """30 episodes on 10 images per class lift 5-way 1-shot accuracy well
    above an untrained network's and above chance (20 %)."""
    monkeypatch.setenv("CAPTUM_SFAM_CACHE", str(tmp_path))
    torch.manual_seed(0)
    before = fewshot_accuracy(ProtoNet().eval(), episodes=50)
    after = fewshot_accuracy(trained._train("protonet", 30, 0, 10).eval(), episodes=50)
    assert after > 0.35 and after > before + 0.1
