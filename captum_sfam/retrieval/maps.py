r"""The maps of one batch of queries, written to the batch's shard.

Forward-only members explain a batch against the union of its neighbours with
one ``attribute_pairs`` call (each distinct neighbour runs through the network
once); gradient members (CG-RAM, Grad-FAM) with one backward pass per pair, in
batches of ``batch_size`` pairs. With ``contrast``, each query also gets its
map of rank 1 against rank 2.

For the audit (see :mod:`.audit`), the shard also holds each pair's
point-to-point correspondences at the layer's resolution (the member's
``point_to_point`` with its default reading, from one more forward pass of
the batch's queries and neighbours up to the layer), and, with labels, the
contrastive map of each wrong neighbour ranked above the query's first true
match: ``attribute(query, support=wrong, contrast=true)``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..methods import ForwardPairAttribution, supports_contrast
from .audit import QueryAudit, wrong_above_true
from .settings import RunSettings
from .store import MAP_DTYPE, save_tensors, shard_name

Activations = Tuple[Tensor, Tensor, Tensor]


@contextmanager
def _kept_features(method: ForwardPairAttribution) -> Iterator[Dict[str, Any]]:
    """Keep the layer features of the member's passes while in the block
    (the activations ``attribute_pairs`` computes anyway, so that the point
    maps need no forward pass of their own); the member is left as it was,
    exceptions included."""
    kept: Dict[str, Any] = {}
    own = method.__dict__.get("_features")
    original = method._features

    def keep(*args: Any, **kwargs: Any) -> Any:
        kept["features"] = original(*args, **kwargs)
        return kept["features"]

    method._features = keep  # type: ignore[method-assign]
    try:
        yield kept
    finally:
        if own is None:
            del method._features
        else:
            method._features = own  # type: ignore[method-assign]


def _pair_maps(
    settings: RunSettings, images: Tensor, neighbours: Tensor
) -> Tuple[Tensor, Tensor, Optional[Activations]]:
    """Maps of each query (n) against each of its k neighbours: query maps
    (n, k, h, w) and neighbour maps (n, k, h', w'); for forward-only members
    also the activations of that pass: queries (n, N, h, w), distinct
    neighbours (U, N, h', w') and each pair's neighbour row (n k,)."""
    method, gallery, device = settings.method, settings.gallery, settings.device
    relu, batch_size = settings.relu_attributions, settings.batch_size
    n, k = neighbours.shape
    if isinstance(method, ForwardPairAttribution):  # it has attribute_pairs
        # each distinct neighbour of the batch runs through the network once
        unique, inverse = torch.unique(neighbours.flatten().cpu(), return_inverse=True)
        items = gallery.take(unique.tolist()).to(device)
        with _kept_features(method) as kept:
            q_maps, g_maps = method.attribute_pairs(
                images, items, relu_attributions=relu,
                return_gallery_attributions=True, forward_batch_size=batch_size,
            )  # fmt: skip
        features = kept["features"]
        support = features.support.reshape(len(unique), *features.support.shape[-3:])
        rows = torch.arange(n)[:, None]
        columns = inverse.view(n, k)
        activations = (features.query, support, inverse)
        return q_maps[rows, columns, 0], g_maps[rows, columns, 0], activations
    # gradient members: one backward per pair, in batches of pairs
    q_parts, g_parts = [], []
    flat = neighbours.flatten().cpu().tolist()
    for start in range(0, n * k, batch_size):
        pairs = range(start, min(start + batch_size, n * k))
        queries = images[torch.tensor([p // k for p in pairs], device=images.device)]
        support = gallery.take([flat[p] for p in pairs]).to(device)[:, None]
        q_map, g_map = method.attribute(
            queries, support, relu_attributions=relu, return_support_attributions=True
        )
        q_parts.append(q_map[:, 0])
        g_parts.append(g_map[:, 0, 0])
    q_maps, g_maps = torch.cat(q_parts), torch.cat(g_parts)
    q_maps, g_maps = (
        q_maps.view(n, k, *q_maps.shape[1:]),
        g_maps.view(n, k, *g_maps.shape[1:]),
    )
    return q_maps, g_maps, None


def _contrast_maps(settings: RunSettings, images: Tensor, neighbours: Tensor) -> Tensor:
    """(n, h, w) maps of each query: why its rank-1 neighbour rather than its
    rank-2 neighbour (the family's ``attribute(..., contrast=...)``)."""
    gallery, device = settings.gallery, settings.device
    first = gallery.take(neighbours[:, 0].tolist()).to(device)[:, None]
    second = gallery.take(neighbours[:, 1].tolist()).to(device)[:, None]
    maps = settings.method.attribute(  # type: ignore[call-arg]
        images, first, contrast=second, relu_attributions=settings.relu_attributions
    )
    return maps[:, 0]


def point_maps(
    settings: RunSettings,
    images: Tensor,
    top: Tensor,
    activations: Optional[Activations] = None,
) -> Tensor:
    r"""Point-to-point correspondences of each (query, neighbour) pair.

    Equal to ``method.point_to_point(query, neighbour)`` with the member's
    default reading. For the readings that need no pair weights ("cosine",
    "dot"), from the layer activations of the batch's queries and of each
    distinct neighbour: those of the maps' pass (forward-only members), else
    one forward pass up to the layer; "weighted" by ``point_to_point`` per
    query.

    Args:

        settings (RunSettings): the run.
        images (Tensor): the batch's n query images, on ``settings.device``.
        top (Tensor): (n, k) gallery indices of each query's neighbours.
        activations (tuple, optional): the maps' pass's activations
                    (see ``_pair_maps``).
                    Default: None

    Returns:
        *Tensor*: (n, k, h, w, h', w') float32: ``result[i, j, a, b]`` scores
        query cell (a, b) against every cell of neighbour j; finite.
    """
    method, gallery, device = settings.method, settings.gallery, settings.device
    n, k = top.shape
    reading = method.correspondence_reading
    with torch.no_grad():
        if activations is not None and reading != "weighted":
            queries, neighbours, inverse = activations
        else:
            unique, inverse = torch.unique(top.flatten().cpu(), return_inverse=True)
            items = gallery.take(unique.tolist()).to(device)
            if reading == "weighted":
                return (
                    torch.cat(
                        [
                            method.point_to_point(
                                images[i : i + 1], items[inverse[i * k : (i + 1) * k]]
                            )
                            for i in range(n)
                        ]
                    )
                    .permute(0, 3, 1, 2, 4, 5)
                    .float()
                )
            queries = method.layer_activations(images, batch_size=settings.batch_size)
            neighbours = method.layer_activations(items, batch_size=settings.batch_size)
        q = queries.repeat_interleave(k, dim=0)  # (n k, N, h, w)
        s = neighbours[inverse.to(neighbours.device)].unsqueeze(
            1
        )  # (n k, 1, N, h', w')
        scores = method._correspondence_scores(q, s, reading, None)
    scores = scores.float().reshape(n, k, *q.shape[-2:], *s.shape[-2:])
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("the point-to-point correspondences are not finite")
    return scores


def wrong_contrast_maps(
    settings: RunSettings,
    images: Tensor,
    first_query: int,
    top: Tensor,
    audits: Sequence[Optional[QueryAudit]],
) -> Optional[Tensor]:
    r"""Why each wrong neighbour rather than the true match ranked after it.

    For query i and each wrong neighbour ranked above a true match, the
    first true match after it (:func:`.audit.wrong_above_true`): the
    member's ``attribute(query_i, support=wrong, contrast=true)``.
    Forward-only members do a batch in one ``attribute_pairs`` call, one row
    per (query, true match) (each image through the network once).

    Returns:
        *Tensor* or *None*: (n, k, h, w), zero where a neighbour is not such
        a wrong match; None when the member has no contrastive map or no
        query of the batch has such a pair.
    """
    method, gallery, device = settings.method, settings.gallery, settings.device
    if not supports_contrast(method):
        return None
    pairs: List[Tuple[int, int, int]] = []  # (row, column, true item)
    for row, audit in enumerate(audits):
        found = wrong_above_true(settings, first_query + row, top[row].tolist(), audit)
        pairs += [(row, rank - 1, true[1]) for rank, true in found]
    if not pairs:
        return None
    relu = settings.relu_attributions
    if isinstance(method, ForwardPairAttribution):
        rows = sorted({(r, t) for r, _, t in pairs})  # (query row, true item)
        wrong = sorted({int(top[r, c]) for r, c, _ in pairs})
        contrast = gallery.take([t for _, t in rows]).to(device)[:, None]
        maps = method.attribute_pairs(
            images[torch.tensor([r for r, _ in rows], device=images.device)],
            gallery.take(wrong).to(device), relu_attributions=relu,
            forward_batch_size=settings.batch_size, contrast=contrast,
        )[:, :, 0]  # fmt: skip
        where_row = {key: i for i, key in enumerate(rows)}
        where_item = {g: j for j, g in enumerate(wrong)}
        values = [
            maps[where_row[(r, t)], where_item[int(top[r, c])]] for r, c, t in pairs
        ]
    else:
        values = []
        for start in range(0, len(pairs), settings.batch_size):
            chunk = pairs[start : start + settings.batch_size]
            query = images[torch.tensor([r for r, _, _ in chunk], device=images.device)]
            support = gallery.take([int(top[r, c]) for r, c, _ in chunk])
            contrast = gallery.take([t for _, _, t in chunk])
            maps = method.attribute(  # type: ignore[call-arg]
                query, support.to(device)[:, None],
                contrast=contrast.to(device)[:, None], relu_attributions=relu,
            )  # fmt: skip
            values += list(maps[:, 0])
    result = values[0].new_zeros(top.shape[0], top.shape[1], *values[0].shape[-2:])
    for (row, column, _), value in zip(pairs, values):
        result[row, column] = value
    return result


def save_maps(
    settings: RunSettings,
    number: int,
    first_query: int,
    images: Tensor,
    top: Tensor,
    audits: Optional[Sequence[Optional[QueryAudit]]] = None,
) -> None:
    r"""Explain query batch ``number`` against its neighbours; write its shard.

    Args:

        settings (RunSettings): the run.
        number (int): the batch's number (names its shard).
        first_query (int): the index of the batch's first query (metadata).
        images (Tensor): the batch's n query images, on ``settings.device``.
        top (Tensor): (n, k) gallery indices of each query's neighbours.
        audits (Sequence[QueryAudit or None], optional): each query's true
                    matches (:func:`.audit.audit_batch`), for the
                    contrastive maps of wrong matches above a true one and
                    the sampled similarities.
                    Default: None

    Returns:
        *None*: ``maps/batch-NNNNNN.safetensors`` holds float16
        ``query_maps`` (n, k, h, w), ``neighbour_maps`` (n, k, h', w'),
        ``point_maps`` (n, k, h, w, h', w'); with ``settings.contrast``,
        ``contrast_maps`` (n, h, w); with wrong matches above a true one,
        ``wrong_contrast_maps`` (n, k, h, w); with labels, float32
        ``positive_similarities`` and ``negative_similarities`` (flat, query i
        at ``*_offsets[i]:*_offsets[i + 1]``).
    """
    q_maps, g_maps, activations = _pair_maps(settings, images, top)
    points = point_maps(settings, images, top, activations)
    tensors = {
        "query_maps": q_maps.to(MAP_DTYPE),
        "neighbour_maps": g_maps.to(MAP_DTYPE),
        "point_maps": points.to(MAP_DTYPE),
    }
    if settings.contrast:
        tensors["contrast_maps"] = _contrast_maps(settings, images, top).to(MAP_DTYPE)
    if audits is not None and any(a is not None for a in audits):
        wrong = wrong_contrast_maps(settings, images, first_query, top, audits)
        if wrong is not None:
            tensors["wrong_contrast_maps"] = wrong.to(MAP_DTYPE)
        tensors.update(_samples(audits))
    metadata = {
        "first_query": str(first_query),
        "member": settings.member,
        "rank": str(settings.context.rank),
    }
    save_tensors(settings.out / shard_name(number), tensors, metadata=metadata)


def _samples(audits: Sequence[Optional[QueryAudit]]) -> Dict[str, Tensor]:
    """The sampled similarities of a batch, flat, with offsets."""
    result: Dict[str, Tensor] = {}
    for kind in ("positive", "negative"):
        parts = [
            torch.zeros(0) if a is None else getattr(a, f"{kind}s") for a in audits
        ]
        sizes = torch.tensor([0] + [p.numel() for p in parts])
        result[f"{kind}_similarities"] = torch.cat(parts).float()
        result[f"{kind}_offsets"] = sizes.cumsum(0)
    return result


__all__ = ["point_maps", "save_maps", "wrong_contrast_maps"]
