r"""Decomposition: activation decomposition of a cosine similarity
(Zhu, Yang, Chen, IEEE TIP 2021)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Module

from .._engine.forward import ForwardPairAttribution
from ..functional.decomposition import (
    check_head,
    decomposition_maps,
    decomposition_weights,
    point_to_point_scores,
    position_embeddings,
)


class LayerDecomposition(ForwardPairAttribution):
    r"""
    Activation decomposition of a cosine similarity: the overall activation
    map and the point-to-point activation.

    Zhu, Yang, Chen, "Visual explanation for deep metric learning", IEEE TIP
    2021 (https://arxiv.org/abs/1909.12977; code:
    github.com/Jeff-Zilence/Explain_Metric_Learning). For global average
    pooling the dot product of the pooled embeddings decomposes over pairs of
    positions, :math:`\langle V^Q, V^S\rangle \propto \sum_{ij}\sum_{xy}
    P(i,j,x,y)` with :math:`P(i,j,x,y) = \langle e_Q(i,j), e_S(x,y)\rangle`
    and :math:`e(i,j) = W A(:,i,j)` (:math:`W` an optional linear head, bias
    dropped as in the reference code; identity without a head). Cosine
    normalisation only rescales P. The overall maps are

    .. math::
        M_Q(i,j) = \sum_{k,x,y} \mathrm{ReLU}\Big(\frac{P(i,j,k,x,y)}
        {\max P}\Big), \qquad
        M_{S_k}(x,y) = \sum_{i,j} \mathrm{ReLU}\Big(\frac{P(i,j,k,x,y)}
        {\max P}\Big),

    over the positions of all K support shots; :meth:`point_to_point`
    returns the rectified :math:`P` itself (which query location matches
    which support location). With ``pooling="max"`` each channel is masked to
    its arg-max position first, as in the reference code for GMP models.

    Defined for ``metric="cosine"`` only: the Euclidean distance does not
    decompose this way (the SFAM paper's Table 1 leaves it blank), so
    ``metric="euclidean"`` raises ``ValueError``. Without a head and with
    non-negative activations no P is negative, and the overall query map is
    the CAM with channel weights :math:`v^S` (what :meth:`channel_weights`
    returns, up to a positive factor; :math:`W^\top W v^S` with a head), i.e.
    RAM with ``weighting="other"``. Where :math:`\max P \le 0` the map is all
    zeros.

    Contrast (``attribute(..., contrast=S')``): the decomposition of
    :math:`\cos(Q,S) - \cos(Q,S')`. Each pair's products are divided by
    :math:`z_Q z_S` (``cosine_scale``: :math:`z = n\lVert e(V)\rVert`,
    n the number of position terms behind V, :math:`Khw` for average
    pooling, K for max pooling), so that their unrectified sum is the cosine:

    .. math::
        M_Q(i,j) = \sum_{k,x,y}\frac{\mathrm{ReLU}(P_S(i,j,k,x,y))}{z_Q z_S}
        - \sum_{k,x,y}\frac{\mathrm{ReLU}(P_{S'}(i,j,k,x,y))}{z_Q z_{S'}},
        \qquad M_{S_k}(x,y) = \sum_{i,j}\frac{\mathrm{ReLU}(P_S)}{z_Q z_S},

    without the max normalisation (the two terms must share a scale). When
    no P is negative (ReLU layers, no head) :math:`\sum_{ij} M_Q(i,j) =
    \cos(Q,S) - \cos(Q,S')` exactly (tested), and the map is the CAM of
    :meth:`channel_weights` (:math:`W^\top W(v^S/\lVert Wv^S\rVert -
    v^{S'}/\lVert Wv^{S'}\rVert)`) divided by :math:`hw\lVert Wv^Q\rVert`.

    :meth:`point_to_point` reads the position embeddings :math:`e(i,j)`
    (head and max mask included): ``reading="dot"`` gives Zhu et al.'s
    rectified :math:`P/\max P` (which sums to the overall map),
    ``reading="cosine"`` (the default, chosen by measurement: docs/concepts.md,
    "Point-to-point correspondences") their cosine.
    """

    supported_metrics = ("cosine",)
    supported_poolings = ("avg", "max")

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: Module,
        metric: str = "cosine",
        *args: Any,
        head: Union[None, Tensor, Linear] = None,
        **kwargs: Any,
    ) -> None:
        r"""
        Args:

            forward_func, layer, pooling, device_ids, reshape_transform, layout,
            num_prefix_tokens:
                        as for :class:`~captum_sfam.LayerSFAM`, in its order;
                        ``pooling`` must be "avg" or "max".
            metric (str, optional): "cosine" (the only metric the method is
                        defined for).
                        Default: "cosine"
            head (Tensor or torch.nn.Linear, optional): the linear embedding
                        head after the pooled layer, as a (D, N) weight or the
                        ``nn.Linear`` itself (its bias is dropped). Keyword
                        only.
                        Default: None
        """
        super().__init__(forward_func, layer, metric, *args, **kwargs)
        if isinstance(head, Linear):
            head = head.weight
        if head is not None:
            if not isinstance(head, Tensor) or head.dim() != 2:
                raise TypeError("head must be a (D, N) Tensor or an nn.Linear")
            head = head.detach()
        self.head = head
        self.rule_options = {"head": head}
        self.map_options = {"pooling": str(self.pooling), "head": head}

    weight_rule = staticmethod(decomposition_weights)
    map_rule = staticmethod(decomposition_maps)

    def _correspondence_scores(
        self, query: Tensor, support: Tensor, reading: str, weights: Optional[Tensor]
    ) -> Tensor:
        """Readings on the position embeddings e(i, j) (max mask, head):
        "dot" is Zhu et al.'s rectified, max-normalised P, "cosine" the
        cosine of the embeddings; "weighted" uses the layer's activations."""
        head = check_head(self.head, query.shape[-3])
        pooling = str(self.pooling)
        if reading == "dot":
            return point_to_point_scores(query, support, pooling, head)
        if reading == "cosine":
            q = F.normalize(position_embeddings(query, pooling, head), dim=-1)
            s = F.normalize(position_embeddings(support, pooling, head), dim=-1)
            return q @ s.flatten(-3, -2).transpose(-1, -2)
        return super()._correspondence_scores(query, support, reading, weights)


__all__ = [
    "LayerDecomposition",
    "decomposition_maps",
    "decomposition_weights",
    "point_to_point_scores",
    "position_embeddings",
]
