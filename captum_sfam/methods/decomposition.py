r"""Decomposition: activation decomposition of a cosine similarity
(Zhu, Yang, Chen, IEEE TIP 2021)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Module

from .._utils.attribution import (
    PairAttribution,
    PairFeatures,
    PoolingType,
    ReshapeTransform,
    TensorOrTuple,
)

#: largest point-to-point block (query positions x support positions) built at once
_CHUNK_ELEMENTS = 1 << 24


def position_embeddings(
    activations: Tensor, pooling: str, head: Optional[Tensor]
) -> Tensor:
    r"""Per-position embeddings :math:`e(i,j)`, (M, N, h, w) -> (M, hw, D).

    With max pooling each channel keeps only its arg-max position(s) (the
    reference code's "maximum mask"); a linear head :math:`W` (D x N, bias
    dropped) maps each position's activation vector to :math:`W A(:,i,j)`.
    """
    if pooling == "max":
        peak = activations.amax(dim=(-2, -1), keepdim=True)
        activations = activations * (activations == peak)
    emb = activations.flatten(2).transpose(1, 2)
    return emb if head is None else emb @ head.transpose(0, 1).to(emb.dtype)


def point_to_point(query_emb: Tensor, support_emb: Tensor) -> Tensor:
    r"""Rectified, max-normalised point-to-point activation.

    :math:`P(i,j,x,y) = \langle e_Q(i,j), e_S(x,y)\rangle`, returned as
    :math:`\mathrm{ReLU}(P / \max P)`; all zeros where :math:`\max P \le 0`
    (no position pair contributes positively to the similarity).
    query_emb (B, P, D), support_emb (B or 1, P', D) -> (B, P, P').
    """
    if support_emb.shape[0] == 1:
        p = query_emb @ support_emb[0].transpose(0, 1)
    else:
        p = torch.bmm(query_emb, support_emb.transpose(1, 2))
    peak = p.amax(dim=(1, 2), keepdim=True)
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    return torch.where(peak > 0, F.relu(p / safe), torch.zeros_like(p))


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

    def _validate(self) -> None:
        if callable(self.pooling):
            raise ValueError("LayerDecomposition needs pooling='avg' or 'max'")

    def _check_head(self, channels: int) -> Optional[Tensor]:
        if self.head is not None and self.head.shape[1] != channels:
            raise ValueError(
                f"head has {self.head.shape[1]} input features, the layer has "
                f"{channels} channels"
            )
        return self.head

    def _weights(self, pair: PairFeatures) -> Tuple[Tensor, Tensor]:
        head = self._check_head(pair.query.shape[1])
        q, s = pair.query_vectors, pair.support_vectors.expand_as(pair.query_vectors)
        if head is not None:
            gram = head.transpose(0, 1).to(q.dtype) @ head.to(q.dtype)
            q, s = q @ gram, s @ gram
        return s, q.unsqueeze(1)

    def _point_to_point(self, pair: PairFeatures) -> Tensor:
        """Rectified P of shape (B, hw, K*h'w'), built in chunks of queries."""
        head = self._check_head(pair.query.shape[1])
        pooling = str(self.pooling)
        groups, shots = pair.support.shape[:2]
        support_emb = position_embeddings(pair.support.flatten(0, 1), pooling, head)
        support_emb = support_emb.reshape(groups, -1, support_emb.shape[-1])
        positions = pair.query.shape[-2] * pair.query.shape[-1]
        chunk = max(1, _CHUNK_ELEMENTS // (positions * support_emb.shape[1]))
        blocks = []
        for start in range(0, pair.batch_size, chunk):
            query_emb = position_embeddings(
                pair.query[start : start + chunk], pooling, head
            )
            supp = support_emb if groups == 1 else support_emb[start : start + chunk]
            blocks.append(point_to_point(query_emb, supp))
        return torch.cat(blocks)

    def _maps(
        self, pair: PairFeatures, query_weights: Tensor, support_weights: Tensor
    ) -> Tuple[Tensor, Tensor]:
        rect = self._point_to_point(pair)
        batch, shots = pair.batch_size, pair.shots
        query_maps = rect.sum(dim=2).reshape(batch, *pair.query.shape[-2:])
        support_maps = rect.sum(dim=1).reshape(batch, shots, *pair.support.shape[-2:])
        return query_maps, support_maps

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
        pair = self._features(
            inputs, support, additional_forward_args, attribute_to_layer_input
        )
        with torch.no_grad():
            rect = self._point_to_point(pair)
        return rect.reshape(
            pair.batch_size,
            *pair.query.shape[-2:],
            pair.shots,
            *pair.support.shape[-2:],
        ).to(pair.output_dtype)
