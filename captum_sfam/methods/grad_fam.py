r"""Grad-FAM: Feature Activation Map with gradients (Wu et al., CVPR 2022)."""

from __future__ import annotations

from typing import Tuple

from torch import Tensor

from .._utils.attribution import PairAttribution, PairFeatures, spatial_mean
from ..similarity import flatten_embeddings


def half_squared_norm(output: Tensor) -> Tensor:
    r"""The Grad-FAM score of each row: :math:`\frac12\lVert f(x)\rVert^2`."""
    emb = flatten_embeddings(output)
    return 0.5 * (emb * emb).sum(dim=-1)


class LayerGradFAM(PairAttribution):
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
    code); the score ½‖f‖² is the reading of ``../shared/BASELINES.md``.
    ``metric`` does not change the maps. Not to be confused with Liao et al.'s
    2023 "Feature Activation Map" (arXiv 2307.05017), SFAM's precursor.
    """

    def _weights(self, pair: PairFeatures) -> Tuple[Tensor, Tensor]:
        args, to_input = pair.additional_forward_args, pair.attribute_to_layer_input
        grad_q = self.layer_gradients(pair.inputs, half_squared_norm, args, to_input)
        grad_s = self.layer_gradients(
            pair.support_inputs, half_squared_norm, args, to_input
        )
        grad_s = grad_s.reshape(-1, pair.shots, *grad_s.shape[1:])
        return spatial_mean(grad_q), spatial_mean(grad_s)
