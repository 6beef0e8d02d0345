r"""The maps of one batch of queries, written to the batch's shard.

Forward-only members explain a batch against the union of its neighbours with
one ``attribute_pairs`` call (each distinct neighbour runs through the network
once); gradient members (CG-RAM, Grad-FAM) with one backward pass per pair, in
batches of ``batch_size`` pairs. With ``contrast``, each query also gets its
map of rank 1 against rank 2.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ..methods import ForwardPairAttribution
from .settings import RunSettings
from .store import MAP_DTYPE, save_tensors, shard_name


def _pair_maps(
    settings: RunSettings, images: Tensor, neighbours: Tensor
) -> Tuple[Tensor, Tensor]:
    """Maps of each query (n) against each of its k neighbours: query maps
    (n, k, h, w) and neighbour maps (n, k, h', w')."""
    method, gallery, device = settings.method, settings.gallery, settings.device
    relu, batch_size = settings.relu_attributions, settings.batch_size
    n, k = neighbours.shape
    if isinstance(method, ForwardPairAttribution):  # it has attribute_pairs
        # each distinct neighbour of the batch runs through the network once
        unique, inverse = torch.unique(neighbours.flatten().cpu(), return_inverse=True)
        items = gallery.take(unique.tolist()).to(device)
        q_maps, g_maps = method.attribute_pairs(
            images, items, relu_attributions=relu, return_gallery_attributions=True,
            forward_batch_size=batch_size,
        )  # fmt: skip
        rows = torch.arange(n)[:, None]
        columns = inverse.view(n, k)
        return q_maps[rows, columns, 0], g_maps[rows, columns, 0]
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
    return q_maps.view(n, k, *q_maps.shape[1:]), g_maps.view(n, k, *g_maps.shape[1:])


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


def save_maps(
    settings: RunSettings, number: int, first_query: int, images: Tensor, top: Tensor
) -> None:
    r"""Explain query batch ``number`` against its neighbours; write its shard.

    Args:

        settings (RunSettings): the run.
        number (int): the batch's number (names its shard).
        first_query (int): the index of the batch's first query (metadata).
        images (Tensor): the batch's n query images, on ``settings.device``.
        top (Tensor): (n, k) gallery indices of each query's neighbours.

    Returns:
        *None*: ``maps/batch-NNNNNN.safetensors`` holds float16
        ``query_maps`` (n, k, h, w), ``neighbour_maps`` (n, k, h', w') and,
        with ``settings.contrast``, ``contrast_maps`` (n, h, w).
    """
    q_maps, g_maps = _pair_maps(settings, images, top)
    tensors = {
        "query_maps": q_maps.to(MAP_DTYPE),
        "neighbour_maps": g_maps.to(MAP_DTYPE),
    }
    if settings.contrast:
        tensors["contrast_maps"] = _contrast_maps(settings, images, top).to(MAP_DTYPE)
    metadata = {
        "first_query": str(first_query),
        "member": settings.member,
        "rank": str(settings.context.rank),
    }
    save_tensors(settings.out / shard_name(number), tensors, metadata=metadata)


__all__ = ["save_maps"]
