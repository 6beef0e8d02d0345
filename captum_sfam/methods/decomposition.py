r"""Decomposition: activation decomposition of a cosine similarity
(Zhu, Yang, Chen, IEEE TIP 2021)."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Module

from .._utils.attribution import PairAttribution
from .._utils.checks import PoolingType, deferred_checks
from .._utils.features import PooledPair, ReshapeTransform
from .._utils.formatting import TensorOrTuple

#: point-to-point scores (pairs x query positions x support positions) built at once
MAX_BLOCK_ELEMENTS = 1 << 24


def decomposition_weights(
    query_vectors: Tensor, shot_vectors: Tensor, head: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    r"""The CAM weights Decomposition's maps reduce to on non-negative
    activations without a head: :math:`v^S` for the query, :math:`v^Q` for each
    shot (:math:`W^\top W v` with a head), up to a positive factor."""
    q, s = query_vectors, shot_vectors.mean(dim=-2)  # Eq. 1
    if head is not None:
        gram = head.transpose(0, 1).to(q.dtype) @ head.to(q.dtype)
        q, s = q @ gram, s @ gram
    return s, q.unsqueeze(-2)


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
    query_emb = position_embeddings(query, pooling, head)
    support_emb = position_embeddings(support, pooling, head).flatten(-3, -2)
    p = query_emb @ support_emb.transpose(-1, -2)
    peak = p.amax(dim=(-2, -1), keepdim=True)
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    return torch.where(peak > 0, F.relu(p / safe), torch.zeros_like(p))


def _blocks(query: Tensor, support: Tensor) -> Iterator[Tuple[Tensor, Tensor]]:
    """Slices of the first leading dim small enough for MAX_BLOCK_ELEMENTS."""
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


def decomposition_maps(
    query: Tensor, support: Tensor, pooling: str, head: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    r"""The overall maps: :math:`M_Q(i,j) = \sum_{k,x,y} R(i,j,k,x,y)` and
    :math:`M_{S_k}(x,y) = \sum_{i,j} R(i,j,k,x,y)`, R the rectified P.

    query (..., N, h, w), support (..., K, N, h', w') -> (..., h, w) and
    (..., K, h', w'), built in blocks of the first leading dimension.
    """
    query_maps, support_maps = [], []
    for q, s in _blocks(query, support):
        rect = point_to_point_scores(q, s, pooling, head)
        query_maps.append(rect.sum(dim=-1).unflatten(-1, query.shape[-2:]))
        support_maps.append(
            rect.sum(dim=-2).unflatten(-1, (support.shape[-4], *support.shape[-2:]))
        )
    return torch.cat(query_maps), torch.cat(support_maps)


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
    ) -> None:
        r"""
        Args:

            forward_func, layer, pooling, device_ids, reshape_transform:
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
            forward_func, layer, metric, pooling, device_ids, reshape_transform
        )
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
        return decomposition_weights(pair.query, pair.shots, head)

    def _pair_maps(
        self,
        query: Tensor,
        support: Tensor,
        query_weights: Tensor,
        shot_weights: Tensor,
        with_support: bool = True,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        head = self._head(query.shape[-3])
        return decomposition_maps(query, support, str(self.pooling), head)

    @deferred_checks()
    def point_to_point(
        self,
        inputs: TensorOrTuple,
        support: TensorOrTuple,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
    ) -> Tensor:
        r"""The point-to-point activation of each pair.

        Args:
            inputs, support, additional_forward_args, attribute_to_layer_input:
                        as in :meth:`attribute`.

        Returns:
            *Tensor* of shape (B, h, w, K, h', w'):
            :math:`\mathrm{ReLU}(P(i,j,k,x,y) / \max P)`, how much query
            location (i, j) and location (x, y) of support shot k contribute
            to the similarity. ``result[b, i, j]`` is the map on the support
            of query point (i, j); ``result[b, ..., k, x, y]`` the map on the
            query of support point (x, y).
        """
        features = self._pair_features(
            inputs, support, additional_forward_args, attribute_to_layer_input
        )
        query, shots = features.query, features.support
        head, pooling = self._head(query.shape[1]), str(self.pooling)
        with torch.no_grad():
            blocks = [
                point_to_point_scores(q, s, pooling, head)
                for q, s in _blocks(query, shots)
            ]
        return (
            torch.cat(blocks)
            .reshape(
                features.batch_size,
                *query.shape[-2:],
                *shots.shape[1:2],
                *shots.shape[-2:],
            )
            .to(features.output_dtype)
        )
