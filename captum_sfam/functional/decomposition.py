r"""Decomposition's maths: activation decomposition of a cosine similarity
(Zhu, Yang, Chen, IEEE TIP 2021)."""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._engine.checks import require
from .pair import PooledPair

#: scores (pairs x query positions x support positions) built at once
MAX_BLOCK_ELEMENTS = 1 << 24


def blocks(query: Tensor, support: Tensor) -> Iterator[Tuple[Tensor, Tensor]]:
    """Slices of the first leading dim of query (..., N, h, w) and support
    (..., K, N, h', w') small enough for ``MAX_BLOCK_ELEMENTS`` scores."""
    lead = torch.broadcast_shapes(query.shape[:-3], support.shape[:-4])
    support_positions = support.shape[-4] * support.shape[-2:].numel()
    per_row = lead[1:].numel() * query.shape[-2:].numel() * support_positions
    step = max(1, MAX_BLOCK_ELEMENTS // max(1, per_row))
    for start in range(0, lead[0], step):
        rows = slice(start, start + step)
        yield (
            query[rows] if query.shape[0] > 1 else query,
            support[rows] if support.shape[0] > 1 else support,
        )


def check_head(head: Optional[Tensor], channels: int) -> Optional[Tensor]:
    """``head`` (D, N) if it fits N = ``channels``, else ``ValueError``."""
    if head is not None and head.shape[1] != channels:
        raise ValueError(
            f"head has {head.shape[1]} input features, the layer has "
            f"{channels} channels"
        )
    return head


def decomposition_weights(
    pair: PooledPair, head: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    r"""The CAM weights Decomposition's maps reduce to on non-negative
    activations without a head: :math:`v^S` for the query, :math:`v^Q` for each
    shot (:math:`W^\top W v` with a head), up to a positive factor.

    Against a contrast (``pair.contrast_shots`` (..., K', N)), the query's weights
    are :math:`W^\top W (v^S/\lVert W v^S\rVert - v^{S'}/\lVert W v^{S'}
    \rVert)` (up to the positive factor :math:`1/(hw\lVert W v^Q\rVert)`),
    those of the cosine difference; the shots keep theirs."""
    head = check_head(head, pair.query.shape[-1])
    q, s, contrast_shots = pair.query, pair.shots.mean(dim=-2), pair.contrast_shots
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
    dims = (-2, -1)
    vectors = activations.mean(dims) if pooling == "avg" else activations.amax(dims)
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
    leading dims broadcasting -> ``(..., h*w, K*h'*w')``.
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
    contrast: Optional[Tensor] = None,
    pooling: str = "avg",
    head: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    r"""The overall maps: :math:`M_Q(i,j) = \sum_{k,x,y} R(i,j,k,x,y)` and
    :math:`M_{S_k}(x,y) = \sum_{i,j} R(i,j,k,x,y)`, R the rectified P.

    query (..., N, h, w), support (..., K, N, h', w') -> (..., h, w) and
    (..., K, h', w'), built in blocks of the first leading dimension.

    With ``contrast`` (..., K', N, h'', w''), the decomposition of
    :math:`\cos(Q,S) - \cos(Q,S')`: :math:`M_Q(i,j) = \sum_{kxy}
    \mathrm{ReLU}(P_S)/(z_Q z_S) - \sum_{kxy}\mathrm{ReLU}(P_{S'})/(z_Q z_{S'})`
    and :math:`M_{S_k}(x,y) = \sum_{ij}\mathrm{ReLU}(P_S)/(z_Q z_S)`
    (``cosine_scale``; no max normalisation, so the query map sums to the
    cosine difference when no P is negative).
    """
    head = check_head(head, query.shape[-3])
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
