"""The synthetic two-tower model: shipped trained, the training code still
learns, it is a TwoTower, and the image-text benchmark setting runs."""

from __future__ import annotations

import json

import pytest
import torch

from captum_sfam import LayerCGRAM
from captum_sfam.demo import two_tower as tt
from captum_sfam.demo.synthetic import ShapesFewShot, TwoObjectScenes
from captum_sfam.image_text import TwoTower
from captum_sfam.image_text.text import text_token_scores


@pytest.fixture(scope="module")
def tower():
    return tt.synthetic_two_tower()


def test_the_shipped_model_loads_without_training(monkeypatch, tmp_path):
    """An empty cache and training that fails: the shipped weights load and
    reach the stated accuracy (image -> caption among the 256 captions on
    the unseen test classes: 79.2 %, chance 0.4 %; colour 99.7 %, texture
    98.1 %, shape 80.2 %)."""
    monkeypatch.setenv("CAPTUM_SFAM_CACHE", str(tmp_path))

    def refuse(*_args, **_kwargs):
        raise AssertionError("the default two-tower model must load untrained")

    monkeypatch.setattr(tt, "train", refuse)
    accuracy = tt.retrieval_accuracy(tt.synthetic_two_tower(), "test", 4)
    assert accuracy["top1"] >= 0.78
    assert accuracy["colour"] >= 0.99 and accuracy["texture"] >= 0.97
    assert accuracy["shape"] >= 0.79
    assert list(tmp_path.iterdir()) == []  # nothing cached, nothing trained


def test_a_short_training_run_still_learns():
    """60 steps on a small set: the InfoNCE loss falls from about log(batch)
    and image -> caption retrieval on unseen classes beats chance (1/256;
    colour: 1/8) and an untrained model."""
    data = tt.training_data(0, singles_per_class=1, scenes=120)
    log = []
    model = tt.train(60, 0, batch=32, log=log, data=data)
    assert len(log) == 60
    assert sum(log[-5:]) / 5 < sum(log[:5]) / 5 - 1.0
    accuracy = tt.retrieval_accuracy(tt.as_two_tower(model), "test", 1)
    untrained = tt.retrieval_accuracy(
        tt.as_two_tower(tt.SyntheticCLIP().eval()), "test", 1
    )
    assert accuracy["top1"] > 5 / 256 and accuracy["colour"] > 0.6
    assert accuracy["colour"] > untrained["colour"] + 0.4


def test_it_is_a_two_tower(tower):
    assert isinstance(tower, TwoTower)
    ids = tower.tokenize(["a red striped disc and a blue dotted square", "a ring"])
    assert ids.shape == (2, tt.CONTEXT) and ids.dtype == torch.long
    assert tower.tokens(ids)[1] == ["<start>", "a", "ring", "<end>"]
    assert tower.special_token_ids == {0, 1, 2} and tower.pad_token_id == 0
    assert tower.tokens(tower.tokenize(["a purple disc"]))[0][2] == "<unk>"
    text = tower.encode_text(["a red solid disc"])
    image = tower.encode_image(torch.rand(3, 3, 64, 64))
    assert text.shape == (1, 64) and image.shape == (3, 64)
    assert not text.requires_grad and not image.requires_grad
    assert tower.score(image, text).shape == (3, 1)
    assert tower.default_layer is tower.image_model.blocks[-1]
    with pytest.warns(UserWarning, match="a red red red"):
        tower.tokenize(["a " + "red " * 20 + "disc"])
    with pytest.raises(ValueError, match="empty"):
        tower.tokenize([""])


def test_captions_name_the_attributes():
    data = ShapesFewShot("test", images_per_class=1)
    first, second = data.classes[0], data.classes[1]
    caption = tt.scene_caption(first, second)
    assert caption == f"{tt.phrase(first)} and {tt.phrase(second)}"
    assert tt.phrase(first).split()[1:] == list(tt.phrase_words(first))
    assert all(w in tt.VOCABULARY for w in caption.split())


def test_the_words_of_the_pictured_object_outrank_the_others(tower):
    """Text side on the trained model: for single-object test images against
    a two-object caption, the pictured object's attribute words get higher
    scores than the other object's in most (image, caption) pairs, and the
    scores are complete within 2 % of the score gap."""
    data = ShapesFewShot("test", images_per_class=2, seed=0)
    wins = []
    for i in range(6):
        a, b = data.classes[2 * i], data.classes[2 * i + 1]
        image = data[data.images_of(2 * i)[0]][0][None]
        out = text_token_scores(tower, image, tt.scene_caption(b, a))
        own = set(tt.phrase_words(a)) - set(tt.phrase_words(b))
        other = set(tt.phrase_words(b)) - set(tt.phrase_words(a))
        scores = dict(zip(out.tokens[0], out.scores[0].tolist()))
        wins.append(min(scores[w] for w in own) > max(scores[w] for w in other))
        gap = float(out.score[0] - out.baseline_score[0])
        assert abs(float(out.delta[0])) <= 0.02 * abs(gap)
    assert sum(wins) >= 5


def test_image_maps_follow_the_phrase(tower):
    """Image side: CG-RAM with references= the two phrases' text embeddings
    puts more of its mass on the named object than on the other."""
    data = ShapesFewShot("test", images_per_class=10, seed=0)
    scenes = TwoObjectScenes(data, 4, seed=13)
    method = LayerCGRAM(tower.image_model, tower.default_layer, metric="cosine")
    hits = 0
    for i in range(len(scenes)):
        scene, (a, b), boxes = scenes[i]
        refs = tower.encode_text(
            [tt.phrase(data.classes[a]), tt.phrase(data.classes[b])]
        )
        for j in (0, 1):
            attr = method.attribute(
                scene[None], references=refs, target=j, contrast=1 - j
            )
            up = torch.nn.functional.interpolate(attr, size=64, mode="bilinear")[0, 0]
            mass = []
            for box in boxes:
                x0, y0, x1, y1 = (int(v) for v in box)
                mass.append(float(up[y0:y1, x0:x1].clamp(min=0).sum()))
            hits += mass[j] > mass[1 - j]
    assert hits >= 7


def test_the_image_text_benchmark_setting(tmp_path):
    """captum-sfam bench --settings image-text --quick (2 scenes)."""
    from captum_sfam.app import bench

    argv = ["--quick", "--settings", "image-text", "--out", str(tmp_path)]
    assert bench.main([*argv, "--no-progress"]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())["settings"]["image-text"]
    assert {"CG-RAM", "Captum LayerGradCam", "random"} <= set(result["methods"])
    assert any(name.startswith("Multi-block") for name in result["methods"])
    assert "SFAM" in result["not_applicable"]
    assert "text_token_scores (IG on token embeddings)" in result["text"]
    for row in result["methods"].values():
        assert 0 <= row["pointing"] <= 1 and 0 <= row["mass"] <= 1
    record = json.loads((tmp_path / "image-text.json").read_text())
    assert {"date", "command", "machine"} <= set(record)
    assert "--settings image-text" in record["command"]
    assert "| random |" in (tmp_path / "bench.md").read_text()
