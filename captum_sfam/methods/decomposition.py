r"""Decomposition: activation decomposition of a cosine similarity
(Zhu, Yang, Chen, IEEE TIP 2021)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Module

from .._utils.attribution import PairAttribution
from .._utils.checks import PoolingType, require
from .._utils.correspondence import blocks
from .._utils.features import PooledPair, ReshapeTransform
from .._utils.maps import pool


def decomposition_weights(
    query_vectors: Tensor,
    shot_vectors: Tensor,
    head: Optional[Tensor],
    contrast_shots: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    r"""The CAM weights Decomposition's maps reduce to on non-negative
    activations without a head: :math:`v^S` for the query, :math:`v^Q` for each
    shot (:math:`W^\top W v` with a head), up to a positive factor.

    Against a contrast (``contrast_shots`` (..., K', N)), the query's weights
    are :math:`W^\top W (v^S/\lVert W v^S\rVert - v^{S'}/\lVert W v^{S'}
    \rVert)` (up to the positive factor :math:`1/(hw\lVert W v^Q\rVert)`),
    those of the cosine difference; the shots keep theirs."""
    q, s = query_vectors, shot_vectors.mean(dim=-2)  # Eq. 1
    gram = None
    if head is not None:
        gram = head.transpose(0, 1).to(q.dtype) @ head.to(q.dtype)
        q = q @ gram
    if contrast_shots is not None:  # d/dV^Q-like: unit S minus unit S'
        c = contrast_shots.mean(dim=-2)
        s = s / _embedding_norm(s, head) - c / _embedding_norm(c, head)
    if gram is not None:
        s = s @ gram
    return s, q.unsqueeze(-2)


def _embedding_norm(vectors: Tensor, head: Optional[Tensor]) -> Tensor:
    r""":math:`\lVert W v\rVert` of pooled vectors (..., N) -> (..., 1); a zero
    embedding raises (its cosine is undefined)."""
    emb = vectors if head is None else vectors @ head.transpose(0, 1).to(vectors.dtype)
    norm = torch.linalg.vector_norm(emb, dim=-1, keepdim=True)
    require(
        (norm == 0).any(),
        "a pooled query, support or contrast embedding is zero: its cosine "
        "similarity is undefined",
    )
    return torch.where(norm > 0, norm, torch.ones_like(norm))


def position_embeddings(
    activations: Tensor, pooling: str, head: Optional[Tensor]
) -> Tensor:
    r"""Per-position embeddings :math:`e(i,j)`, (..., N, h, w) -> (..., hw, D).

    With max pooling each channel keeps only its arg-max position(s) (the
    reference code's "maximum mask"); a linear head :math:`W` (D x N, bias
    dropped) maps each position's activation vector to :math:`W A(:,i,j)`.
    """
    if pooling == "max":
        peak = activations.amax(dim=(-2, -1), keepdim=True)
        activations = activations * (activations == peak)
    emb = activations.flatten(-2).transpose(-1, -2)
    return emb if head is None else emb @ head.transpose(0, 1).to(emb.dtype)


def position_products(
    query: Tensor, support: Tensor, pooling: str, head: Optional[Tensor]
) -> Tensor:
    r""":math:`P(i,j,k,x,y) = \langle e_Q(i,j), e_{S_k}(x,y)\rangle`, unrectified.

    query (..., N, h, w) and support (..., K, N, h', w') -> (..., h*w, K*h'*w').
    """
    query_emb = position_embeddings(query, pooling, head)
    support_emb = position_embeddings(support, pooling, head).flatten(-3, -2)
    return query_emb @ support_emb.transpose(-1, -2)


def cosine_scale(activations: Tensor, pooling: str, head: Optional[Tensor]) -> Tensor:
    r"""The factor :math:`n\,\lVert e(V)\rVert` that turns summed products into
    a cosine, for (..., K, N, h, w) activations -> (...,).

    :math:`V` is the mean of the K pooled shots, :math:`e(V) = WV`, and n the
    number of position terms behind :math:`V`: :math:`K h w` for average
    pooling (:math:`\sum_{kxy} e_{S_k}(x,y) = Khw\, e(V)`), K for max
    pooling (one arg-max per channel, ties aside). With the query's factor
    (K = 1) :math:`\sum P / (z_Q z_S) = \cos(e(V^Q), e(V^S))`.
    """
    shots, positions = activations.shape[-4], activations.shape[-2:].numel()
    vectors = pool(activations.flatten(0, -4), pooling).unflatten(
        0, activations.shape[:-3]
    )
    count = shots * (positions if pooling == "avg" else 1)
    return count * _embedding_norm(vectors.mean(dim=-2), head).squeeze(-1)


def point_to_point_scores(
    query: Tensor, support: Tensor, pooling: str, head: Optional[Tensor]
) -> Tensor:
    r"""Rectified, max-normalised point-to-point activation of each pair.

    :math:`P(i,j,k,x,y) = \langle e_Q(i,j), e_{S_k}(x,y)\rangle`, returned as
    :math:`\mathrm{ReLU}(P / \max P)`, the maximum taken over the pair; all
    zeros where :math:`\max P \le 0` (no position pair contributes positively
    to the similarity). query (..., N, h, w) and support (..., K, N, h', w'),
    leading dims broadcasting -> (..., h*w, K*h'*w').
    """
    p = position_products(query, support, pooling, head)
    peak = p.amax(dim=(-2, -1), keepdim=True)
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    return torch.where(peak > 0, F.relu(p / safe), torch.zeros_like(p))


def _cosine_terms(
    query: Tensor, support: Tensor, pooling: str, head: Optional[Tensor]
) -> Tensor:
    r""":math:`\mathrm{ReLU}(P) / (z_Q z_S)`, each position pair's rectified
    share of :math:`\cos(Q, S)`, (..., h*w, K*h'*w')."""
    p = position_products(query, support, pooling, head)
    scale = cosine_scale(query.unsqueeze(-4), pooling, head) * cosine_scale(
        support, pooling, head
    )
    return F.relu(p) / scale[..., None, None]


def decomposition_maps(
    query: Tensor,
    support: Tensor,
    pooling: str,
    head: Optional[Tensor],
    contrast: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    r"""The overall maps: :math:`M_Q(i,j) = \sum_{k,x,y} R(i,j,k,x,y)` and
    :math:`M_{S_k}(x,y) = \sum_{i,j} R(i,j,k,x,y)`, R the rectified P.

    query (..., N, h, w), support (..., K, N, h', w') -> (..., h, w) and
    (..., K, h', w'), built in blocks of the first leading dimension.

    With ``contrast`` (..., K', N, h'', w''), the decomposition of
    :math:`\cos(Q,S) - \cos(Q,S')`: :math:`M_Q(i,j) = \sum_{kxy}
    \mathrm{ReLU}(P_S)/(z_Q z_S) - \sum_{kxy}\mathrm{ReLU}(P_{S'})/(z_Q z_{S'})`
    and :math:`M_{S_k}(x,y) = \sum_{ij}\mathrm{ReLU}(P_S)/(z_Q z_S)`
    (:func:`cosine_scale`; no max normalisation, so the query map sums to the
    cosine difference when no P is negative).
    """
    query_maps, support_maps = [], []
    for q, s in blocks(query, support):
        if contrast is None:
            rect = point_to_point_scores(q, s, pooling, head)
        else:
            rect = _cosine_terms(q, s, pooling, head)
        query_maps.append(rect.sum(dim=-1).unflatten(-1, query.shape[-2:]))
        support_maps.append(
            rect.sum(dim=-2).unflatten(-1, (support.shape[-4], *support.shape[-2:]))
        )
    query_map = torch.cat(query_maps)
    if contrast is not None:  # minus each query position's share of cos(Q, S')
        against = torch.cat(
            [
                _cosine_terms(q, c, pooling, head).sum(dim=-1)
                for q, c in blocks(query, contrast)
            ]
        ).unflatten(-1, query.shape[-2:])
        query_map = query_map - against
    return query_map, torch.cat(support_maps)


class LayerDecomposition(PairAttribution):
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
    :math:`z_Q z_S` (:func:`cosine_scale`: :math:`z = n\lVert e(V)\rVert`,
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
    ``reading="cosine"`` (the default, which finds mirror correspondences
    on real photos far better: PCK@1 cell 0.985 against 0.843) their
    cosine.
    """

    supported_metrics = ("cosine",)
    supported_poolings = ("avg", "max")

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: Module,
        metric: str = "cosine",
        pooling: PoolingType = "avg",
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        head: Union[None, Tensor, Linear] = None,
        layout: str = "auto",
        num_prefix_tokens: Optional[int] = None,
    ) -> None:
        r"""
        Args:

            forward_func, layer, pooling, device_ids, reshape_transform, layout,
            num_prefix_tokens:
                        as for :class:`~captum_sfam.LayerSFAM`; ``pooling`` must
                        be "avg" or "max".
            metric (str, optional): "cosine" (the only metric the method is
                        defined for).
                        Default: "cosine"
            head (Tensor or torch.nn.Linear, optional): the linear embedding
                        head after the pooled layer, as a (D, N) weight or the
                        ``nn.Linear`` itself (its bias is dropped).
                        Default: None
        """
        super().__init__(
            forward_func, layer, metric, pooling, device_ids, reshape_transform,
            layout, num_prefix_tokens,
        )  # fmt: skip
        if isinstance(head, Linear):
            head = head.weight
        if head is not None:
            if not isinstance(head, Tensor) or head.dim() != 2:
                raise TypeError("head must be a (D, N) Tensor or an nn.Linear")
            head = head.detach()
        self.head = head

    def _head(self, channels: int) -> Optional[Tensor]:
        if self.head is not None and self.head.shape[1] != channels:
            raise ValueError(
                f"head has {self.head.shape[1]} input features, the layer has "
                f"{channels} channels"
            )
        return self.head

    def _pair_weights(self, pair: PooledPair) -> Tuple[Tensor, Tensor]:
        head = self._head(pair.query.shape[-1])
        return decomposition_weights(pair.query, pair.shots, head, pair.contrast_shots)

    def _pair_maps(
        self,
        query: Tensor,
        support: Tensor,
        query_weights: Tensor,
        shot_weights: Tensor,
        with_support: bool = True,
        contrast: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        head = self._head(query.shape[-3])
        return decomposition_maps(query, support, str(self.pooling), head, contrast)

    def _correspondence_scores(
        self, query: Tensor, support: Tensor, reading: str, weights: Optional[Tensor]
    ) -> Tensor:
        """Readings on the position embeddings e(i, j) (max mask, head):
        "dot" is Zhu et al.'s rectified, max-normalised P, "cosine" the
        cosine of the embeddings; "weighted" uses the layer's activations."""
        head, pooling = self._head(query.shape[-3]), str(self.pooling)
        if reading == "dot":
            return point_to_point_scores(query, support, pooling, head)
        if reading == "cosine":
            q = F.normalize(position_embeddings(query, pooling, head), dim=-1)
            s = F.normalize(position_embeddings(support, pooling, head), dim=-1)
            return q @ s.flatten(-3, -2).transpose(-1, -2)
        return super()._correspondence_scores(query, support, reading, weights)
