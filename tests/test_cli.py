"""The command line and the figures: real photos, real pretrained CNN, offline."""

from __future__ import annotations

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
