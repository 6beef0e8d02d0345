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
    query_vectors: Tensor,
    shot_vectors: Tensor,
    weighting: str,
    contrast_shots: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    r"""RAM's weight rule, broadcasting over leading dims.

    query_vectors (..., N) and shot_vectors (..., K, N) -> query weights
    (..., N) and shot weights (..., K or 1, N). The rule is linear in
    :math:`V^S`, so against a contrast (``contrast_shots`` (..., K', N),
    :math:`V^{S'}` their mean) the query weights are those for :math:`S`
    minus those for :math:`S'`: :math:`v^S - v^{S'}` for "other" and
    :math:`v^Q (v^S - v^{S'})` for "product" (the channel's contribution to
    :math:`\langle V^Q, V^S\rangle - \langle V^Q, V^{S'}\rangle`, which
    "product" also gives the shots). "other" shots keep their weights
    (:math:`S'` does not involve them). "self" is pair-agnostic: a contrast
    is a ValueError (it would give all-zero query maps).
    """
    if weighting == "self":  # each image weighted by its own pooled vector
        if contrast_shots is not None:
            raise ValueError(
                'weighting="self" does not depend on the support: no contrast'
            )
        return query_vectors, shot_vectors
    contrast = None if contrast_shots is None else contrast_shots.mean(dim=-2)
    support_vectors = shot_vectors.mean(dim=-2)  # Eq. 1
    if contrast is not None:  # linear in V^S: weights(S) - weights(S')
        support_vectors = support_vectors - contrast
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

    Contrast (``attribute(..., contrast=S')``): the weights are linear in
    :math:`V^S`, so the query weights become those for :math:`S` minus those
    for :math:`S'`: :math:`v^S - v^{S'}` ("other"), :math:`v^Q_n(v^S_n -
    v^{S'}_n)` ("product", for the shots too). "self", whose query map does
    not depend on the support, refuses a contrast (a ValueError) rather than
    return all-zero maps.
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
        layout: str = "auto",
        num_prefix_tokens: Optional[int] = None,
    ) -> None:
        r"""
        Args:

            forward_func, layer, metric, pooling, device_ids, reshape_transform,
            layout, num_prefix_tokens:
                        as for :class:`~captum_sfam.LayerSFAM`.
            weighting (str, optional): "self" (each image's own pooled vector,
                        pair-agnostic), "other" (the other side's vector) or
                        "product" (:math:`v^Q_n v^S_n`).
                        Default: "self"
        """
        super().__init__(
            forward_func, layer, metric, pooling, device_ids, reshape_transform,
            layout, num_prefix_tokens,
        )  # fmt: skip
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"weighting must be one of {WEIGHTINGS}, got {weighting!r}"
            )
        self.weighting = weighting

    @property  # type: ignore[override]
    def supports_contrast(self) -> bool:  # "self" ignores the support
        return self.weighting != "self"

    def _contrast_hint(self) -> str:
        return '(weighting="self"; "other" and "product" have one)'

    def _pair_weights(self, pair: PooledPair) -> Tuple[Tensor, Tensor]:
        return ram_weights(pair.query, pair.shots, self.weighting, pair.contrast_shots)
