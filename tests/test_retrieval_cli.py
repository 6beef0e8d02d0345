"""captum-sfam retrieve on folders of real photos, and ImageFiles' labels."""

from __future__ import annotations

import torch
from PIL import Image

from captum_sfam.retrieval import load_maps, read_results


def test_cli_retrieve_on_real_photo_folders(tmp_path, capsys):
    from skimage import data

    from captum_sfam.app import cli
    from captum_sfam.demo.pretrained import second_view

    photos = {"cat": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket()}
    for name, photo in photos.items():
        (tmp_path / "gallery" / name).mkdir(parents=True)
        (tmp_path / "queries" / name).mkdir(parents=True)
        Image.fromarray(photo).save(tmp_path / "gallery" / name / "a.png")
        Image.fromarray(second_view(photo)).save(tmp_path / "queries" / name / "q.jpg")
    out = tmp_path / "run"
    argv = [
        "retrieve", str(tmp_path / "queries"), str(tmp_path / "gallery"),
        "--top-k", "2", "--out", str(out), "--size", "128", "--no-progress",
        "--method", "simgradcam",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    records = list(read_results(out))
    assert len(records) == 3 and (out / "index.html").is_file()
    assert all(r["neighbours"][0]["label"] == r["label"] for r in records)
    assert records[0]["id"].endswith("queries/cat/q.jpg")
    assert '"recall@1": 1.0' in printed
    maps = load_maps(out, records[0])
    assert maps["query"].shape == (2, 4, 4)  # bn2 at 128 px
    # an empty folder is a one-line error, exit code 2
    (tmp_path / "empty").mkdir()
    argv[1] = str(tmp_path / "empty")
    assert cli.main(argv) == 2
    assert "no images in" in capsys.readouterr().err


def test_image_files_take_labels_from_top_level_folders(tmp_path):
    from captum_sfam.retrieval import ImageFiles

    for name in ("b/x/1.png", "a/2.jpg", "a/3.png"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(path)
    data = ImageFiles.from_folder(tmp_path, lambda p: torch.zeros(1, 3, 2, 2))
    assert [p.relative_to(tmp_path).as_posix() for p in data.paths] == [
        "a/2.jpg", "a/3.png", "b/x/1.png",
    ]  # fmt: skip
    assert data.labels == ["a", "a", "b"] and data[0].shape == (3, 2, 2)
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")  # not in a folder
    assert (
        ImageFiles.from_folder(tmp_path, lambda p: torch.zeros(3, 2, 2)).labels is None
    )
