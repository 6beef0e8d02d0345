r"""Grad-FAM: Feature Activation Map with gradients (Wu et al., CVPR 2022)."""

from __future__ import annotations

from .._engine.gradient import GradientPairAttribution
from ..functional.similarity import half_squared_norms


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

    pair_score = staticmethod(half_squared_norms)
    #: the score has no pair term: a contrast would not change the maps
    contrast_refusal = (
        "LayerGradFAM has no contrastive map: its maps do not depend on the "
        "support, so contrast would give all-zero or unchanged maps"
    )


__all__ = [
    "LayerGradFAM",
    "half_squared_norms",
]
