"""captum-sfam explain IMAGE --text ...: the demo two-tower model, an
open_clip architecture built without weights and loaded with --weights,
and the one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from captum_sfam.app import cli
from captum_sfam.demo.synthetic import ShapesFewShot, TwoObjectScenes
from captum_sfam.demo.two_tower import phrase


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A two-object test scene as a PNG file, and its two phrases."""
    data = ShapesFewShot("test", images_per_class=10)
    image, (a, b), _ = TwoObjectScenes(data, 1, seed=13)[0]
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    pixels = (image.permute(1, 2, 0) * 255).round().byte().numpy()
    Image.fromarray(pixels).save(path)
    return path, phrase(data.classes[a]), phrase(data.classes[b])


def test_explain_texts_with_the_demo_model(scene, tmp_path, capsys):
    path, first, second = scene
    out = tmp_path / "fig.png"
    argv = ["explain", str(path), "--text", first, "--text", second]
    assert cli.main([*argv, "--model", "demo:two-tower", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and out.stat().st_size > 10_000
    assert f"{first!r}: score" in printed and f"{second!r}: score" in printed
    for word in first.split()[1:]:  # every word of the text gets a score
        assert f" {word}:" in printed


def test_explain_a_text_with_an_open_clip_model_and_weights(tmp_path, scene, capsys):
    """A small open_clip ViT architecture (registered from a config file,
    built without weights) saved as a state dict and loaded with --weights."""
    open_clip = pytest.importorskip("open_clip")
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32,
                     "heads": 4, "layers": 2},
    }  # fmt: skip
    (tmp_path / "tiny-clip-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-clip-test.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-test", pretrained=None)
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "clip.png"
    argv = ["explain", str(scene[0]), "--text", "a photo of a cat", "--model",
            "open_clip:tiny-clip-test", "--out", str(out)]  # fmt: skip
    try:
        assert cli.main([*argv, "--weights", str(weights)]) == 0
        assert out.is_file()
        assert "'a photo of a cat': score" in capsys.readouterr().out
        # no tag and no --weights: refused (random weights explain nothing)
        assert cli.main(argv) == 2
        assert "--weights FILE" in capsys.readouterr().err
    finally:  # the registered config leaves with the test
        open_clip.factory._MODEL_CONFIGS.pop("tiny-clip-test", None)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "sfam"], "forward-only: it needs the other side"),
        (["--text", "  "], "is empty"),
        (["--model", "resnet18"], "two-tower model"),
        (["--model", "demo:other"], "demo:two-tower"),
        (["--model", "open_clip:NoSuchArch"], "unknown open_clip architecture"),
        (["--layer", "nope"], "unknown layer"),
    ],
)
def test_one_line_errors(scene, tmp_path, capsys, extra, message):
    argv = ["explain", str(scene[0]), "--text", "a disc", "--model", "demo:two-tower"]
    assert cli.main([*argv, *extra, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("captum-sfam: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_text_and_support_images_do_not_mix(scene, tmp_path, capsys):
    path = str(scene[0])
    assert cli.main(["explain", path, path, "--text", "a disc", "--model",
                     "demo:two-tower"]) == 2  # fmt: skip
    assert "not support images" in capsys.readouterr().err
    assert cli.main(["explain", path]) == 2  # neither support nor text
    assert "--text" in capsys.readouterr().err


def test_explain_a_text_with_a_hugging_face_folder(scene, tmp_path, capsys):
    """hf:FOLDER loads a saved SiglipModel and its tokenizer offline."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<pad>", "<unk>", "<s>", "</s>", "a", "red", "disc"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
        pad_token="<pad>", unk_token="<unk>", model_max_length=8,
    )  # fmt: skip
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2)  # fmt: skip
    config = transformers.SiglipConfig(
        text_config=dict(small, vocab_size=len(words), max_position_embeddings=8,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3),
        vision_config=dict(small, image_size=32, patch_size=8),
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path / "siglip"
    transformers.SiglipModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "siglip.png"
    argv = ["explain", str(scene[0]), "--text", "a red disc", "--model",
            f"hf:{folder}", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert out.is_file()
    assert "'a red disc': score" in capsys.readouterr().out
    assert cli.main([*argv[:-4], "--model", f"hf:{tmp_path / 'none'}"]) == 2
    assert "could not load" in capsys.readouterr().err
