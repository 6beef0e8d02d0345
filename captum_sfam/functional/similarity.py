r"""Similarities between embeddings: pairs, matrices and the exact top-k.

The one place the package scores embeddings against each other: the pair
scores of the gradient members, :class:`~captum_sfam.SimilarityTarget`, the
retrieval run, the metrics and the benchmark all call these functions.
``metric`` is "cosine" (cosine similarity), "euclidean" (the negative squared
Euclidean distance, whose ranking is the distance's, and the logits of
prototypical networks), or a learned similarity scoring (P, D) pairs row by
row.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

#: Embeddings whose norm is below this have cosine similarity 0 (as in
#: ``torch.nn.functional.cosine_similarity``), e.g. an all-black IG baseline.
COSINE_EPS = 1e-8

#: a learned similarity: (x (P, D), y (P, D)) -> (P,) scores, row by row
MetricFunc = Callable[[Tensor, Tensor], Tensor]

#: gallery rows scored at once by :func:`exact_top_k`
DEFAULT_GALLERY_CHUNK = 4096
#: candidates beyond k that :func:`exact_top_k` keeps and re-scores exactly
TOP_K_MARGIN = 8


def similarity_matrix(
    embeddings: Tensor, references: Tensor, metric: Union[str, MetricFunc]
) -> Tensor:
    r"""Similarities (B, R) between embeddings (B, D) and references (R, D).

    ``metric="cosine"``: cosine similarity; ``metric="euclidean"``: negative
    squared Euclidean distance :math:`-\lVert e - r\rVert^2` (the logits of
    prototypical networks); a callable: a learned similarity scoring (P, D)
    pairs row by row, applied to the B x R pairs. Differentiable everywhere.
    """
    if callable(metric):
        b, r = embeddings.shape[0], references.shape[0]
        e = embeddings.unsqueeze(1).expand(b, r, -1).flatten(0, 1)
        ref = references.unsqueeze(0).expand(b, r, -1).flatten(0, 1)
        return _check_scores(metric(e, ref), b * r).reshape(b, r)
    if metric == "cosine":
        e = F.normalize(embeddings, dim=-1, eps=COSINE_EPS)
        r = F.normalize(references, dim=-1, eps=COSINE_EPS)
        return e @ r.transpose(0, 1)
    diff = embeddings.unsqueeze(1) - references.unsqueeze(0)
    return -(diff * diff).sum(dim=-1)


def paired_similarity(
    embeddings: Tensor, references: Tensor, metric: Union[str, MetricFunc]
) -> Tensor:
    """Row-wise similarities (B,) between embeddings (B, D) and references (B, D).

    ``metric`` may be a learned similarity: a callable scoring two (P, D)
    batches row by row."""
    if callable(metric):
        return _check_scores(metric(embeddings, references), embeddings.shape[0])
    if metric == "cosine":
        return F.cosine_similarity(embeddings, references, dim=-1, eps=COSINE_EPS)
    diff = embeddings - references
    return -(diff * diff).sum(dim=-1)


def _check_scores(scores: object, count: int) -> Tensor:
    if not isinstance(scores, Tensor) or scores.numel() != count:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores)
        raise ValueError(
            f"metric (a callable) must return {count} scores, one per pair of "
            f"embeddings, got {shape}"
        )
    return scores.reshape(count)


def exact_top_k(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    metric: str = "cosine",
    chunk_size: int = DEFAULT_GALLERY_CHUNK,
    exclude: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    r"""Exact top-k gallery items of each query, by chunks of the gallery.

    Only a (Q, chunk_size + k + 8) block of scores exists at a time, so the
    memory does not grow with the gallery. The scan scores in float32 (the
    Euclidean one on vectors centred on the queries' mean, so that
    embeddings far from the origin do not cancel), keeps k + 8 candidates
    (``TOP_K_MARGIN``) and re-scores them exactly from their own vectors
    before taking the k best. Ties are broken by the lower gallery index.

    Args:

        queries (Tensor): query embeddings (Q, D).
        gallery (Tensor): gallery embeddings (M, D), on any device (each chunk
                    is moved to the queries' device).
        k (int): neighbours per query, 1 <= k <= M.
        metric (str, optional): "cosine" (cosine similarity) or "euclidean"
                    (negative squared Euclidean distance), as
                    :func:`similarity_matrix`.
                    Default: "cosine"
        chunk_size (int, optional): gallery rows scored at once.
                    Default: 4096 (``DEFAULT_GALLERY_CHUNK``)
        exclude (Tensor, optional): (Q,) a gallery index each query must not
                    get (the query itself, when the gallery holds it), or -1.
                    Default: None

    Returns:
        *tuple[Tensor, Tensor]* of **(similarities, indices)**, both (Q, k),
        best first; similarities in float32.
    """
    if queries.dim() != 2 or gallery.dim() != 2:
        raise ValueError("queries and gallery must be (Q, D) and (M, D) embeddings")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"queries have {queries.shape[1]} dimensions, gallery {gallery.shape[1]}"
        )
    total = gallery.shape[0]
    available = total - (0 if exclude is None else 1)
    if not 1 <= k <= max(available, 0):
        raise ValueError(f"k must be in [1, {available}] for this gallery, got {k}")
    device = queries.device
    q = queries.float()
    if metric == "cosine":
        q = F.normalize(q, dim=-1, eps=COSINE_EPS)
    else:  # distances are translation invariant: centre on the queries so
        # that the expanded form below does not cancel catastrophically for
        # embeddings far from the origin
        centre = q.mean(dim=0, keepdim=True)
        q = q - centre
        q_squared = (q * q).sum(dim=-1, keepdim=True)
    # candidates kept through the scan: k and a margin, all re-scored exactly
    pool = min(total, k + TOP_K_MARGIN)
    best_values = q.new_empty(q.shape[0], 0)
    best_indices = torch.empty(q.shape[0], 0, dtype=torch.long, device=device)
    excluded = None if exclude is None else exclude.to(device)[:, None]
    for start in range(0, total, chunk_size):
        g = gallery[start : start + chunk_size].to(device, torch.float32)
        if metric == "cosine":
            scores = q @ F.normalize(g, dim=-1, eps=COSINE_EPS).T
        else:
            g = g - centre
            scores = 2 * (q @ g.T) - q_squared - (g * g).sum(dim=-1)[None]
        index = torch.arange(start, start + g.shape[0], device=device)
        if excluded is not None:
            scores = scores.masked_fill(excluded == index, -torch.inf)
        values = torch.cat([best_values, scores], dim=1)
        indices = torch.cat([best_indices, index.expand(q.shape[0], -1)], dim=1)
        # earlier candidates have lower indices: a stable sort keeps them first
        order = torch.sort(values, dim=1, descending=True, stable=True).indices
        order = order[:, :pool]
        best_values, best_indices = values.gather(1, order), indices.gather(1, order)
    # exact values of the candidates, each from its own two vectors (so equal
    # items get equal values whatever chunk they were scored in), then the k
    # best, ties by the lower gallery index
    chosen = gallery[best_indices.flatten().to(gallery.device)].to(device).float()
    chosen = chosen.view(*best_indices.shape, -1)
    if metric == "cosine":
        best_values = (q[:, None] * F.normalize(chosen, dim=-1, eps=COSINE_EPS)).sum(-1)
    else:
        diff = queries.float()[:, None] - chosen
        best_values = -(diff * diff).sum(dim=-1)
    if excluded is not None:
        best_values = best_values.masked_fill(excluded == best_indices, -torch.inf)
    by_index = torch.sort(best_indices, dim=1).indices
    best_values = best_values.gather(1, by_index)
    best_indices = best_indices.gather(1, by_index)
    order = torch.sort(best_values, dim=1, descending=True, stable=True).indices[:, :k]
    return best_values.gather(1, order), best_indices.gather(1, order)


# ---------------------------------------- the gradient members' scores ---
def prototype_similarity(
    query: Tensor, shots: Tensor, metric: Union[str, MetricFunc] = "cosine"
) -> Tensor:
    r"""CG-RAM's pair score :math:`s = \mathrm{sim}(f(Q), \frac1K\sum_k f(S_k))`.

    query (B, D) and shots (B, K, D) -> (B,): cosine, or negative squared
    Euclidean distance, to the mean of the K shot embeddings.
    """
    return paired_similarity(query, shots.mean(dim=-2), metric)


def half_squared_norms(query: Tensor, shots: Tensor, metric: object = None) -> Tensor:
    r"""Grad-FAM's pair score: each image's own energy :math:`\frac12\lVert f\rVert^2`.

    query (B, D) and shots (B, K, D) -> (B,): :math:`\frac12\lVert f(Q)\rVert^2
    + \frac12\sum_k\lVert f(S_k)\rVert^2`. Each image's gradient comes from its
    own term only, so every map is pair-agnostic. ``metric`` is ignored
    (the score compares nothing).
    """
    return 0.5 * (query * query).sum(dim=-1) + 0.5 * (shots * shots).sum(dim=(-2, -1))


__all__ = [
    "COSINE_EPS",
    "DEFAULT_GALLERY_CHUNK",
    "MetricFunc",
    "exact_top_k",
    "half_squared_norms",
    "paired_similarity",
    "prototype_similarity",
    "similarity_matrix",
]
