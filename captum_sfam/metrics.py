r"""Evaluation protocols for pair explanations.

- :func:`localization`: the SFAM paper's protocol (CAM, Zhou et al. 2016;
  clovaai/wsolevaluation): min-max normalise the upsampled map, threshold at
  0.2, box of the largest connected component, IoU with the ground-truth box;
  mean IoU and accuracy at IoU >= 0.5 over the correctly predicted samples.
- :func:`pointing_game` (Zhang et al., ECCV 2016): is the arg-max inside the
  ground-truth box (with a tolerance in pixels, 15 in TorchRay)?
- :func:`pair_specificity`: on a query holding two objects, explained once
  against a support of each, the share of each map's positive mass on the
  object that matches its support; a pair-agnostic map scores 0.5. Also how
  much the map moves when the support is swapped.
- :func:`deletion_insertion` (RISE, Petsiuk et al., BMVC 2018) with the pair's
  similarity as the score.
- :func:`sanity_check` (Adebayo et al., NeurIPS 2018; SFAM paper 4.4):
  cascading randomisation from the top layer down, Spearman rank correlation
  with the original map at each step.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the map's frame, half-open
(``x1``, ``y1`` excluded). Maps are (H, W) tensors at the image's resolution
(upsample layer maps with ``LayerAttribution.interpolate(..., "bilinear")``).
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

Box = Tuple[float, float, float, float]


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


def box_from_map(saliency: Tensor, threshold: float = 0.2) -> Optional[Box]:
    r"""Box of the largest connected component of ``normalize(map) >= threshold``.

    8-connectivity (OpenCV contours in wsolevaluation); ``None`` for a constant
    map (nothing stands out).
    """
    from scipy import ndimage

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
    threshold: float = 0.2,
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


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two maps (average ranks for ties)."""
    from scipy.stats import spearmanr

    x, y = (
        a.detach().flatten().double().cpu().numpy(),
        b.detach().flatten().double().cpu().numpy(),
    )
    if x.shape != y.shape:
        raise ValueError("the two maps must have the same number of elements")
    if np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0  # a constant map has no ranking; report no correlation
    return float(spearmanr(x, y).statistic)


def sanity_check(
    model: Module,
    explain: Callable[[Module], Tensor],
    layers: Sequence[str],
    seed: int = 0,
) -> List[Dict[str, object]]:
    r"""Cascading randomisation (Adebayo et al. 2018; SFAM paper section 4.4).

    The named modules are re-initialised one after the other, from the top of
    the network down, cumulatively, on a copy of ``model`` (the original is
    untouched). After each step the explanation is recomputed on the
    randomised copy (the support embedding too: ``explain`` receives the copy)
    and compared with the original map.

    Caveat: randomising layers above the layer an activation-only method reads
    (e.g. an embedding head above SFAM's layer) cannot change its map: a high
    correlation there is expected, not a failure.

    Args:
        model (Module): the trained model.
        explain: maps a model to one map (any shape), e.g.
                    ``lambda m: LayerSFAM(m, m.layer4).attribute(q, s)[0, 0]``.
        layers: dotted module names, top first.
        seed (int): seed of the re-initialisation. Default: 0

    Returns:
        one dict per step: ``layer`` (the last randomised), ``spearman`` and
        ``spearman_abs`` (on absolute values).
    """
    original = explain(model).detach()
    randomized = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    rows: List[Dict[str, object]] = []
    for name in layers:
        try:
            module = randomized.get_submodule(name)
        except AttributeError as error:
            raise ValueError(f"unknown layer {name!r}") from error
        with torch.no_grad():
            for param in module.parameters():
                fan = param[0].numel() if param.dim() > 1 else param.numel()
                std = 1.0 / max(fan, 1) ** 0.5
                param.copy_(torch.randn(param.shape, generator=generator) * std)
        current = explain(randomized).detach()
        rows.append(
            {
                "layer": name,
                "spearman": spearman(original, current),
                "spearman_abs": spearman(original.abs(), current.abs()),
            }
        )
    return rows
