r"""Localisation: the SFAM paper's box protocol, the pointing game and pair
specificity (how much of a map's mass sits on the object its support shows).

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

    8-connectivity (OpenCV contours in wsolevaluation); among components of
    equal size, the first in raster order.

    Args:
        saliency (Tensor): one (H, W) map.
        threshold (float): threshold on the min-max normalised map.
                    Default: 0.2 (``BOX_THRESHOLD``, the paper's)

    Returns:
        the (x0, y0, x1, y1) box, x1 and y1 excluded, or ``None`` for a
        constant map (nothing stands out).
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
    r"""Whether the map's arg-max (the first in raster order) lies in ``box``
    grown by ``tolerance`` pixels on every side: pixel (x, y) is a hit when
    :math:`x_0 - t \le x < x_1 + t` and :math:`y_0 - t \le y < y_1 + t`."""
    m = _map2d(saliency)
    index = int(torch.argmax(m))
    y, x = divmod(index, m.shape[1])
    x0, y0, x1, y1 = box
    return (x0 - tolerance <= x < x1 + tolerance) and (
        y0 - tolerance <= y < y1 + tolerance
    )


def _box_mass(m: Tensor, box: Box) -> float:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return float(m[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].sum())


def pair_specificity(
    map_for_a: Tensor, map_for_b: Tensor, box_a: Box, box_b: Box
) -> Dict[str, float]:
    r"""Does the map follow the support?

    A query holds objects A and B (boxes ``box_a``, ``box_b``). ``map_for_a``
    explains it against a support showing A, ``map_for_b`` against one showing
    B. With :math:`m_X(M)` the positive mass of map M inside box X,

    .. math::
        \mathrm{specificity} = \tfrac12\Big[\frac{m_A(M_a)}{m_A(M_a)+m_B(M_a)}
        + \frac{m_B(M_b)}{m_A(M_b)+m_B(M_b)}\Big],

    1 when each map sits on the matching object, 0.5 for a pair-agnostic map
    (:math:`M_a = M_b`), 0 when each sits on the other object; a map with no
    positive mass in either box counts 0.5. ``shift`` is the total-variation
    distance between the two maps' positive mass distributions, in [0, 1]:
    how much the map moves when the support is swapped (0 for a pair-agnostic
    map; 1 when one map has positive mass and the other none, 0 when neither
    has).

    Args:
        map_for_a (Tensor): (H, W) map of the query against the support of A.
        map_for_b (Tensor): (H, W) map of the query against the support of B.
        box_a (tuple): (x0, y0, x1, y1) box of A in the maps' pixels, each
                    edge rounded to the nearest pixel edge (x1, y1 excluded).
        box_b (tuple): the box of B, likewise.

    Returns:
        dict with ``specificity``, ``share_a`` (the share of ``map_for_a``'s
        boxed mass on A), ``share_b`` (of ``map_for_b``'s on B) and ``shift``.
    """
    ma = _map2d(map_for_a, "map_for_a").clamp(min=0)
    mb = _map2d(map_for_b, "map_for_b").clamp(min=0)
    if ma.shape != mb.shape:
        raise ValueError("map_for_a and map_for_b must have the same shape")

    def share(m: Tensor, own: Box, other: Box) -> float:
        a, b = _box_mass(m, own), _box_mass(m, other)
        return a / (a + b) if a + b > 0 else 0.5

    spec_a, spec_b = share(ma, box_a, box_b), share(mb, box_b, box_a)
    ta, tb = float(ma.sum()), float(mb.sum())
    if ta > 0 and tb > 0:
        shift = 0.5 * float((ma / ta - mb / tb).abs().sum())
    else:
        shift = 0.0 if ta == tb else 1.0
    return {
        "specificity": 0.5 * (spec_a + spec_b),
        "share_a": spec_a,
        "share_b": spec_b,
        "shift": shift,
    }
