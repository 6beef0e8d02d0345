r"""Grad-CAM of a pair's similarity, with the gradient in closed form."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .._utils.attribution import PairAttribution
from .._utils.checks import require
from .._utils.features import PooledPair


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


def similarity_grad_cam_weights(pair: PooledPair, metric: str) -> Tuple[Tensor, Tensor]:
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
    grad_q, grad_s = similarity_gradients(pair.query, pair.support, metric)
    if pair.contrast is not None:  # d/dV^Q [s(Q, S) - s(Q, S')]
        grad_q = grad_q - similarity_gradients(pair.query, pair.contrast, metric)[0]
    shots = pair.shots.shape[-2]
    return (
        grad_q / pair.query_positions,
        (grad_s / (shots * pair.support_positions)).unsqueeze(-2),
    )


class LayerSimilarityGradCam(PairAttribution):
    r"""
    Grad-CAM of the similarity between the pooled layer vectors, computed
    forward-only.

    Grad-CAM weights each channel by the spatial mean of the gradient of a
    score w.r.t. the activations (Selvaraju et al., ICCV 2017,
    https://arxiv.org/abs/1610.02391). Here the score is the similarity of the
    pair at the explained layer, :math:`s = \mathrm{sim}(p(A_Q), V^S)`, whose
    gradient is known in closed form. With
    :math:`g = \partial s/\partial V^Q` (see :func:`similarity_gradients`), for
    average pooling :math:`\partial s/\partial A^n_{ij} = g_n / (hw)`, and for
    max pooling the gradient is :math:`g_n` at the arg-max and 0 elsewhere: in
    both cases the Grad-CAM weight is

    .. math::
        \alpha^Q_n = \frac{g_n}{h w}, \qquad
        L_Q = \sum_n \alpha^Q_n A_Q^n .

    Support shot k gets :math:`\alpha^{S_k}_n = (\partial s/\partial V^S)_n /
    (K h' w')` on its own activations (the support vector is the mean of K
    shots). The result equals Captum's ``LayerGradCam`` run through a
    :class:`~captum_sfam.SimilarityTarget` whose embedding is the pooled layer
    (tested), without a backward pass or an autograd graph.

    Contrast (``attribute(..., contrast=S')``): Grad-CAM of the score
    :math:`s(V^Q, V^S) - s(V^Q, V^{S'})`, so
    :math:`\alpha^Q_n = (g_n(S) - g_n(S'))/(hw)`; the support shots keep
    their weights (:math:`S'` does not enter their gradient). It equals
    Captum's ``LayerGradCam`` through a ``SimilarityTarget`` with a contrast
    reference (tested).

    Supports ``pooling="avg"`` and ``"max"`` (ties at the maximum aside); a
    pooling callable has no closed form and raises ``ValueError``. A zero pooled
    vector with ``metric="cosine"`` raises ``ValueError``. Weights are signed:
    pass ``relu_attributions=True`` for the original Grad-CAM display.
    """

    supported_poolings = ("avg", "max")  # a callable has no closed form

    def _pair_weights(self, pair: PooledPair) -> Tuple[Tensor, Tensor]:
        return similarity_grad_cam_weights(pair, self.metric)
