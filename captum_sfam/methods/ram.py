r"""RAM: Ranking Activation Map (Yang et al., CVPR 2019)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from .._utils.attribution import PairAttribution, PairFeatures, PoolingType, ReshapeTransform

WEIGHTINGS = ("self", "other", "product")


def ram_weights(
    query_vectors: Tensor, support_vectors: Tensor, shot_vectors: Tensor, weighting: str
) -> Tuple[Tensor, Tensor]:
    """RAM's channel weights, broadcasting over leading dims.

    query_vectors (..., N), support_vectors (..., N) and shot_vectors
    (..., K, N) -> query weights (..., N) and support weights (..., K or 1, N).
    """
    if weighting == "self":  # each image weighted by its own pooled vector
        return query_vectors, shot_vectors
    if weighting == "other":  # each image weighted by the other side's vector
        _, support_weights = torch.broadcast_tensors(query_vectors, support_vectors)
        return support_weights, query_vectors.unsqueeze(-2)
    product = query_vectors * support_vectors  # channel contributions to V^Q.V^S
    return product, product.unsqueeze(-2)


class LayerRAM(PairAttribution):
    r"""
    Ranking Activation Map (RAM), the re-identification baseline of the SFAM
    paper: a CAM whose channel weights are pooled embedding values instead of
    classifier weights.

    Yang, Huang, Zhang, Chen, Huang, Zhang, "Towards rich feature discovery
    with class activation maps augmentation for person re-identification",
    CVPR 2019. No public code exists; the paper's text describes RAM as
    weighting the channels by the feature representation of the input image
    itself, so by default (``weighting="self"``)

    .. math::
        L_Q = \sum_n v^Q_n A_Q^n, \qquad L_{S_k} = \sum_n v^{S_k}_n A_{S_k}^n,

    which is pair-agnostic by construction: the query's map does not depend on
    the support (the SFAM paper's criticism of RAM). Two other readings are
    available, since the source is ambiguous (``../shared/BASELINES.md``):

    - ``weighting="other"``: the other image's vector weights the channels,
      :math:`L_Q = \sum_n v^S_n A_Q^n`, :math:`L_{S_k} = \sum_n v^Q_n
      A_{S_k}^n`. On ReLU/GAP models without a head this equals Decomposition's
      overall map up to a positive factor.
    - ``weighting="product"``: :math:`v^Q_n v^S_n`, the channel's contribution
      to the dot product, for both images.

    ``metric`` does not change RAM's weights (kept for a uniform interface).
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: Module,
        metric: str = "euclidean",
        pooling: PoolingType = "avg",
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        weighting: str = "self",
    ) -> None:
        r"""
        Args:

            forward_func, layer, metric, pooling, device_ids, reshape_transform:
                        as for :class:`~captum_sfam.LayerSFAM`.
            weighting (str, optional): "self" (each image's own pooled vector,
                        pair-agnostic), "other" (the other side's vector) or
                        "product" (:math:`v^Q_n v^S_n`).
                        Default: "self"
        """
        super().__init__(
            forward_func, layer, metric, pooling, device_ids, reshape_transform
        )
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"weighting must be one of {WEIGHTINGS}, got {weighting!r}"
            )
        self.weighting = weighting

    def _weights(self, pair: PairFeatures) -> Tuple[Tensor, Tensor]:
        return ram_weights(
            pair.query_vectors, pair.support_vectors, pair.shot_vectors, self.weighting
        )

    def _pairwise_weights(
        self,
        query: Tensor,
        gallery: Tensor,
        query_vectors: Tensor,
        shot_vectors: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        # queries on dim 0, gallery items on dim 1, shots on dim 2
        return ram_weights(
            query_vectors.unsqueeze(1),
            shot_vectors.mean(dim=1).unsqueeze(0),
            shot_vectors.unsqueeze(0),
            self.weighting,
        )
