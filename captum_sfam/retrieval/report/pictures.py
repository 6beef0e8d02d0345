r"""The report's pictures: thumbnails of the run's images, maps drawn over them.

Maps are upsampled bilinearly from the layer's resolution to the thumbnail,
min-max scaled per map and coloured blue (low) to red (high) (the page's
script uses the same colours for the correspondences).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...images import to_display
from ..data import ImageSource

#: thumbnail height in pixels
THUMB = 128
#: colormap anchors (jet-like): value -> RGB
_ANCHORS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLORS = np.array(
    [[0, 0, 0.55], [0, 0.45, 1], [0.1, 0.9, 0.4], [1, 0.85, 0], [0.85, 0, 0]]
)


def colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) RGB in [0, 1], blue to red."""
    return np.stack(
        [np.interp(values, _ANCHORS, _COLORS[:, c]) for c in range(3)], axis=-1
    )


def overlay(
    picture: Tensor, layer_map: Optional[Tensor], alpha: float = 0.5
) -> np.ndarray:
    """A (3, H, W) picture with a layer-resolution map (h, w) drawn over it,
    as (H, W, 3) uint8; no map: the picture."""
    rgb = picture.permute(1, 2, 0).numpy()
    if layer_map is not None:
        up = F.interpolate(
            layer_map.float()[None, None], size=picture.shape[-2:], mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()  # fmt: skip
        low, high = float(up.min()), float(up.max())
        scaled = (up - low) / (high - low) if high > low else np.zeros_like(up)
        rgb = (1 - alpha) * rgb + alpha * colorize(scaled)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def thumbnail(picture: Tensor, height: int) -> Tensor:
    h, w = picture.shape[-2:]
    width = max(1, round(w * height / h))
    return F.interpolate(
        picture[None], size=(height, width), mode="bilinear", antialias=True
    )[0].clamp(0, 1)


def save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, optimize=False, compress_level=1)


class Pictures:
    """Display thumbnails of queries and gallery items; the gallery's are
    kept (up to ``keep``), since neighbours recur across queries."""

    def __init__(
        self,
        queries: ImageSource,
        gallery: ImageSource,
        mean: Optional[Sequence[float]],
        std: Optional[Sequence[float]],
        height: int,
        keep: int = 512,
    ) -> None:
        self.queries, self.gallery = queries, gallery
        self.mean, self.std, self.height, self.keep = mean, std, height, keep
        self.cache: Dict[int, Tensor] = {}
        self.warned = False

    def _picture(self, image: Tensor) -> Tensor:
        # to_display warns for each image it has to min-max scale: the
        # report passes the first such warning on, not one per thumbnail
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            shown = to_display(image, self.mean, self.std)
        for warning in caught:
            scaled = warning.category is UserWarning
            if not (scaled and self.warned):
                warnings.warn(warning.message, warning.category, stacklevel=2)
            self.warned = self.warned or scaled
        picture = torch.from_numpy(shown).permute(2, 0, 1).float()
        return thumbnail(picture, self.height)

    def query(self, index: int) -> Tensor:
        return self._picture(self.queries.take([index])[0])

    def items(self, indices: List[int]) -> List[Tensor]:
        missing = [i for i in dict.fromkeys(indices) if i not in self.cache]
        fresh = dict(zip(missing, self.gallery.take(missing))) if missing else {}
        result = [
            self.cache[i] if i in self.cache else self._picture(fresh[i])
            for i in indices
        ]
        for i, picture in zip(indices, result):
            if i not in self.cache and len(self.cache) < self.keep:
                self.cache[i] = picture
        return result
