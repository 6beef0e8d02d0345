r"""Gradient members read at several layers at once (the multi-block map).

:class:`MultiLayerPairAttribution` hooks every layer in one forward pass of
the queries and takes the gradients of the pair score at all of them in one
backward pass (one batched pass per chunk of references for all pairs). The
other side is reference embeddings, or support images whose (mean)
embedding, computed without a graph, is the reference; support maps swap
the roles (the support's graph, the query's embedding fixed).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from ..functional.similarity import MetricFunc
from .captum_compat import format_additional_forward_args
from .checks import (
    ZERO_MAP,
    check_finite,
    check_positive_int,
    checked_pass,
    finalize_maps,
    public_call,
    select_embedding,
    warn_if,
)
from .gradient import GradientPairAttribution
from .graph import as_grid, batched_gradients, query_graph
from .layer import Layer
from .pairs import Images, TensorOrTuple, format_inputs, pair_arguments
from .references import check_other_side, reference_arguments

Layers = Union[Module, Sequence[Module]]


class MultiLayerPairAttribution(GradientPairAttribution):
    r"""A gradient member whose map combines several layers (``layers=``).

    A member declares ``map_rule``: activations and gradients of every
    layer, each (..., N_l, h_l, w_l), to maps (..., h, w).
    """

    map_rule: Callable[..., Tensor]

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layers: Layers,
        metric: Union[str, MetricFunc] = "cosine",
        normalize: bool = True,
        **options: Any,
    ) -> None:
        r"""
        Args:
            forward_func: the image model (or tower) returning (B, D).
            layers (Module or list[Module]): the blocks read (a single layer
                        works too), e.g. ``tower.map_layers`` or a ViT's
                        ``blocks``; each gets the layout and prefix tokens
                        the model declares.
            metric: "cosine", "euclidean" or a row-wise callable (the
                        model's own score, ``tower.metric``).
            normalize (bool): min-max normalise each map (LeGrad).
                        Default: True
            options: ``pooling``, ``device_ids``, ``reshape_transform``,
                        ``layout``, ``num_prefix_tokens``,
                        ``embedding_func`` as for the other members.
        """
        modules = [layers] if isinstance(layers, Module) else list(layers)
        if not modules or not all(isinstance(m, Module) for m in modules):
            raise TypeError("layers must be a torch.nn.Module or a list of them")
        super().__init__(forward_func, modules[-1], metric, **options)
        self.layers = modules
        self.normalize = bool(normalize)
        last = self._layer
        self._layers = [
            last if m is modules[-1] else Layer(
                forward_func, m, last.pooling, last.reshape_transform,
                last.device_ids, last.layout,
                options.get("num_prefix_tokens"),
            )
            for m in modules
        ]  # fmt: skip

    def _maps(self, acts: List[Tensor], grads: List[Tensor]) -> Tensor:
        return type(self).map_rule(acts, grads, self.normalize)

    # ------------------------------------------------------------ calls --
    @log_usage(part_of_slo=True)
    @public_call
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        support: Optional[TensorOrTuple] = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        return_support_attributions: bool = False,
        contrast: Optional[Any] = None,
        target: Optional[Any] = None,
        support_labels: Optional[Any] = None,
        references: Optional[Tensor] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""Maps of each query against its support images or reference
        embeddings (see :meth:`GradientPairAttribution.attribute`); one
        forward and one backward pass of the queries for every layer.
        Returns (B, 1, h, w) maps at the finest layer's resolution, and with
        ``return_support_attributions`` the support maps (B, K, 1, h', w')."""
        args = format_additional_forward_args(additional_forward_args)
        to_input = attribute_to_layer_input
        check_other_side(
            support, support_labels, references, return_support_attributions
        )
        queries = format_inputs(inputs)
        check_finite(*queries, names=["inputs"] * len(queries))
        batch = len(queries[0])
        if references is not None:
            refs = reference_arguments(references, batch, target, contrast)
            chosen, against = refs.chosen(batch), refs.contrast
        else:
            pairs = pair_arguments(
                inputs, support, additional_forward_args, to_input, contrast,
                target, support_labels, per_query=True,
            )  # fmt: skip
            shots = self._embed(pairs.others, args).reshape(batch, pairs.shots, -1)
            chosen = shots.mean(1)
            against = None
            if pairs.contrast is not None:
                against = self._embed(pairs.contrast, args)
                against = against.reshape(batch, pairs.contrast_shots, -1).mean(1)
        maps, emb = self._query_maps(queries, args, to_input, chosen, against)
        maps = finalize_maps(maps, relu_attributions, maps.dtype).unsqueeze(1)
        if not return_support_attributions:
            return maps
        shot_maps = self._support_maps(pairs, args, to_input, emb, against)
        return maps, finalize_maps(shot_maps, relu_attributions, maps.dtype)

    @log_usage(part_of_slo=True)
    @public_call
    def attribute_pairs(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        references: Tensor,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        contrast: Optional[Any] = None,
        chunk_size: Optional[int] = None,
    ) -> Tensor:
        r"""Maps (Q, R, 1, h, w) of every (query, reference) pair, as
        :meth:`GradientPairAttribution.attribute_pairs`: one forward pass,
        one batched backward pass per chunk of references for every layer."""
        check_positive_int(chunk_size, "chunk_size")
        queries = format_inputs(inputs)
        check_finite(*queries, names=["inputs"] * len(queries))
        refs = reference_arguments(references, len(queries[0]), None, contrast, True)
        args = format_additional_forward_args(additional_forward_args)
        with query_graph(
            self._layers, queries, args, attribute_to_layer_input, self.embedding_func
        ) as (captured, emb):
            self._check_embeddings(emb, refs)
            batch, count = emb.shape[0], refs.references.shape[0]
            pairs_emb = emb.unsqueeze(1).expand(batch, count, -1).flatten(0, 1)
            scores = self._reference_score(
                pairs_emb, refs.references.to(emb.dtype).repeat(batch, 1), None
            ).reshape(batch, count)
            if refs.contrast is not None:
                against = refs.contrast.to(emb.dtype).expand(batch, -1)
                scores = scores - self._reference_score(emb, against, None)[:, None]
            acts = self._grids(captured, queries)
            parts, zero = [], torch.zeros(batch, dtype=torch.bool, device=emb.device)
            for _, (*grads, emb_grads) in batched_gradients(
                scores, [*captured, emb], chunk_size
            ):
                zero |= self._still(grads, emb_grads, True).to(zero.device)
                grids = [as_grid(layer, g, queries, True)
                         for layer, g in zip(self._layers, grads)]  # fmt: skip
                parts.append(self._maps([a.unsqueeze(0) for a in acts], grids))
        warn_if(zero.any(), ZERO_MAP.format(member=type(self).__name__))
        maps = torch.cat(parts).transpose(0, 1)
        return finalize_maps(maps, relu_attributions, acts[0].dtype).unsqueeze(2)

    def channel_weights(self, *args: Any, **kwargs: Any) -> Tuple[Tensor, Tensor]:
        """Not defined: the map is not a channel-weighted sum."""
        raise NotImplementedError(
            f"{type(self).__name__} has no channel weights: its map is the "
            "positive part of gradient x activation per position, not a "
            "channel-weighted sum; use LayerCGRAM for Grad-CAM weights"
        )

    # ---------------------------------------------------------- helpers --
    def _grids(self, captured: List[Tensor], images: Images) -> List[Tensor]:
        """Each layer's activations as a checked (B, N_l, h_l, w_l) grid."""
        model = self._layer.model
        return [
            checked_pass(model, [g], [g], ["inputs"])[0]
            for g in (as_grid(layer, t, images, False)
                      for layer, t in zip(self._layers, captured))
        ]  # fmt: skip

    @staticmethod
    def _still(
        grads: Sequence[Optional[Tensor]], emb_grad: Optional[Tensor], stacked: bool
    ) -> Tensor:
        """(B,) the queries whose score moves with their embedding but whose
        gradient is exactly zero at every layer (the layers do not reach the
        embedding, as a class-token ViT's last block): their map is all zero.
        ``stacked``: gradients of several scores, (r, B, ...)."""
        dim = 2 if stacked else 1
        if emb_grad is None:  # the score does not depend on the embedding
            return torch.zeros(1, dtype=torch.bool)
        still = (emb_grad != 0).flatten(dim).any(dim)
        for grad in grads:
            if grad is not None:
                still = still & (grad.flatten(dim) == 0).all(dim).to(still.device)
        return still.any(0) if stacked else still

    def _gradient_grids(
        self, captured: List[Tensor], grads: Sequence[Optional[Tensor]], images: Images
    ) -> List[Tensor]:
        return [
            as_grid(layer, torch.zeros_like(t) if g is None else g, images, False)
            for layer, t, g in zip(self._layers, captured, grads)
        ]

    def _embed(self, images: Images, args: Any) -> Tensor:
        """(n, D) embeddings without a graph (the other side of image pairs)."""
        with self._layer._protected(), torch.no_grad():
            try:
                out = self._layer.forward_func(*images, *(args or ()))
            except (RuntimeError, TypeError) as error:
                message = f"support: forward_func cannot run on it: {error}"
                raise ValueError(message) from error
        emb = select_embedding(out, self.embedding_func)
        check_finite(emb, names=["the support's embeddings"])
        return emb

    def _query_maps(
        self, queries: Images, args: Any, to_input: bool, chosen: Tensor,
        against: Optional[Tensor],
    ) -> Tuple[Tensor, Tensor]:  # fmt: skip
        with query_graph(
            self._layers, queries, args, to_input, self.embedding_func
        ) as (captured, emb):
            refs = reference_arguments(chosen, len(chosen), None, against)
            self._check_embeddings(emb, refs)
            score = self._reference_score(emb, chosen.to(emb.dtype), against).sum()
            *grads, emb_grad = torch.autograd.grad(
                score, [*captured, emb], allow_unused=True
            )
            acts = self._grids(captured, queries)
        zero = self._still(grads, emb_grad, False)
        warn_if(zero.any(), ZERO_MAP.format(member=type(self).__name__))
        grids = self._gradient_grids(captured, grads, queries)
        return self._maps(acts, grids), emb.detach()

    def _support_maps(
        self, pairs: Any, args: Any, to_input: bool, emb: Tensor,
        against: Optional[Tensor],
    ) -> Tensor:  # fmt: skip
        """(B, K, 1, h, w): each shot's map, the query's embedding fixed."""
        batch, shots = emb.shape[0], pairs.shots
        with query_graph(
            self._layers, pairs.others, args, to_input, self.embedding_func
        ) as (captured, support):
            proto = support.reshape(batch, shots, -1).mean(1)
            # s(f(Q), mean_k f(S_k)); a contrast term has no support gradient
            score = self._reference_score(emb.to(proto.dtype), proto, None)
            grads = torch.autograd.grad(score.sum(), captured, allow_unused=True)
            acts = self._grids(captured, pairs.others)
        maps = self._maps(acts, self._gradient_grids(captured, grads, pairs.others))
        return maps.reshape(batch, shots, 1, *maps.shape[-2:])
