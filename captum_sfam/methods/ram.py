r"""RAM: Ranking Activation Map (Yang et al., CVPR 2019)."""

from __future__ import annotations

from typing import Any, Callable

from torch.nn import Module

from .._engine.forward import ForwardPairAttribution
from ..functional.ram import WEIGHTINGS, ram_weights


class LayerRAM(ForwardPairAttribution):
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
        *args: Any,
        weighting: str = "self",
        **kwargs: Any,
    ) -> None:
        r"""
        Args:

            forward_func, layer, metric, pooling, device_ids, reshape_transform,
            layout, num_prefix_tokens:
                        as for :class:`~captum_sfam.LayerSFAM`, in its order.
            weighting (str, optional): "self" (each image's own pooled vector,
                        pair-agnostic), "other" (the other side's vector) or
                        "product" (:math:`v^Q_n v^S_n`). Keyword only.
                        Default: "self"
        """
        super().__init__(forward_func, layer, metric, *args, **kwargs)
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"weighting must be one of {WEIGHTINGS}, got {weighting!r}"
            )
        self.weighting = weighting
        self.rule_options = {"weighting": weighting}
        if weighting == "self":  # the query's map ignores the support
            self.contrast_refusal = (
                'LayerRAM(weighting="self") has no contrastive map: its maps do '
                "not depend on the support, so contrast would give all-zero or "
                'unchanged maps ("other" and "product" have one)'
            )

    weight_rule = staticmethod(ram_weights)


__all__ = [
    "WEIGHTINGS",
    "LayerRAM",
    "ram_weights",
]
