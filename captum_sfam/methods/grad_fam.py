r"""Grad-FAM: Feature Activation Map with gradients (Wu et al., CVPR 2022)."""

from __future__ import annotations

from torch import Tensor

from .._utils.gradient import GradientPairAttribution


def half_squared_norms(query: Tensor, shots: Tensor) -> Tensor:
    r"""Grad-FAM's pair score: each image's own energy :math:`\frac12\lVert f\rVert^2`.

    query (B, D) and shots (B, K, D) -> (B,): :math:`\frac12\lVert f(Q)\rVert^2
    + \frac12\sum_k\lVert f(S_k)\rVert^2`. Each image's gradient comes from its
    own term only, so every map is pair-agnostic.
    """
    return 0.5 * (query * query).sum(dim=-1) + 0.5 * (shots * shots).sum(dim=(-2, -1))


class LayerGradFAM(GradientPairAttribution):
    r"""
    Grad-FAM: Grad-CAM on the embedding itself rather than on a class score.

    Wu, Chen, Che, Pu, "FAM: Visual explanations for the feature
    representations from deep convolutional networks", CVPR 2022. The score is
    the energy of the image's own embedding :math:`f(x)` (the output of
    ``forward_func``), :math:`s(x) = \frac12\lVert f(x)\rVert^2`, whose gradient
    w.r.t. :math:`f(x)` is :math:`f(x)`:

    .. math::
        \alpha_n = \frac{1}{hw}\sum_{ij}\frac{\partial s}{\partial A^n_{ij}},
        \qquad L = \sum_n \alpha_n A^n,

    computed with autograd for the query and each support image on its own.
    For a model whose embedding is the average-pooled layer,
    :math:`\alpha_n = v_n / (hw)`: a self-weighted CAM, equal to
    :class:`~captum_sfam.LayerRAM` (``weighting="self"``) up to a positive
    factor. Grad-FAM explains a single image's representation and is
    pair-agnostic by construction (the SFAM paper's criticism of it).

    Reconstruction note: the FAM paper's text is the only source (no public
    code); the score ½‖f‖² is our reading of it. ``metric`` does not change
    the maps. Not to be confused with Liao et al.'s 2023 "Feature Activation
    Map" (arXiv 2307.05017), SFAM's precursor.
    """

    #: the score has no pair term: a contrast would not change the maps
    supports_contrast = False

    def _pair_score(self, query: Tensor, shots: Tensor) -> Tensor:
        return half_squared_norms(query, shots)
