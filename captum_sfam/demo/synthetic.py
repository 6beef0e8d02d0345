r"""A procedural few-shot dataset with ground-truth boxes, generated in code.

Each class is a (shape, colour, texture) combination; an image shows one
object of its class, pasted at a random position and scale on a cluttered
background (random coloured blobs and lines), with the object's bounding box.
Train and test classes are disjoint, as in few-shot and retrieval protocols.
Everything is deterministic given the seed: image ``i`` of a split is drawn
from its own generator.

:class:`TwoObjectScenes` puts two objects of different classes side by side on
one background, for the pair-specificity metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "bar", "frame")
COLOURS = (
    (0.9, 0.1, 0.1),
    (0.1, 0.8, 0.1),
    (0.15, 0.3, 0.95),
    (0.95, 0.85, 0.1),
    (0.9, 0.2, 0.9),
    (0.1, 0.85, 0.9),
    (0.95, 0.55, 0.1),
    (0.95, 0.95, 0.95),
)
TEXTURES = ("solid", "stripes", "dots", "checker")
Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class ObjectClass:
    shape: int
    colour: int
    texture: int

    @property
    def name(self) -> str:
        r, g, b = COLOURS[self.colour]
        return (
            f"{TEXTURES[self.texture]} {SHAPES[self.shape]} ({r:.1f},{g:.1f},{b:.1f})"
        )


def all_classes() -> List[ObjectClass]:
    return [
        ObjectClass(s, c, t)
        for s in range(len(SHAPES))
        for c in range(len(COLOURS))
        for t in range(len(TEXTURES))
    ]


def class_split(
    seed: int = 0, test_fraction: float = 0.3
) -> Tuple[List[int], List[int]]:
    """Disjoint train / test class indices into :func:`all_classes` (256 classes)."""
    count = len(all_classes())
    order = torch.randperm(
        count, generator=torch.Generator().manual_seed(seed)
    ).tolist()
    test = int(round(count * test_fraction))
    return sorted(order[test:]), sorted(order[:test])


def _shape_mask(shape: int, size: int) -> Tensor:
    """(size, size) mask in [0, 1] of a shape filling its box."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    r = torch.sqrt(x**2 + y**2)
    name = SHAPES[shape]
    if name == "disc":
        mask = r <= 1.0
    elif name == "square":
        mask = (x.abs() <= 0.9) & (y.abs() <= 0.9)
    elif name == "triangle":
        mask = (y >= -0.9) & (y <= 0.9) & (x.abs() <= (y + 0.9) / 1.8 * 0.95)
    elif name == "cross":
        mask = ((x.abs() <= 0.3) | (y.abs() <= 0.3)) & (x.abs() <= 1) & (y.abs() <= 1)
    elif name == "ring":
        mask = (r <= 1.0) & (r >= 0.55)
    elif name == "diamond":
        mask = (x.abs() + y.abs()) <= 1.0
    elif name == "bar":
        mask = (x.abs() <= 1.0) & (y.abs() <= 0.4)
    else:  # frame
        mask = (
            (x.abs() <= 0.95)
            & (y.abs() <= 0.95)
            & ((x.abs() >= 0.6) | (y.abs() >= 0.6))
        )
    return mask.float()


def _texture(texture: int, size: int, colour: Tensor) -> Tensor:
    """(3, size, size) textured colour."""
    idx = torch.arange(size)
    y, x = torch.meshgrid(idx, idx, indexing="ij")
    name = TEXTURES[texture]
    period = max(2, size // 6)
    if name == "solid":
        pattern = torch.ones(size, size)
    elif name == "stripes":
        pattern = ((x + y) // period % 2).float() * 0.65 + 0.35
    elif name == "dots":
        pattern = (
            ((x % period) - period / 2) ** 2 + ((y % period) - period / 2) ** 2
            <= (period / 3) ** 2
        ).float() * 0.65 + 0.35
    else:
        pattern = ((x // period + y // period) % 2).float() * 0.65 + 0.35
    return colour.view(3, 1, 1) * pattern


def _background(size: int, gen: torch.Generator) -> Tensor:
    """Clutter: a tinted gradient, soft blobs and thin lines, low contrast."""
    base = torch.rand(3, 1, 1, generator=gen) * 0.4 + 0.2
    coords = torch.linspace(0, 1, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    angle = float(torch.rand(1, generator=gen)) * 2 * math.pi
    image = base + 0.15 * (math.cos(angle) * x + math.sin(angle) * y - 0.5)
    image = image.expand(3, size, size).clone()
    for _ in range(int(torch.randint(4, 9, (1,), generator=gen))):
        cx, cy = torch.rand(2, generator=gen).tolist()
        radius = float(torch.rand(1, generator=gen)) * 0.2 + 0.05
        blob = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        tint = torch.rand(3, 1, 1, generator=gen) * 0.5 - 0.25
        image = image + tint * blob
    for _ in range(int(torch.randint(2, 6, (1,), generator=gen))):
        a, b, c = (torch.rand(3, generator=gen) * 2 - 1).tolist()
        line = ((a * (x - 0.5) + b * (y - 0.5) + c * 0.3).abs() < 0.01).float()
        image = image + (torch.rand(3, 1, 1, generator=gen) - 0.5) * 0.5 * line
    image = image + torch.randn(3, size, size, generator=gen) * 0.03
    return image.clamp(0, 1)


def paste(
    image: Tensor,
    cls: ObjectClass,
    box: Tuple[int, int, int],
) -> Tensor:
    """Paste an object of ``cls`` with top-left (x, y) and side ``s``, in place."""
    x0, y0, side = box
    mask = _shape_mask(cls.shape, side)
    colour = torch.tensor(COLOURS[cls.colour])
    obj = _texture(cls.texture, side, colour)
    region = image[:, y0 : y0 + side, x0 : x0 + side]
    region.mul_(1 - mask).add_(obj * mask)
    return image


def _tight_box(cls: ObjectClass, x0: int, y0: int, side: int) -> Box:
    mask = _shape_mask(cls.shape, side)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return (
        float(x0 + int(xs.min())),
        float(y0 + int(ys.min())),
        float(x0 + int(xs.max()) + 1),
        float(y0 + int(ys.max()) + 1),
    )


class ShapesFewShot(torch.utils.data.Dataset):
    r"""Procedural few-shot dataset: (image, label, box) items.

    Args:
        split (str, optional): "train" or "test" classes. Default: "train"
        images_per_class (int, optional): Default: 40
        size (int, optional): image side in pixels. Default: 64
        seed (int, optional): the class split and every image. Default: 0
        scale (tuple, optional): object side as a fraction of ``size``.
                    Default: (0.3, 0.55)

    ``label`` indexes :attr:`classes` (the split's classes); ``box`` is the
    object's tight ``(x0, y0, x1, y1)`` box. Images are (3, size, size) in
    [0, 1].
    """

    def __init__(
        self,
        split: str = "train",
        images_per_class: int = 40,
        size: int = 64,
        seed: int = 0,
        scale: Tuple[float, float] = (0.3, 0.55),
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        train, test = class_split(seed)
        catalogue = all_classes()
        self.class_ids = train if split == "train" else test
        self.classes = [catalogue[i] for i in self.class_ids]
        self.split, self.size, self.seed, self.scale = split, size, seed, scale
        self.images_per_class = images_per_class

    def __len__(self) -> int:
        return len(self.classes) * self.images_per_class

    def label(self, index: int) -> int:
        return index // self.images_per_class

    def _generator(self, index: int, salt: int = 0) -> torch.Generator:
        code = (self.seed * 1_000_003 + index * 7919 + salt * 104_729) % (2**62)
        return torch.Generator().manual_seed(code + (self.split == "test") * 17)

    def _placement(self, gen: torch.Generator, lo: int = 0, hi: Optional[int] = None):
        hi = self.size if hi is None else hi
        a, b = self.scale
        side = int(self.size * (a + (b - a) * float(torch.rand(1, generator=gen))))
        side = max(6, min(side, hi - lo))
        x0 = lo + int(torch.randint(0, hi - lo - side + 1, (1,), generator=gen))
        y0 = int(torch.randint(0, self.size - side + 1, (1,), generator=gen))
        return x0, y0, side

    def __getitem__(self, index: int) -> Tuple[Tensor, int, Box]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        gen = self._generator(index)
        label = self.label(index)
        image = _background(self.size, gen)
        x0, y0, side = self._placement(gen)
        paste(image, self.classes[label], (x0, y0, side))
        return image, label, _tight_box(self.classes[label], x0, y0, side)

    def images_of(self, label: int) -> List[int]:
        start = label * self.images_per_class
        return list(range(start, start + self.images_per_class))


class TwoObjectScenes(torch.utils.data.Dataset):
    r"""Two objects of different classes, one in each half of the image.

    Item: (image, (label_a, label_b), (box_a, box_b)) with A in the left half
    and B in the right half. Supports for A and B come from the underlying
    :class:`ShapesFewShot` (``scenes.base``), images of the same classes.
    """

    def __init__(
        self, base: ShapesFewShot, count: int = 100, seed: Optional[int] = None
    ) -> None:
        self.base, self.count = base, count
        self.seed = base.seed if seed is None else seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        base = self.base
        gen = base._generator(index, salt=1 + self.seed)
        classes = len(base.classes)
        a = int(torch.randint(0, classes, (1,), generator=gen))
        b = (a + 1 + int(torch.randint(0, classes - 1, (1,), generator=gen))) % classes
        image = _background(base.size, gen)
        half = base.size // 2
        xa, ya, sa = base._placement(gen, 0, half)
        xb, yb, sb = base._placement(gen, half, base.size)
        paste(image, base.classes[a], (xa, ya, sa))
        paste(image, base.classes[b], (xb, yb, sb))
        boxes = (
            _tight_box(base.classes[a], xa, ya, sa),
            _tight_box(base.classes[b], xb, yb, sb),
        )
        return image, (a, b), boxes
