r"""Pair metrics: specificity to the support, deletion/insertion of the similarity."""

from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .localization import Box, _map2d


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
    (:math:`M_a = M_b`), 0 when each sits on the other object. ``shift`` is the
    total-variation distance between the two maps' positive mass
    distributions, in [0, 1]: how much the map moves when the support is
    swapped (0 for a pair-agnostic map).
    """
    ma, mb = (
        _map2d(map_for_a, "map_for_a").clamp(min=0),
        _map2d(map_for_b, "map_for_b").clamp(min=0),
    )
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


def _auc(curve: Tensor) -> float:
    """Trapezoid area under a curve sampled evenly on [0, 1]."""
    if curve.numel() < 2:
        return float(curve.sum())
    return float(torch.trapezoid(curve, dx=1.0 / (curve.numel() - 1)))


def deletion_insertion(
    score_fn: Callable[[Tensor], Tensor],
    image: Tensor,
    saliency: Tensor,
    steps: int = 32,
    substrate: str = "zeros",
    blur_sigma: float = 5.0,
    batch_size: int = 16,
) -> Dict[str, object]:
    r"""RISE's deletion and insertion curves with the pair similarity as score.

    Pixels are taken by decreasing saliency, ``H*W/steps`` per step. Deletion
    replaces them with zeros (or a blurred image); insertion starts from a
    blurred image (or zeros) and puts the original pixels back. Lower deletion
    AUC and higher insertion AUC mean a more faithful map.

    Args:
        score_fn: maps a batch of images (B, C, H, W) to scores (B,), e.g.
                    the similarity of each image to a fixed support.
        image (Tensor): (C, H, W) or (1, C, H, W) query image.
        saliency (Tensor): (H, W) map at the image's resolution.
        steps (int): number of steps. Default: 32
        substrate (str): what deleted pixels become: "zeros" (RISE) or
                    "blur"; insertion always starts from the blurred image.
                    Default: "zeros"
        blur_sigma (float): Gaussian blur sigma in pixels. Default: 5.0
        batch_size (int): perturbed images scored at once. Default: 16

    Returns:
        dict with ``deletion_auc``, ``insertion_auc`` and the two curves
        (tensors of ``steps + 1`` scores).
    """
    if substrate not in ("zeros", "blur"):
        raise ValueError(f"substrate must be 'zeros' or 'blur', got {substrate!r}")
    if steps < 1:
        raise ValueError("steps must be at least 1")
    x = image if image.dim() == 4 else image.unsqueeze(0)
    m = _map2d(saliency)
    height, width = x.shape[-2:]
    if tuple(m.shape) != (height, width):
        raise ValueError(
            f"saliency {tuple(m.shape)} must match the image {height, width}"
        )
    blurred = _gaussian_blur(x, blur_sigma)
    deletion_fill = torch.zeros_like(x) if substrate == "zeros" else blurred
    order = torch.argsort(m.flatten(), descending=True, stable=True).to(x.device)
    per_step = int(np.ceil(height * width / steps))

    def curve(base: Tensor, fill: Tensor) -> Tensor:
        scores: List[Tensor] = []
        frames = []
        for step in range(steps + 1):
            mask = torch.zeros(height * width, device=x.device, dtype=x.dtype)
            mask[order[: step * per_step]] = 1.0
            mask = mask.reshape(1, 1, height, width)
            frames.append(base * (1 - mask) + fill * mask)
            if len(frames) == batch_size or step == steps:
                with torch.no_grad():
                    scores.append(score_fn(torch.cat(frames)).detach().float().cpu())
                frames = []
        return torch.cat(scores)

    deletion = curve(x, deletion_fill)
    insertion = curve(blurred, x)
    return {
        "deletion_auc": _auc(deletion),
        "insertion_auc": _auc(insertion),
        "deletion_curve": deletion,
        "insertion_curve": insertion,
    }


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    if sigma <= 0:
        return x.clone()
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    kx = kernel.reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    ky = kernel.reshape(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    out = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="replicate"), kx, groups=channels
    )
    return F.conv2d(
        F.pad(out, (0, 0, radius, radius), mode="replicate"), ky, groups=channels
    )
