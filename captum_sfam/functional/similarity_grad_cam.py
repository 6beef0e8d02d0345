r"""Similarity Grad-CAM's maths: the closed-form gradient of s(V^Q, V^S)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .._engine.checks import require
from .pair import PooledPair


def similarity_gradients(
    query_vectors: Tensor, support_vectors: Tensor, metric: str
) -> Tuple[Tensor, Tensor]:
    r"""Gradients of the similarity s(V^Q, V^S) w.r.t. V^Q and V^S.

    - cosine, :math:`s = \cos(V^Q, V^S)`:
      :math:`\partial s/\partial V^Q = (\hat V^S - s\,\hat V^Q)/\lVert V^Q\rVert`
      (and symmetrically for :math:`V^S`);
    - Euclidean, :math:`s = -\lVert V^Q - V^S\rVert^2`:
      :math:`\partial s/\partial V^Q = -2(V^Q - V^S)`.

    A zero vector with ``metric="cosine"`` raises ``ValueError``.
    """
    if metric == "euclidean":
        diff = query_vectors - support_vectors
        return -2.0 * diff, 2.0 * diff
    q_norm = torch.linalg.vector_norm(query_vectors, dim=-1, keepdim=True)
    s_norm = torch.linalg.vector_norm(support_vectors, dim=-1, keepdim=True)
    require(
        (q_norm == 0).any() | (s_norm == 0).any(),
        "a pooled query or support vector is zero: its cosine similarity "
        "and gradient are undefined",
    )
    q_unit, s_unit = query_vectors / q_norm, support_vectors / s_norm
    cos = (q_unit * s_unit).sum(dim=-1, keepdim=True)
    return (s_unit - cos * q_unit) / q_norm, (q_unit - cos * s_unit) / s_norm


def similarity_grad_cam_weights(
    pair: PooledPair, metric: str = "euclidean"
) -> Tuple[Tensor, Tensor]:
    r"""Grad-CAM weights of :math:`s(V^Q, V^S)`: :math:`\alpha^Q = g_Q/(hw)`,
    :math:`\alpha^{S_k} = g_S/(K h'w')`, with :math:`g = \partial s/\partial V`.

    Avg pooling spreads :math:`\partial s/\partial v_n` evenly over the h*w
    positions, max pooling puts it on the arg-max: the spatial mean is
    :math:`g_n/(hw)` in both cases. Shot k enters :math:`V^S` with weight 1/K.

    With a contrast support :math:`S'` (``pair.contrast_shots``) the score is
    :math:`s(V^Q, V^S) - s(V^Q, V^{S'})`: the query's gradient is
    :math:`g_Q(S) - g_Q(S')`, the shots' gradient is unchanged (the second
    term does not depend on :math:`S`).
    """
    grad_q, grad_s = similarity_gradients(pair.query, pair.shots.mean(-2), metric)
    if pair.contrast_shots is not None:  # d/dV^Q [s(Q, S) - s(Q, S')]
        contrast = pair.contrast_shots.mean(dim=-2)
        grad_q = grad_q - similarity_gradients(pair.query, contrast, metric)[0]
    shots = pair.shots.shape[-2]
    return (
        grad_q / pair.query_positions,
        (grad_s / (shots * pair.support_positions)).unsqueeze(-2),
    )
