"""captum_sfam.app's loaders: images of every mode, checkpoints, factories."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from captum_sfam.app import checkpoints, models
from captum_sfam.app.args import add_model_arguments
from captum_sfam.app.errors import CLIError
from captum_sfam.app.files import find_images, load_image
from captum_sfam.app.methods import Loaded, model_from_args
from captum_sfam.methods import REGISTRY

FACTORY_SOURCE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)  # a trained embedding head: must be kept

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def build():
    torch.manual_seed(0)
    return Net()


def broken():
    raise RuntimeError("no GPU here")


def not_a_model():
    return 42


NOT_CALLABLE = 3
"""


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "my_factory.py"
    path.write_text(FACTORY_SOURCE)
    return path


@pytest.fixture
def factory_package(tmp_path, monkeypatch):
    """``mypkg.models:build`` importable through sys.path."""
    root = tmp_path / "site"
    (root / "mypkg").mkdir(parents=True)
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "models.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(root))
    yield "mypkg.models"
    for name in ("mypkg.models", "mypkg"):
        sys.modules.pop(name, None)


def _parse(*argv):
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    return parser.parse_args(list(argv))


# ------------------------------------------------------------ images -------
def _gradient(height=16, width=16):
    """An 8-bit RGB image whose three channels differ."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, 60)], -1
    ).astype(np.uint8)


def test_rgb_image_is_read_in_unit_range_at_the_requested_size(tmp_path):
    array = _gradient()
    Image.fromarray(array).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expected = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    assert torch.allclose(x, expected, atol=1e-6)
    small = load_image(tmp_path / "a.png", 8)
    assert small.shape == (3, 8, 8) and 0 <= small.min() and small.max() <= 1


def test_16_bit_png_is_scaled_by_65535_not_clipped_white(tmp_path):
    values = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    image.save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as reopened:
        assert reopened.mode.startswith("I")  # a 16-bit mode, as Pillow reads it
    x = load_image(tmp_path / "deep.png", 16)
    expected = torch.from_numpy(values.astype(np.float32) / 65535)
    for channel in x:
        assert torch.allclose(channel, expected, atol=1e-5)
    assert float((x > 0.99).float().mean()) < 0.05  # not 98.7 % white
    grey = np.full((8, 8), 32768, np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert torch.allclose(
        load_image(tmp_path / "grey.png", 8), torch.tensor(0.5), atol=1e-3
    )


def test_32_bit_integer_and_float_images(tmp_path):
    values = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.int32)
    Image.fromarray(values, mode="I").save(tmp_path / "wide.tif")
    x = load_image(tmp_path / "wide.tif", 8)
    assert torch.allclose(x[0], torch.from_numpy(values / 65535).float(), atol=1e-5)
    floats = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(floats, mode="F").save(tmp_path / "float.tif")
    y = load_image(tmp_path / "float.tif", 8)
    assert torch.allclose(y[1], torch.from_numpy(floats), atol=1e-6)


def test_greyscale_is_repeated_on_three_channels(tmp_path):
    Image.new("L", (8, 8), 100).save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png", 8)
    assert torch.allclose(x, torch.tensor(100 / 255), atol=1e-6)
    Image.new("1", (8, 8), 1).save(tmp_path / "b.png")
    assert torch.allclose(load_image(tmp_path / "b.png", 8), torch.tensor(1.0))


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # 0: black, 1: red
    image.paste(1, (0, 0, 4, 8))  # left half red, right half index 0
    image.info["transparency"] = 0  # index 0 (black) is transparent
    image.save(tmp_path / "p.png", transparency=0)
    x = load_image(tmp_path / "p.png", 8)
    assert torch.allclose(x[:, :, :4], torch.tensor([1.0, 0, 0]).view(3, 1, 1))
    assert torch.allclose(x[:, :, 4:], torch.ones(3, 8, 4))  # white, not black
    Image.new("P", (8, 8), 1).save(tmp_path / "opaque.png")  # no transparency
    assert load_image(tmp_path / "opaque.png", 8).shape == (3, 8, 8)


def test_cmyk_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.tif")
    x = load_image(tmp_path / "red.tif", 8)
    assert torch.allclose(x, torch.tensor([1.0, 0, 0]).view(3, 1, 1), atol=1e-6)


@pytest.mark.parametrize(
    "mode, opaque, transparent",
    [("LA", (100, 255), (100, 0)), ("RGBA", (0, 0, 255, 255), (0, 0, 255, 0))],
)
def test_alpha_is_composited_on_white(tmp_path, mode, opaque, transparent):
    image = Image.new(mode, (8, 8), opaque)
    image.paste(Image.new(mode, (4, 8), transparent), (4, 0))
    image.save(tmp_path / "alpha.png")
    x = load_image(tmp_path / "alpha.png", 8)
    colour = [c / 255 for c in (opaque[:1] * 3 if mode == "LA" else opaque[:3])]
    assert torch.allclose(x[:, :, :4], torch.tensor(colour).view(3, 1, 1), atol=1e-6)
    assert torch.allclose(x[:, :, 4:], torch.ones(3, 8, 4))


def test_half_transparent_rgba_blends_with_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 128)).save(tmp_path / "half.png")
    x = load_image(tmp_path / "half.png", 4)
    assert torch.allclose(x, torch.tensor(127 / 255), atol=2 / 255)


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((8, 16, 3), np.uint8)
    array[:, :8] = (255, 0, 0)  # left red, right blue, as stored
    array[:, 8:] = (0, 0, 255)
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: red on top
    image.save(tmp_path / "rot.png", exif=exif)
    x = load_image(tmp_path / "rot.png", 8)
    assert x[0, :3].mean() > 0.9 and x[2, -3:].mean() > 0.9


def test_image_errors_are_cli_errors(tmp_path):
    with pytest.raises(CLIError, match="no such image file"):
        load_image(tmp_path / "missing.png", 8)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(CLIError, match="cannot read image") as info:
        load_image(tmp_path / "bad.png", 8)
    assert "\n" not in str(info.value)
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    for size in (0, -3, 2.5):
        with pytest.raises(CLIError, match="positive"):
            load_image(tmp_path / "ok.png", size)


def test_the_package_reader_raises_plain_errors_the_app_words_the_same(
    tmp_path, monkeypatch
):
    import importlib.util

    from captum_sfam import images

    (tmp_path / "bad.png").write_text("not an image")
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    cases = [
        (tmp_path / "missing.png", 8, FileNotFoundError, "no such image file"),
        (tmp_path / "bad.png", 8, ValueError, "cannot read image .*bad.png: "),
        (tmp_path / "ok.png", True, ValueError, "positive whole number"),
    ]
    for path, size, kind, message in cases:
        with pytest.raises(kind, match=message) as plain:
            images.load_image(path, size)
        with pytest.raises(CLIError) as worded:
            load_image(path, size)
        assert str(worded.value) == str(plain.value) and "\n" not in str(plain.value)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "PIL" else real(name, *a, **k),
    )
    with pytest.raises(ImportError, match=r"pillow .*captum-sfam\[demo\]"):
        images.load_image(tmp_path / "ok.png", 8)
    with pytest.raises(CLIError, match=r"pillow .*captum-sfam\[demo\]"):
        load_image(tmp_path / "ok.png", 8)


def test_find_images_is_recursive_sorted_and_filters_extensions(tmp_path):
    for name in ("b.png", "a.JPG", "sub/c.jpeg", "sub/deeper/d.webp", "sub/e.TIF"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub" / "model.pt").write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "f.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()  # a folder, not an image
    found = find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.JPG",
        "b.png",
        "sub/c.jpeg",
        "sub/deeper/d.webp",
        "sub/e.TIF",
    ]
    assert find_images(tmp_path / "sub" / "deeper") == [
        tmp_path / "sub" / "deeper" / "d.webp"
    ]
    with pytest.raises(CLIError, match="no such folder"):
        find_images(tmp_path / "nope")


# ------------------------------------------------------- state dicts -------
def _tiny():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model": s, "optimizer": {"lr": 0.1}},
        lambda s: {"model_state_dict": s, "epoch": 1},
        lambda s: {"module." + k: v for k, v in s.items()},  # DataParallel / DDP
        lambda s: {"state_dict": {"module." + k: v for k, v in s.items()}},
        lambda s: {
            "checkpoint": 1,
            "model": {"_orig_mod." + k: v for k, v in s.items()},
        },
    ],
)
def test_nested_and_prefixed_state_dicts_load(tmp_path, wrap):
    source, target = (
        _tiny(),
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)),
    )
    torch.save(wrap(source.state_dict()), tmp_path / "w.pt")
    checkpoints.load_weights(target, tmp_path / "w.pt", "tiny")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_a_mismatch_names_the_missing_and_unexpected_keys_in_one_line(tmp_path):
    state = _tiny().state_dict()
    state["2.bias_renamed"] = state.pop("2.bias")
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CLIError) as info:
        checkpoints.load_weights(_tiny(), tmp_path / "w.pt", "tiny")
    message = str(info.value)
    assert "does not fit tiny" in message and "\n" not in message
    assert "missing keys: 2.bias" in message
    assert "unexpected keys: 2.bias_renamed" in message


def test_a_long_mismatch_is_shortened_and_shapes_are_reported(tmp_path):
    state = {f"extra.{i}.weight": torch.zeros(1) for i in range(40)}
    torch.save({**_tiny().state_dict(), **state}, tmp_path / "w.pt")
    with pytest.raises(CLIError) as info:
        checkpoints.load_weights(_tiny(), tmp_path / "w.pt", "tiny")
    message = str(info.value)
    assert "extra.0.weight" in message and "(34 more)" in message
    assert "extra.39.weight" not in message and len(message) < 400
    wrong = _tiny().state_dict()
    wrong["0.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save(wrong, tmp_path / "shape.pt")
    with pytest.raises(
        CLIError, match=r"shape mismatch .*0\.weight \(5, 3, 3, 3\) vs \(4, 3, 3, 3\)"
    ):
        checkpoints.load_weights(_tiny(), tmp_path / "shape.pt", "tiny")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch deprecates TorchScript
def test_whole_pickled_models_torchscript_and_other_files(tmp_path):
    torch.save(_tiny(), tmp_path / "whole.pt")
    with pytest.raises(CLIError, match=r"pickled .*torch\.nn\.modules.*state_dict\(\)"):
        checkpoints.read_state_dict(tmp_path / "whole.pt")
    scripted = torch.jit.trace(_tiny(), torch.rand(1, 3, 8, 8))
    torch.jit.save(scripted, tmp_path / "scripted.pt")
    with pytest.raises(CLIError, match="TorchScript model"):
        checkpoints.read_state_dict(tmp_path / "scripted.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CLIError, match="not a state dict"):
        checkpoints.read_state_dict(tmp_path / "tensor.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(CLIError, match="state dict was not found"):
        checkpoints.read_state_dict(tmp_path / "meta.pt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(CLIError, match="cannot read weights"):
        checkpoints.read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(CLIError, match="no such weights file"):
        checkpoints.read_state_dict(tmp_path / "absent.pt")


# ---------------------------------------------------------- factories -------
def _check_factory_model(model):
    assert isinstance(model.head, nn.Linear)  # the embedding head is kept
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_factory_from_a_file(factory_file):
    model = models.load_factory(f"{factory_file}:build")
    _check_factory_model(model)


def test_factory_from_a_package_on_sys_path(factory_package):
    model = models.load_factory(f"{factory_package}:build")
    _check_factory_model(model)


@pytest.mark.parametrize(
    "suffix, message",
    [
        (":missing", "has no attribute 'missing'"),
        (":broken", r"broken\(\) raised RuntimeError: no GPU here"),
        (":not_a_model", r"returned int, not a torch\.nn\.Module"),
        (":NOT_CALLABLE", "not callable"),
    ],
)
def test_factory_errors(factory_file, factory_package, suffix, message):
    for target in (str(factory_file), factory_package):
        with pytest.raises(CLIError, match=message):
            models.load_factory(target + suffix)


def test_factory_import_errors(tmp_path):
    with pytest.raises(CLIError, match="no such file"):
        models.load_factory(f"{tmp_path / 'absent.py'}:build")
    with pytest.raises(CLIError, match="no module named 'no_such_pkg_xyz'"):
        models.load_factory("no_such_pkg_xyz.models:build")
    (tmp_path / "syntax.py").write_text("def build(:\n")
    with pytest.raises(CLIError, match="raised SyntaxError"):
        models.load_factory(f"{tmp_path / 'syntax.py'}:build")
    assert models.is_factory("pkg.mod:fn") and not models.is_factory("resnet18")


# ------------------------------------------------- model_from_args ---------
def test_model_from_args_with_a_factory_checkpoint_and_preprocess(
    factory_file, tmp_path
):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reference_factory", factory_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    trained = module.Net()
    torch.nn.init.constant_(trained.head.bias, 0.25)
    torch.save(
        {
            "epoch": 9,
            "state_dict": {"module." + k: v for k, v in trained.state_dict().items()},
        },
        tmp_path / "ckpt.pth",
    )
    Image.fromarray(_gradient()).save(tmp_path / "img.png")
    args = _parse(
        "--model",
        f"{factory_file}:build",
        "--weights",
        str(tmp_path / "ckpt.pth"),
        "--layer",
        "features.0",
        "--method",
        "simgradcam",
        "--metric",
        "euclidean",
        "--size",
        "16",
    )
    loaded = model_from_args(args)
    assert isinstance(loaded, Loaded)
    assert not loaded.model.training
    _check_factory_model(loaded.model)
    assert torch.equal(loaded.model.head.bias, torch.full((4,), 0.25))
    assert loaded.layer is loaded.model.features[0]
    assert isinstance(loaded.method, REGISTRY["simgradcam"].cls)
    assert loaded.metric == "euclidean"
    assert loaded.mean == models.IMAGENET_MEAN and loaded.std == models.IMAGENET_STD
    x = loaded.preprocess(tmp_path / "img.png")
    raw = load_image(tmp_path / "img.png", 16)
    mean = torch.tensor(loaded.mean).view(3, 1, 1)
    std = torch.tensor(loaded.std).view(3, 1, 1)
    assert x.shape == (3, 16, 16) and torch.allclose(x, (raw - mean) / std)
    q_map = loaded.method.attribute(x[None], x[None])
    assert q_map.shape == (1, 1, 16, 16)


def test_mean_and_std_options_and_timm_style_config(factory_file, tmp_path):
    args = _parse(
        "--model",
        f"{factory_file}:build",
        "--layer",
        "features",
        "--mean",
        "0.5",
        "--std",
        "0.2,0.3,0.4",
    )
    loaded = model_from_args(args)
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.2, 0.3, 0.4)
    model = nn.Linear(2, 2)
    model.pretrained_cfg = {"mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    assert models._model_normalisation(model) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))


def test_model_from_args_with_torchvision_drops_only_the_classifier(tmp_path, capsys):
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save({"model": net.state_dict()}, tmp_path / "r18.pt")
    loaded = model_from_args(
        _parse(
            "--model", "resnet18", "--weights", str(tmp_path / "r18.pt"), "--size", "32"
        )
    )
    assert isinstance(loaded.model.fc, nn.Identity)
    assert loaded.layer is loaded.model.layer4
    assert isinstance(loaded.method, REGISTRY["sfam"].cls) and loaded.metric == "cosine"
    assert torch.equal(loaded.model.conv1.weight, net.conv1.weight)
    assert (
        "dropped the checkpoint's classifier (fc.weight, fc.bias)"
        in capsys.readouterr().err
    )
    with torch.no_grad():
        assert loaded.model(torch.rand(1, 3, 32, 32)).shape == (1, 512)


def test_model_from_args_errors(factory_file):
    with pytest.raises(CLIError, match="--layer is needed"):
        model_from_args(_parse("--model", f"{factory_file}:build"))
    with pytest.raises(CLIError, match="--layer is empty"):
        model_from_args(_parse("--model", f"{factory_file}:build", "--layer", ""))
    with pytest.raises(CLIError, match="unknown layer 'nope'"):
        model_from_args(_parse("--model", f"{factory_file}:build", "--layer", "nope"))
    with pytest.raises(CLIError, match="cosine only"):
        model_from_args(
            _parse(
                "--model",
                f"{factory_file}:build",
                "--layer",
                "features",
                "--method",
                "decomposition",
                "--metric",
                "euclidean",
            )
        )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "0"], "must be a positive number"),
        (["--size", "-4"], "must be a positive number"),
        (["--size", "ten"], "whole number"),
        (["--method", "magic"], "unknown method 'magic'"),
        (["--metric", "l1"], "unknown metric 'l1'"),
        (["--mean", "1,2"], "1 or 3 numbers"),
        (["--std", "0,1,1"], "must be positive"),
    ],
)
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        _parse(*argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_cli_reexports_the_loading_names():
    from captum_sfam.app import cli

    assert cli.CLIError is CLIError and cli.model_from_args is model_from_args
    assert cli.load_model is models.load_model
