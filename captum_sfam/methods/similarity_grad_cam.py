r"""Grad-CAM of a pair's similarity, with the gradient in closed form."""

from __future__ import annotations

from .._engine.forward import ForwardPairAttribution
from ..functional.similarity_grad_cam import (
    similarity_grad_cam_weights,
    similarity_gradients,
)


class LayerSimilarityGradCam(ForwardPairAttribution):
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
    weight_rule = staticmethod(similarity_grad_cam_weights)


__all__ = [
    "LayerSimilarityGradCam",
    "similarity_grad_cam_weights",
    "similarity_gradients",
]
