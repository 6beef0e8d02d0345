"""The command line and the figures: real photos, real pretrained CNN, offline."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from captum_sfam.app import cli
from captum_sfam.demo.pretrained import sample_images
from captum_sfam.visualization import compare_methods, to_hwc, visualize_pair


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    photos = sample_images()
    paths = {}
    for name in ("cat", "cat_view_2", "coffee"):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(photos[name]).save(paths[name])
    return paths


def test_demo_writes_figures_and_summary(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert (
        "cat_two_views_sfam.png" in pngs and "composite_vs_coffee_methods.png" in pngs
    )
    assert len(pngs) == 8
    summary = (tmp_path / "summary.txt").read_text()
    assert "cosine similarity" in summary and "share of positive map mass" in summary
    assert "cat_two_views" in capsys.readouterr().out


def test_explain_writes_a_figure_and_prints_the_similarity(
    photo_files, tmp_path, capsys
):
    out = tmp_path / "fig.png"
    code = cli.main(
        [
            "explain",
            str(photo_files["cat"]),
            str(photo_files["cat_view_2"]),
            str(photo_files["coffee"]),
            "--method",
            "simgradcam",
            "--out",
            str(out),
        ]
    )
    assert code == 0 and out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "cosine similarity" in printed
    value = float(printed.rsplit(":", 1)[1].split()[0])
    # the printed value is the cosine of the query's embedding and the mean of
    # the support's embeddings, recomputed here by hand
    from captum_sfam.demo.pretrained import efficientnet_lite0, load_image

    model = efficientnet_lite0()
    names = ("cat_view_2", "coffee")
    with torch.no_grad():
        query = model(load_image(photo_files["cat"]))
        support = model(torch.cat([load_image(photo_files[n]) for n in names]))
    expected = torch.nn.functional.cosine_similarity(query, support.mean(0, True))
    assert value == pytest.approx(float(expected), abs=1e-4)


def test_explain_with_a_torchvision_state_dict(photo_files, tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    code = cli.main(
        [
            "explain",
            str(photo_files["cat"]),
            str(photo_files["coffee"]),
            "--model",
            "resnet18",
            "--weights",
            str(weights),
            "--metric",
            "euclidean",
            "--size",
            "64",
            "--out",
            str(tmp_path / "r.png"),
        ]
    )
    assert code == 0 and (tmp_path / "r.png").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "magic"], "unknown method"),
        (["--layer", "no_such_layer"], "unknown layer"),
        (["--model", "not_a_model"], "unknown model"),
        (["--model", "model.pt"], "TorchScript"),
        (["--method", "decomposition", "--metric", "euclidean"], "cosine only"),
    ],
)
def test_explain_one_line_errors(photo_files, tmp_path, capsys, extra, message):
    args = ["explain", str(photo_files["cat"]), str(photo_files["coffee"])]
    code = cli.main([*args, *extra, "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_missing_and_unreadable_images(photo_files, tmp_path, capsys):
    assert (
        cli.main(["explain", str(tmp_path / "nope.png"), str(photo_files["cat"])]) == 2
    )
    assert "no such image file" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert cli.main(["explain", str(bad), str(photo_files["cat"])]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_to_hwc_and_figures_handle_all_zero_maps(tmp_path):
    attr = torch.rand(1, 1, 7, 7)
    hwc = to_hwc(attr, (56, 56))
    assert hwc.shape == (56, 56, 1)
    image = np.random.default_rng(0).random((56, 56, 3))
    zero = torch.zeros(1, 7, 7)
    fig = visualize_pair(
        image,
        zero,
        [image],
        torch.rand(1, 1, 7, 7),
        similarity=0.5,
        path=tmp_path / "p.png",
    )
    assert (tmp_path / "p.png").exists() and len(fig.axes) == 3
    fig = compare_methods(
        image,
        [image, image],
        {"A": (attr[0], torch.rand(2, 1, 7, 7)), "B": (zero, None)},
    )
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="one map"):
        to_hwc(torch.rand(2, 1, 7, 7), (56, 56))


# ------------------------------------------- factories, checkpoints, images --
FACTORY = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 5)  # a trained embedding head

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def build():
    torch.manual_seed(0)
    return Net()
"""


@pytest.fixture
def factory(tmp_path):
    """A user's factory file and a DDP-style checkpoint of its trained model."""
    path = tmp_path / "user_model.py"
    path.write_text(FACTORY)
    namespace = {}
    exec(compile(FACTORY, str(path), "exec"), namespace)
    torch.manual_seed(5)
    trained = namespace["Net"]().eval()
    checkpoint = tmp_path / "trained.pth"
    state = {"module." + k: v for k, v in trained.state_dict().items()}
    torch.save({"epoch": 12, "model_state_dict": state}, checkpoint)
    return path, checkpoint, trained


@pytest.fixture
def small_images(tmp_path):
    y, x = np.mgrid[0:32, 0:32]
    array = np.stack([x * 8, y * 8, (x + y) * 4], -1).astype(np.uint8)
    paths = {"a": tmp_path / "a.png", "b": tmp_path / "b.png"}
    Image.fromarray(array).save(paths["a"])
    Image.fromarray(np.ascontiguousarray(array[:, ::-1])).save(paths["b"])
    return paths


def _similarity(printed: str) -> float:
    return float(printed.split("support:")[1].split()[0])


def _embed(model, paths, size=32):
    from captum_sfam.app.files import load_image
    from captum_sfam.app.models import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = torch.stack([(load_image(p, size) - mean) / std for p in paths])
    with torch.no_grad():
        return model(x)


def test_explain_with_a_factory_keeps_the_head_and_loads_the_checkpoint(
    factory, small_images, tmp_path, capsys, monkeypatch
):
    import captum_sfam.visualization as visualization

    figures = []
    original = visualization.visualize_pair

    def spy(*args, **kwargs):
        figures.append(original(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(visualization, "visualize_pair", spy)
    path, checkpoint, trained = factory
    out = tmp_path / "fig.svg"
    code = cli.main(
        [
            "explain",
            str(small_images["a"]),
            str(small_images["b"]),
            "--model",
            f"{path}:build",
            "--weights",
            str(checkpoint),
            "--layer",
            "features.0",
            "--metric",
            "euclidean",
            "--size",
            "32",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and out.stat().st_size > 1000
    # the printed value uses the trained model, head included (5-d embedding)
    q, s = _embed(trained, [small_images["a"], small_images["b"]]).split(1)
    assert q.shape == (1, 5)
    expected = -float(((q - s) ** 2).sum())
    assert _similarity(printed) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # the figure shows the images as they are, not the normalised input
    from captum_sfam.app.files import load_image

    shown = np.asarray(figures[0].axes[0].get_images()[0].get_array())
    as_read = load_image(small_images["a"], 32).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(shown, as_read, atol=1e-5)


def test_explain_with_a_factory_from_a_package(
    factory, small_images, tmp_path, capsys, monkeypatch
):
    path, _, _ = factory
    package = tmp_path / "site" / "userpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(path.read_text())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(__import__("sys").modules, "userpkg", raising=False)
    args = [str(small_images["a"]), str(small_images["b"]), "--layer", "features"]
    code = cli.main(
        ["explain", *args, "--model", "userpkg.nets:build", "--size", "16"]
        + ["--out", str(tmp_path / "f.png")]
    )
    assert code == 0, capsys.readouterr().err
    torch.manual_seed(0)
    from userpkg.nets import build

    q, s = _embed(build().eval(), [small_images["a"], small_images["b"]], 16).split(1)
    cosine = torch.nn.functional.cosine_similarity(q, s)
    assert _similarity(capsys.readouterr().out) == pytest.approx(
        float(cosine), abs=1e-4
    )


def test_16_bit_png_through_the_cli_reads_as_the_8_bit_image(factory, tmp_path, capsys):
    path, _, _ = factory
    y, x = np.mgrid[0:32, 0:32]
    deep = ((x + 32 * y) * 64).astype(np.uint16)  # 0 .. 65472, not white
    Image.fromarray(deep).save(tmp_path / "deep.png")
    Image.fromarray((deep // 257).astype(np.uint8)).save(tmp_path / "eight.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "white.png")
    common = ["--model", f"{path}:build", "--layer", "features", "--size", "32"]
    common += ["--metric", "euclidean", "--out", str(tmp_path / "f.png")]
    images = [str(tmp_path / "deep.png"), str(tmp_path / "eight.png")]
    assert cli.main(["explain", *images, *common]) == 0
    same = _similarity(capsys.readouterr().out)
    images = [str(tmp_path / "white.png"), str(tmp_path / "eight.png")]
    assert cli.main(["explain", *images, *common]) == 0
    white = _similarity(capsys.readouterr().out)
    assert abs(same) < 1e-3 * abs(white)  # the 16-bit image is not read as white


def _one_line_error(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("captum-sfam: error: ")
    return err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "0"], "argument --size: must be a positive number, got 0"),
        (["--size", "-5"], "must be a positive number, got -5"),
        (["--size", "1.5"], "expected a whole number"),
        (["--out", "x.xyz"], "cannot write a figure as 'x.xyz'"),
        (["--out", "noextension"], "cannot write a figure"),
        (["--method", "magic"], "unknown method 'magic'"),
        (["--metric", "l1"], "unknown metric 'l1'"),
        (["--layer", "no_such_layer"], "unknown layer 'no_such_layer'"),
        (["--layer", "features.7"], "unknown layer 'features.7'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_every_bad_argument_is_a_one_line_error(
    factory, small_images, tmp_path, capsys, extra, message
):
    path, _, _ = factory
    argv = ["explain", str(small_images["a"]), str(small_images["b"])]
    argv += ["--model", f"{path}:build", "--layer", "features", "--size", "16"]
    argv += ["--out", str(tmp_path / "f.png"), *extra]
    assert message in _one_line_error(capsys, argv)
    assert not (tmp_path / "f.png").exists()


def test_missing_files_and_bad_checkpoints_are_one_line_errors(
    factory, small_images, tmp_path, capsys
):
    path, checkpoint, _ = factory
    a, b = str(small_images["a"]), str(small_images["b"])
    model = ["--model", f"{path}:build", "--layer", "features", "--size", "16"]
    err = _one_line_error(capsys, ["explain", a, str(tmp_path / "gone.png"), *model])
    assert "no such image file" in err and "gone.png" in err
    err = _one_line_error(capsys, ["explain", a, b, *model, "--weights", "nope.pt"])
    assert "no such weights file: nope.pt" in err
    assert "no such file" in _one_line_error(
        capsys, ["explain", a, b, "--model", f"{tmp_path / 'gone.py'}:build"]
    )
    assert "no module named 'gone_pkg'" in _one_line_error(
        capsys, ["explain", a, b, "--model", "gone_pkg.mod:build"]
    )
    assert "the following arguments are required: support" in _one_line_error(
        capsys, ["explain", a]
    )
    # a checkpoint of another architecture: every missing / unexpected key named
    state = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    state["module.head.extra"] = state.pop("module.head.bias")
    torch.save(state, tmp_path / "other.pt")
    err = _one_line_error(
        capsys, ["explain", a, b, *model, "--weights", str(tmp_path / "other.pt")]
    )
    assert "does not fit" in err
    assert "missing keys: head.bias" in err and "unexpected keys: head.extra" in err
    # a whole pickled model, and TorchScript
    namespace = {}
    exec(compile(FACTORY, str(path), "exec"), namespace)
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "whole.pt")
    err = _one_line_error(
        capsys, ["explain", a, b, *model, "--weights", str(tmp_path / "whole.pt")]
    )
    assert "pickled" in err and "state_dict()" in err
    with warnings.catch_warnings():  # torch deprecates TorchScript
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(namespace["build"]().eval(), torch.rand(1, 3, 8, 8))
        torch.jit.save(scripted, tmp_path / "scripted.pt")
    err = _one_line_error(
        capsys, ["explain", a, b, *model, "--weights", str(tmp_path / "scripted.pt")]
    )
    assert "is a TorchScript model" in err
    # a model that cannot take the images (here: it wants one channel)
    (tmp_path / "grey_model.py").write_text(
        FACTORY.replace("nn.Conv2d(3, 8", "nn.Conv2d(1, 8")
    )
    err = _one_line_error(
        capsys,
        ["explain", a, b, *model, "--model", f"{tmp_path / 'grey_model.py'}:build"],
    )
    assert "channels" in err
    # anything else the model raises is one line too
    with pytest.MonkeyPatch.context() as patch:

        def fail(*args, **kwargs):
            raise RuntimeError("CUDA out of memory\nmore details")

        patch.setattr(cli, "similarity", fail)
        err = _one_line_error(capsys, ["explain", a, b, *model])
    assert "the model failed on the 16 x 16 RGB images" in err
    assert "RuntimeError: CUDA out of memory" in err


TRANSFORMERS = """
import timm
import torch


def vit():
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
        num_classes=0, reg_tokens=4,
    ).eval()


def swin():
    torch.manual_seed(0)
    return timm.models.swin_transformer.SwinTransformer(
        img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1),
        num_heads=(1, 1), num_classes=0,
    ).eval()


class Dict(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = swin()

    def forward(self, x):
        return {"embedding": self.net(x)}
"""


@pytest.mark.parametrize(
    "factory_name, layer, extra",
    [
        ("vit", "blocks.2", []),  # tokens, 1 class + 4 register tokens: read
        ("vit", "blocks.1", ["--method", "cgram"]),
        ("swin", "layers.1", []),  # channels-last: detected
        ("swin", "layers.1", ["--layout", "channels_last"]),
        ("Dict", "net.layers.1", ["--method", "cgram", "--embedding-key", "embedding"]),
        ("Dict", "net.layers.1", ["--embedding-key", "embedding"]),
    ],
)
def test_explain_vits_and_channels_last_layers(
    small_images, tmp_path, capsys, factory_name, layer, extra
):
    pytest.importorskip("timm")
    path = tmp_path / "transformers_factory.py"
    path.write_text(TRANSFORMERS)
    out = tmp_path / "fig.png"
    argv = ["explain", str(small_images["a"]), str(small_images["b"])]
    argv += ["--model", f"{path}:{factory_name}", "--layer", layer, "--size", "32"]
    argv += ["--metric", "cosine", "--out", str(out), *extra]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no all-zero map, no classifier head
        code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    assert out.stat().st_size > 1000


def test_layout_options_errors(small_images, tmp_path, capsys):
    pytest.importorskip("timm")
    path = tmp_path / "transformers_factory.py"
    path.write_text(TRANSFORMERS)
    argv = ["explain", str(small_images["a"]), str(small_images["b"])]
    argv += ["--model", f"{path}:vit", "--size", "32", "--out", str(tmp_path / "f.png")]
    err = _one_line_error(
        capsys, [*argv, "--layer", "blocks.2", "--prefix-tokens", "0"]
    )
    assert "num_prefix_tokens" in err
    err = _one_line_error(
        capsys, [*argv, "--layer", "blocks.2", "--prefix-tokens", "-1"]
    )
    assert "--prefix-tokens" in err
    err = _one_line_error(
        capsys, [*argv, "--layer", "blocks.2", "--embedding-key", "embedding"]
    )
    assert "embedding_func" in err  # the model returns a tensor: no such key
    err = _one_line_error(capsys, [*argv, "--layer", "blocks.2", "--layout", "nhwc"])
    assert "--layout" in err


def test_demo_load_image_reads_16_bit_pngs(tmp_path):
    from captum_sfam.demo.pretrained import load_image

    y, x = np.mgrid[0:24, 0:24]
    eight = ((x + y) * 5).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "8.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "16.png")
    a, b = load_image(tmp_path / "8.png", 16), load_image(tmp_path / "16.png", 16)
    assert a.shape == (1, 3, 16, 16)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=0)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
