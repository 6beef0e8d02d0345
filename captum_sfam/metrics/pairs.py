r"""Pair metrics: deletion and insertion of the pair similarity (RISE and its pair
forms: conditional, simultaneous, contrastive), on one perturbation engine."""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..similarity import embed, paired_similarity, prototypes

PairScore = Callable[[Tensor, Tensor], Tensor]
SUBSTRATES = ("zeros", "blur")


def pair_similarity_fn(
    model: Callable[..., Tensor], metric: str = "cosine"
) -> PairScore:
    r"""The pair score the pair metrics perturb: :math:`s(q, S)`.

    Args:
        model (Callable): embedding model, images (B, C, H, W) -> (B, D)
                    (or (B, ...), flattened).
        metric (str): "cosine" or "euclidean" (negative squared distance).
                    Default: "cosine"

    Returns:
        ``pair_score(queries, supports)``: queries (B, C, H, W) and supports
        (B, K, C, H', W') -> (B,) similarities of each query to the mean
        embedding of its K shots (Eq. 1), computed without a graph.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")

    def pair_score(queries: Tensor, supports: Tensor) -> Tensor:
        embeddings = embed(model, queries)
        return paired_similarity(embeddings, prototypes(model, supports), metric)

    return pair_score


def _images(x: Tensor, name: str, shots: bool) -> Tensor:
    """One image (C, H, W) or (1, C, H, W) -> (1, C, H, W); with ``shots``
    also K shots (K, C, H, W) or (1, K, C, H, W) -> (K, C, H, W). Checked."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating point Tensor")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if shots and x.dim() == 5 and x.shape[0] == 1:
        x = x[0]
    count = x.shape[0] if x.dim() == 4 else -1
    if count < 1 or (count > 1 and not shots) or x.shape[-2:].numel() == 0:
        want = "(C, H, W) or K shots (K, C, H, W)" if shots else "one (C, H, W) image"
        raise ValueError(f"{name} must be {want}, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def _pair_inputs(
    pair_score: PairScore, query: Tensor, **supports: Tensor
) -> List[Tensor]:
    """The checked query (1, C, H, W), then each support (K, C, H', W')."""
    if not callable(pair_score):
        raise TypeError("pair_score must be callable")
    checked = [_images(query, "query", shots=False)]
    return checked + [_images(x, name, shots=True) for name, x in supports.items()]


def _maps(saliency: Tensor, images: Tensor, name: str) -> Tensor:
    """One (H, W) map per image of ``images`` (N, C, H, W) -> (N, H, W) float."""
    if not isinstance(saliency, Tensor):
        raise TypeError(f"{name} must be a Tensor")
    m = saliency.detach().float().to(images.device)
    count, size = images.shape[0], tuple(images.shape[-2:])
    if count == 1:
        while m.dim() > 2 and m.shape[0] == 1:
            m = m[0]
        m = m.unsqueeze(0)
    elif m.dim() == 4 and m.shape[1] == 1:  # (K, 1, H, W), Captum's layout
        m = m[:, 0]
    if m.dim() != 3 or m.shape[0] != count or tuple(m.shape[-2:]) != size:
        want = size if count == 1 else (count, *size)
        raise ValueError(
            f"{name} {tuple(saliency.shape)} must match its images: one {want} map"
            + ("" if count == 1 else " per shot")
        )
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return m


class _Track:
    """Images (N, C, H, W) perturbed pixel by pixel in the order of their maps."""

    def __init__(self, images: Tensor, maps: Tensor, steps: int) -> None:
        self.images = images
        count, height, width = maps.shape
        order = torch.argsort(maps.flatten(1), dim=1, descending=True, stable=True)
        # rank[n, p]: when pixel p of image n is taken (0 = first)
        self.rank = torch.empty_like(order)
        positions = torch.arange(height * width, device=order.device)
        self.rank.scatter_(1, order, positions.expand(count, -1))
        self.per_step = int(np.ceil(height * width / steps))
        self.shape = (count, 1, height, width)

    def frame(self, step: int, base: Tensor, fill: Tensor) -> Tensor:
        mask = (self.rank < step * self.per_step).to(base.dtype).reshape(self.shape)
        return base * (1 - mask) + fill * mask


def _curves(
    score: Callable[..., Tensor],
    ordered: Sequence[Tuple[Tensor, Tensor, str]],
    steps: int,
    substrate: str,
    blur_sigma: float,
    batch_size: int,
) -> Dict[str, object]:
    r"""Deletion and insertion curves of ``score`` over all images at once.

    Each ``(images, saliency, name)`` of ``ordered`` is one track: at step t
    its images have their first :math:`t\lceil HW/steps\rceil` pixels (their
    own H, W) by decreasing saliency deleted (or inserted). The first track is
    one query image: ``score(queries, *others)`` takes its frames
    (S, C, H, W), then one (S, N_i, C, H_i, W_i) tensor per further track, and
    returns (S,) scores.
    """
    tracks = [_Track(x, _maps(m, x, name), max(steps, 1)) for x, m, name in ordered]
    if substrate not in SUBSTRATES:
        raise ValueError(f"substrate must be 'zeros' or 'blur', got {substrate!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    blurred = [_gaussian_blur(t.images, blur_sigma) for t in tracks]
    zeros = [torch.zeros_like(t.images) for t in tracks]
    deletion_fill = zeros if substrate == "zeros" else blurred

    def curve(bases: List[Tensor], fills: List[Tensor]) -> Tensor:
        scores: List[Tensor] = []
        for start in range(0, steps + 1, batch_size):
            chunk = range(start, min(start + batch_size, steps + 1))
            frames = [
                torch.stack([t.frame(s, b, f) for s in chunk])
                for t, b, f in zip(tracks, bases, fills)
            ]
            with torch.no_grad():
                out = score(frames[0][:, 0], *frames[1:])
            if not isinstance(out, Tensor) or tuple(out.shape) != (len(chunk),):
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out)
                raise ValueError(
                    f"the score function must return one score per image, "
                    f"({len(chunk)},), got {got}"
                )
            out = out.detach().cpu().to(torch.promote_types(out.dtype, torch.float32))
            if not bool(torch.isfinite(out).all()):
                raise ValueError("the score function returned NaN or inf values")
            scores.append(out)
        return torch.cat(scores)

    images = [t.images for t in tracks]
    deletion = curve(images, deletion_fill)
    insertion = curve(blurred, images)
    return {  # trapezoid areas, the steps + 1 scores evenly on [0, 1]
        "deletion_auc": float(torch.trapezoid(deletion, dx=1.0 / steps)),
        "insertion_auc": float(torch.trapezoid(insertion, dx=1.0 / steps)),
        "deletion_curve": deletion,
        "insertion_curve": insertion,
    }


def _against(pair_score: PairScore, support: Tensor) -> Callable[[Tensor], Tensor]:
    """Queries (S, C, H, W) -> (S,) pair scores against the whole ``support``."""

    def score(queries: Tensor) -> Tensor:
        return pair_score(queries, support.expand(queries.shape[0], *support.shape))

    return score


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
        (tensors of ``steps + 1`` scores, float32 or wider).
    """
    if not callable(score_fn):
        raise TypeError("score_fn must be callable")
    ordered = [(_images(image, "image", shots=False), saliency, "saliency")]
    return _curves(score_fn, ordered, steps, substrate, blur_sigma, batch_size)


def conditional_deletion_insertion(
    pair_score: PairScore,
    query: Tensor,
    support: Tensor,
    query_saliency: Tensor,
    steps: int = 32,
    substrate: str = "zeros",
    blur_sigma: float = 5.0,
    batch_size: int = 16,
) -> Dict[str, object]:
    r"""Deletion and insertion of the query, the support kept intact.

    The score is :math:`s(q_t, S)`: the query loses (or regains) its pixels by
    decreasing ``query_saliency`` while the support stays whole. This is RISE
    on the query *conditioned on* its support: it asks whether the query map
    finds the evidence for this particular match.

    Args:
        pair_score (Callable): queries (B, C, H, W), supports (B, K, C, H', W')
                    -> (B,) pair scores, e.g. :func:`pair_similarity_fn`.
        query (Tensor): (C, H, W) or (1, C, H, W).
        support (Tensor): (C, H', W'), or K shots (K, C, H', W').
        query_saliency (Tensor): (H, W) map at the query's resolution.
        steps, substrate, blur_sigma, batch_size: as in
                    :func:`deletion_insertion`.

    Returns:
        dict with ``deletion_auc`` (lower is better), ``insertion_auc``
        (higher is better) and the two curves (``steps + 1`` scores, float32
        or wider).
    """
    q, s = _pair_inputs(pair_score, query, support=support)
    ordered = [(q, query_saliency, "query_saliency")]
    score = _against(pair_score, s)
    return _curves(score, ordered, steps, substrate, blur_sigma, batch_size)


def simultaneous_deletion_insertion(
    pair_score: PairScore,
    query: Tensor,
    support: Tensor,
    query_saliency: Tensor,
    support_saliency: Tensor,
    steps: int = 32,
    substrate: str = "zeros",
    blur_sigma: float = 5.0,
    batch_size: int = 16,
) -> Dict[str, object]:
    r"""Deletion and insertion of both images, each by its own map.

    The score is :math:`s(q_t, S_t)`: at step t the query and every support
    shot have lost (or regained) the same fraction t/steps of their pixels,
    each in the order of its own map. This scores the pair of maps together
    (what the two images have in common should go first).

    Args:
        pair_score, query, support: as in
                    :func:`conditional_deletion_insertion`.
        query_saliency (Tensor): (H, W) map of the query.
        support_saliency (Tensor): (H', W') map of a one-shot support, or
                    (K, H', W'), one map per shot.
        steps, substrate, blur_sigma, batch_size: as in
                    :func:`deletion_insertion`.

    Returns:
        dict as :func:`conditional_deletion_insertion`'s: the AUCs and the
        curves of :math:`s(q_t, S_t)`.
    """
    q, s = _pair_inputs(pair_score, query, support=support)
    ordered = [(q, query_saliency, "query_saliency")]
    ordered.append((s, support_saliency, "support_saliency"))
    return _curves(pair_score, ordered, steps, substrate, blur_sigma, batch_size)


def contrastive_deletion_insertion(
    pair_score: PairScore,
    query: Tensor,
    support: Tensor,
    contrast: Tensor,
    saliency: Tensor,
    steps: int = 32,
    substrate: str = "zeros",
    blur_sigma: float = 5.0,
    batch_size: int = 16,
) -> Dict[str, object]:
    r"""Deletion and insertion of the query scored by a similarity margin.

    The score is the margin :math:`s(q_t, S) - s(q_t, S')` of the support
    over the contrast (few-shot: the predicted class against the runner-up;
    retrieval: rank 1 against rank 2). A map that answers "why S and not S'"
    puts first the pixels that make the query closer to S than to S', so
    deleting them drops the margin fastest (low deletion AUC) and inserting
    them raises it fastest (high insertion AUC). A pair-agnostic map, or one
    that explains S alone, deletes evidence S and S' share and moves the
    margin little.

    Args:
        pair_score, query: as in :func:`conditional_deletion_insertion`.
        support (Tensor): (C, H', W') or (K, C, H', W'), the support explained.
        contrast (Tensor): (C, H'', W'') or (K', C, H'', W''), the alternative.
        saliency (Tensor): (H, W) map of the query (a contrastive map).
        steps, substrate, blur_sigma, batch_size: as in
                    :func:`deletion_insertion`.

    Returns:
        dict as :func:`conditional_deletion_insertion`'s, of the margin.
    """
    q, s, c = _pair_inputs(pair_score, query, support=support, contrast=contrast)
    for_support, for_contrast = _against(pair_score, s), _against(pair_score, c)

    def margin(queries: Tensor) -> Tensor:
        return for_support(queries) - for_contrast(queries)

    ordered = [(q, saliency, "saliency")]
    return _curves(margin, ordered, steps, substrate, blur_sigma, batch_size)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) images: radius max(1, int(3 sigma)),
    edge pixels repeated; ``sigma <= 0`` copies."""
    if sigma <= 0:
        return x.clone()
    radius, channels = max(1, int(3 * sigma)), x.shape[1]
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kx = (kernel / kernel.sum()).reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    rows = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(rows, kx, groups=channels)
    columns = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(columns, kx.transpose(2, 3), groups=channels)
