r"""Retrieval metrics on embeddings: nearest neighbours and Recall@k.

Scores are the package's similarities (:func:`~captum_sfam.similarity.
similarity_matrix`): cosine, or the negative squared Euclidean distance, whose
ranking is the Euclidean distance's. Neighbours are found by the package's
exact top-k search (:func:`~captum_sfam.functional.similarity.exact_top_k`),
by chunks of the set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional.similarity import exact_top_k


def _check(embeddings: Tensor, k: int) -> None:
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
        raise ValueError("embeddings must be a (B, D) Tensor")
    if not 1 <= k < embeddings.shape[0]:
        raise ValueError(
            f"k must be in [1, B - 1] = [1, {embeddings.shape[0] - 1}], got {k}"
        )


def nearest_neighbours(
    embeddings: Tensor, metric: str = "cosine", k: int = 1
) -> Tensor:
    r"""Indices (B, k) of each embedding's k most similar others, best first.

    Every embedding queries all the others, itself excluded (leave-one-out),
    by the package's similarity: cosine, or negative squared Euclidean
    distance. Ties go to the lower index. The similarities are computed in
    float32, whatever the embeddings' dtype.

    Args:
        embeddings (Tensor): (B, D).
        metric (str, optional): ``"cosine"`` or ``"euclidean"``.
                    Default: "cosine"
        k (int, optional): neighbours per embedding, 1 <= k < B. Default: 1

    Returns:
        *Tensor*: (B, k) int64 indices into ``embeddings``, on its device.
    """
    _check(embeddings, k)
    if not isinstance(metric, str):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    itself = torch.arange(embeddings.shape[0], device=embeddings.device)
    return exact_top_k(embeddings, embeddings, k, metric, exclude=itself)[1]


def recall_at_k(
    embeddings: Tensor, labels: Tensor, metric: str = "cosine", k: int = 1
) -> float:
    r"""Recall@k: the share of embeddings with a same-label item among their k
    nearest neighbours (leave-one-out over the set).

    Args:
        embeddings (Tensor): (B, D).
        labels (Tensor): (B,) class labels.
        metric (str, optional): ``"cosine"`` or ``"euclidean"``.
        k (int, optional): neighbours looked at, 1 <= k < B. Default: 1

    Returns:
        *float*: the exact fraction of hits, in [0, 1].
    """
    _check(embeddings, k)
    if not isinstance(labels, Tensor) or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"labels must be (B,) = ({embeddings.shape[0]},), got "
            f"{tuple(getattr(labels, 'shape', ()))}"
        )
    nearest = nearest_neighbours(embeddings, metric, k)
    labels = labels.to(nearest.device)
    hits = (labels[nearest] == labels[:, None]).any(dim=1)
    return int(hits.sum()) / hits.numel()  # exact fraction, no float32 rounding
