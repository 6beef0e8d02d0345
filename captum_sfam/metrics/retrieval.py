r"""Retrieval metrics on embeddings: nearest neighbours and Recall@k."""

from __future__ import annotations

import torch
from torch import Tensor

from ..similarity import similarity_matrix


def nearest_neighbours(
    embeddings: Tensor, metric: str = "cosine", k: int = 1
) -> Tensor:
    r"""Indices (B, k) of each embedding's k most similar others, best first.

    Every embedding queries all the others (itself excluded), by the
    package's similarity: cosine, or negative squared Euclidean distance.
    """
    sim = similarity_matrix(embeddings, embeddings, metric)
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(k, dim=1).indices


def recall_at_k(
    embeddings: Tensor, labels: Tensor, metric: str = "cosine", k: int = 1
) -> float:
    r"""Recall@k: the share of embeddings with a same-label item among their k
    nearest neighbours (leave-one-out over the set)."""
    nearest = nearest_neighbours(embeddings, metric, k)
    return float(
        (labels[nearest] == labels[:, None]).any(dim=1).to(torch.float32).mean()
    )
