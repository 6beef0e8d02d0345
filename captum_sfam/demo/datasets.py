r"""CUB-200-2011 with bounding boxes and the SFAM paper's class splits.

CUB cannot be downloaded by this package; users who have it point
:class:`CUB200` at the extracted ``CUB_200_2011`` folder (``images.txt``,
``image_class_labels.txt``, ``classes.txt``, ``bounding_boxes.txt``,
``train_test_split.txt`` and ``images/``).

Splits (``split`` argument):

- ``"fewshot-train" / "fewshot-val" / "fewshot-test"``: the few-shot split of
  Chen et al., "A closer look at few-shot classification" (ICLR 2019), used by
  the SFAM paper for FRN: classes in ``classes.txt`` order, index i (0-based)
  goes to train if i % 2 == 0, val if i % 4 == 1, test if i % 4 == 3
  (100 / 50 / 50 classes).
- ``"retrieval-train" / "retrieval-test"``: the metric-learning split used for
  GPW / multi-similarity loss: the first 100 classes train, the last 100 test.
- ``"official-train" / "official-test"``: ``train_test_split.txt``.
- ``"all"``.

Each item is ``(image, label, box)``: the image resized to ``size`` x ``size``
(a (3, size, size) float tensor in [0, 1], or whatever ``transform`` returns
when given), the 0-based class index, and the box ``(x0, y0, x1, y1)`` in the
resized frame. CUB's ``bounding_boxes.txt`` holds ``x y w h`` in original
pixels; the box is scaled by the same resize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._optional import require_extra

SPLITS = (
    "all",
    "fewshot-train",
    "fewshot-val",
    "fewshot-test",
    "retrieval-train",
    "retrieval-test",
    "official-train",
    "official-test",
)
FILES = (
    "images.txt",
    "image_class_labels.txt",
    "classes.txt",
    "bounding_boxes.txt",
    "train_test_split.txt",
)


def _read_table(path: Path, fields: int) -> Dict[int, List[str]]:
    """``id value...`` lines -> {id: values}; each line needs ``fields`` values."""
    rows: Dict[int, List[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) < fields + 1:
                raise IndexError
            rows[int(parts[0])] = parts[1:]
        except (ValueError, IndexError) as error:
            raise ValueError(f"{path}:{number}: malformed line {line!r}") from error
    return rows


def _class_in_split(index: int, split: str, classes: int) -> bool:
    kind = split.split("-")[0]
    part = split.split("-")[-1]
    if kind == "fewshot":
        return {"train": index % 2 == 0, "val": index % 4 == 1, "test": index % 4 == 3}[
            part
        ]
    half = classes // 2
    return index < half if part == "train" else index >= half


class CUB200(torch.utils.data.Dataset):
    r"""CUB-200-2011 images with boxes, for the paper's localisation protocol.

    Args:
        root (str or Path): the ``CUB_200_2011`` folder.
        split (str, optional): one of :data:`SPLITS`. Default: "fewshot-test"
        size (int, optional): images are resized to ``size`` x ``size`` and
                    boxes scaled accordingly. Default: 224
        transform (Callable, optional): applied to the resized (3, size, size)
                    tensor in [0, 1] (e.g. the model's normalisation).
                    Default: None
    """

    def __init__(
        self,
        root: Union[str, Path],
        split: str = "fewshot-test",
        size: int = 224,
        transform: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> None:
        self.root = Path(root)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        missing = [f for f in FILES if not (self.root / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.root} is not a CUB_200_2011 folder: missing "
                + ", ".join(missing)
            )
        images = _read_table(self.root / "images.txt", 1)
        labels = _read_table(self.root / "image_class_labels.txt", 1)
        classes = _read_table(self.root / "classes.txt", 1)
        boxes = _read_table(self.root / "bounding_boxes.txt", 4)
        official = _read_table(self.root / "train_test_split.txt", 1)
        class_ids = sorted(classes)
        self.classes = [classes[c][0] for c in class_ids]
        position = {c: i for i, c in enumerate(class_ids)}
        self.size, self.transform, self.split = size, transform, split
        self.samples: List[Tuple[Path, int, Tuple[float, float, float, float]]] = []
        for image_id in sorted(images):
            label = position[int(labels[image_id][0])]
            if split.startswith("official"):
                is_train = official[image_id][0] == "1"
                if is_train != split.endswith("train"):
                    continue
            elif split != "all" and not _class_in_split(label, split, len(class_ids)):
                continue
            x, y, w, h = (float(v) for v in boxes[image_id])
            path = self.root / "images" / images[image_id][0]
            self.samples.append((path, label, (x, y, x + w, y + h)))

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> List[int]:
        return [label for _, label, _ in self.samples]

    def __getitem__(self, index: int) -> Tuple[Tensor, int, Tuple[float, ...]]:
        require_extra("PIL", "pillow")
        from PIL import Image

        path, label, (x0, y0, x1, y1) = self.samples[index]
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            width, height = rgb.size
            rgb = rgb.resize((self.size, self.size), Image.BILINEAR)
            array = np.asarray(rgb, dtype=np.float32) / 255.0
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
        if self.transform is not None:
            image = self.transform(image)
        sx, sy = self.size / width, self.size / height
        return image, label, (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
