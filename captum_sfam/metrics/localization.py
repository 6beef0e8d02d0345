r"""Localisation: the SFAM paper's box protocol and the pointing game.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the map's frame, half-open
(``x1``, ``y1`` excluded). Maps are (H, W) tensors at the image's resolution.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

Box = Tuple[float, float, float, float]
#: the localisation protocol's threshold on the min-max normalised map (paper)
BOX_THRESHOLD = 0.2


def _scipy(module: str) -> ModuleType:
    """``module`` of scipy, or an ImportError naming the ``eval`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            "scipy is needed for captum_sfam.metrics: pip install 'captum-sfam[eval]'"
        ) from error


def _map2d(saliency: Tensor, name: str = "saliency") -> Tensor:
    if not isinstance(saliency, Tensor):
        raise TypeError(f"{name} must be a Tensor")
    m = saliency.detach().float().cpu()
    while m.dim() > 2 and m.shape[0] == 1:
        m = m[0]
    if m.dim() != 2:
        raise ValueError(f"{name} must be one (H, W) map, got {tuple(saliency.shape)}")
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return m


def normalize_map(saliency: Tensor) -> Tensor:
    """Min-max normalisation of one map to [0, 1]; a constant map gives zeros."""
    m = _map2d(saliency)
    low, span = m.min(), m.max() - m.min()
    return (m - low) / span if float(span) > 0 else torch.zeros_like(m)


def box_from_map(saliency: Tensor, threshold: float = BOX_THRESHOLD) -> Optional[Box]:
    r"""Box of the largest connected component of ``normalize(map) >= threshold``.

    8-connectivity (OpenCV contours in wsolevaluation); ``None`` for a constant
    map (nothing stands out).
    """
    ndimage = _scipy("scipy.ndimage")
    norm = normalize_map(saliency).numpy()
    if not norm.any():
        return None
    mask = norm >= threshold
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
    ys, xs = np.nonzero(labels == int(np.argmax(sizes)) + 1)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def box_iou(a: Optional[Box], b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 if ``a`` is None."""
    if a is None:
        return 0.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def localization(
    maps: Sequence[Tensor],
    boxes: Sequence[Box],
    correct: Optional[Sequence[bool]] = None,
    threshold: float = BOX_THRESHOLD,
    iou_threshold: float = 0.5,
) -> Dict[str, object]:
    r"""The SFAM paper's localisation protocol (its Tables 1-2).

    Args:
        maps: (H, W) maps at image resolution, one per sample.
        boxes: ground-truth boxes in the same frame.
        correct (optional): whether the model's decision was right for each
                    sample; only those count (the paper's "correctly predicted
                    samples"). Default: all.
        threshold (float): binarisation threshold on the min-max normalised
                    map. Default: 0.2 (the paper's)
        iou_threshold (float): IoU for a hit. Default: 0.5

    Returns:
        dict with ``mean_iou``, ``accuracy`` (share with IoU >= iou_threshold),
        ``count`` (samples used) and ``ious`` (per sample used).
    """
    if len(maps) != len(boxes):
        raise ValueError("maps and boxes must have the same length")
    keep = [True] * len(maps) if correct is None else [bool(c) for c in correct]
    if len(keep) != len(maps):
        raise ValueError("correct must have one entry per map")
    ious = [
        box_iou(box_from_map(m, threshold), tuple(map(float, b)))  # type: ignore[arg-type]
        for m, b, k in zip(maps, boxes, keep)
        if k
    ]
    if not ious:
        return {
            "mean_iou": float("nan"),
            "accuracy": float("nan"),
            "count": 0,
            "ious": [],
        }
    return {
        "mean_iou": float(np.mean(ious)),
        "accuracy": float(np.mean([iou >= iou_threshold for iou in ious])),
        "count": len(ious),
        "ious": ious,
    }


def pointing_game(saliency: Tensor, box: Box, tolerance: float = 0.0) -> bool:
    """Whether the map's arg-max lies in ``box`` grown by ``tolerance`` pixels."""
    m = _map2d(saliency)
    index = int(torch.argmax(m))
    y, x = divmod(index, m.shape[1])
    x0, y0, x1, y1 = box
    return (x0 - tolerance <= x < x1 + tolerance) and (
        y0 - tolerance <= y < y1 + tolerance
    )
