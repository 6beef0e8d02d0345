"""CUB200 on a tiny tree in CUB-200-2011's format, written by the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from captum_sfam.demo.datasets import CUB200


@pytest.fixture
def cub(tmp_path):
    root = tmp_path / "CUB_200_2011"
    (root / "images").mkdir(parents=True)
    classes, images, labels, boxes, split = [], [], [], [], []
    image_id = 0
    for c in range(8):  # 8 classes, 2 images each
        name = f"{c + 1:03d}.Bird_{c}"
        classes.append(f"{c + 1} {name}")
        (root / "images" / name).mkdir()
        for k in range(2):
            image_id += 1
            rel = f"{name}/img_{k}.jpg"
            Image.fromarray(np.full((40, 80, 3), 20 * c, np.uint8)).save(
                root / "images" / rel
            )
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            boxes.append(f"{image_id} 8.0 4.0 40.0 20.0")  # x y w h in 80x40
            split.append(f"{image_id} {k}")
    for fname, rows in [
        ("classes.txt", classes),
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("bounding_boxes.txt", boxes),
        ("train_test_split.txt", split),
    ]:
        (root / fname).write_text("\n".join(rows) + "\n")
    return root


def test_items_boxes_and_resize(cub):
    data = CUB200(cub, split="all", size=32)
    assert len(data) == 16 and len(data.classes) == 8
    image, label, box = data[3]
    assert image.shape == (3, 32, 32) and label == 1
    # x y w h = 8 4 40 20 in an 80 x 40 image -> scaled to 32 x 32
    assert box == pytest.approx((8 * 0.4, 4 * 0.8, 48 * 0.4, 24 * 0.8))


def test_paper_splits(cub):
    def classes(split):
        return sorted(set(CUB200(cub, split=split, size=8).labels()))

    assert classes("fewshot-train") == [0, 2, 4, 6]
    assert classes("fewshot-val") == [1, 5]
    assert classes("fewshot-test") == [3, 7]
    assert classes("retrieval-train") == [0, 1, 2, 3]
    assert classes("retrieval-test") == [4, 5, 6, 7]
    assert len(CUB200(cub, split="official-train")) == 8


def test_errors(cub, tmp_path):
    with pytest.raises(ValueError, match="split"):
        CUB200(cub, split="nope")
    with pytest.raises(FileNotFoundError, match="missing"):
        CUB200(tmp_path / "empty")
    (cub / "images.txt").write_text("1\n")
    with pytest.raises(ValueError, match="malformed"):
        CUB200(cub)


def test_transform_is_applied(cub):
    plain = CUB200(cub, split="fewshot-test", size=16)
    data = CUB200(cub, split="fewshot-test", size=16, transform=lambda x: x * 2 - 1)
    image, label, box = data[0]
    expected, plain_label, plain_box = plain[0]
    assert image.shape == (3, 16, 16) and (label, box) == (plain_label, plain_box)
    torch.testing.assert_close(image, expected * 2 - 1)
