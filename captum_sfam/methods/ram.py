r"""RAM: Ranking Activation Map (Yang et al., CVPR 2019)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from torch import Tensor
from torch.nn import Module

from .._utils.attribution import PairAttribution
from .._utils.checks import PoolingType
from .._utils.features import PooledPair, ReshapeTransform

WEIGHTINGS = ("self", "other", "product")


def ram_weights(
    query_vectors: Tensor, shot_vectors: Tensor, weighting: str
) -> Tuple[Tensor, Tensor]:
    """RAM's weight rule, broadcasting over leading dims.

    query_vectors (..., N) and shot_vectors (..., K, N) -> query weights
    (..., N) and shot weights (..., K or 1, N).
    """
    if weighting == "self":  # each image weighted by its own pooled vector
        return query_vectors, shot_vectors
    support_vectors = shot_vectors.mean(dim=-2)  # Eq. 1
    if weighting == "other":  # each image weighted by the other side's vector
        return support_vectors, query_vectors.unsqueeze(-2)
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
    available, since the source is ambiguous:

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

    def _pair_weights(self, pair: PooledPair) -> Tuple[Tensor, Tensor]:
        return ram_weights(pair.query, pair.shots, self.weighting)
