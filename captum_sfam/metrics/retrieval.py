r"""Retrieval metrics on embeddings: nearest neighbours and Recall@k.

Scores are the package's similarities (:func:`~captum_sfam.similarity.
similarity_matrix`): cosine, or the negative squared Euclidean distance, whose
ranking is the Euclidean distance's.
"""

from __future__ import annotations

from torch import Tensor

from ..similarity import similarity_matrix


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
    distance.
    """
    _check(embeddings, k)
    sim = similarity_matrix(embeddings, embeddings, metric)
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(k, dim=1).indices


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
