r"""Gradient members: Grad-CAM weights of a pair score (CG-RAM, Grad-FAM).

:class:`GradientPairAttribution` reads a call top to bottom: arguments ->
pairs (:mod:`.pairs`) -> activations and gradients of the member's pair
score from one forward and one backward pass (queries, support and contrast
together when the model allows) -> weights, Grad-CAM's spatial means ->
maps (Eq. 3). Its score is a function of :mod:`captum_sfam.functional`.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from ..functional.similarity import MetricFunc
from .base import PairAttribution
from .captum_compat import format_additional_forward_args
from .checks import (
    PoolingType,
    check_finite,
    check_positive_int,
    checked_pass,
    compute_dtype,
    finalize_maps,
    public_call,
    weighted_sum,
)
from .graph import as_grid, batched_gradients, query_graph
from .layer import ReshapeTransform
from .model import EmbeddingFunc, check_embedding_func, warn_if_classifier
from .pairs import (
    Features,
    Pairs,
    TargetType,
    TensorOrTuple,
    format_inputs,
    pair_arguments,
)
from .references import (
    ReferencePairs,
    check_other_side,
    check_width,
    reference_arguments,
)

Maps = Union[Tensor, Tuple[Tensor, Tensor]]


class GradientPairAttribution(PairAttribution, GradientAttribution):
    r"""Base of the members whose weights are gradients of a pair score.

    For a score :math:`s_b` of pair b (the member's ``pair_score`` of the
    query embedding and the K support embeddings), the query's weights are
    :math:`\mathrm{mean}_{ij}\,\partial s_b/\partial A_{Q_b}` and shot k's
    weights :math:`\mathrm{mean}_{ij}\,\partial s_b/\partial A_{S_{bk}}`.
    With a ``contrast`` support :math:`S'` the score is
    :math:`s(Q, S) - s(Q, S')`. The support is run once per query (B*K
    images), since its gradients depend on the query; one forward and one
    backward pass per call. The gradients are taken at the layer's first call
    (a layer called twice contributes through both calls), with autograd
    enabled even inside ``torch.no_grad()``/``torch.inference_mode()``.

    A member declares ``pair_score``, a function of
    :mod:`captum_sfam.functional` mapping query embeddings (B, D), shot
    embeddings (B, K, D) and ``rule_options`` to (B,) scores.
    """

    pair_score: Callable[..., Tensor]
    _per_query = True  # the support's gradients depend on the query

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: Module,
        metric: Union[str, MetricFunc] = "euclidean",
        pooling: PoolingType = "avg",
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        layout: str = "auto",
        num_prefix_tokens: Optional[int] = None,
        embedding_func: EmbeddingFunc = None,
    ) -> None:
        r"""
        Args:

            forward_func, layer, pooling, device_ids, reshape_transform,
            layout, num_prefix_tokens: as in the forward-only members.
                        ``forward_func`` runs the whole model: its output (or
                        the part ``embedding_func`` selects) is the embedding.
            metric (str or Callable, optional): "euclidean", "cosine", or a
                        learned similarity: a callable mapping two batches of
                        embeddings (P, D) to P scores, e.g. the scoring head of
                        a Siamese model.
                        Default: "euclidean"
            embedding_func (str, int or Callable, optional): how the embedding
                        (B, D) is read from the model's output: a key (a dict
                        key or a Hugging Face ``ModelOutput`` field such as
                        ``"pooler_output"``), an index (a tuple such as
                        ``(embedding, logits)``), or a callable mapping the
                        output to the embedding. Required when the output is
                        not a tensor (a ``TypeError`` says so).
                        Default: None (the output is the embedding)
        """
        custom = callable(metric) and not isinstance(metric, str)
        PairAttribution.__init__(
            self, forward_func, layer, "cosine" if custom else metric, pooling,
            device_ids, reshape_transform, layout, num_prefix_tokens,
        )  # fmt: skip
        if custom:  # a learned similarity: checked by the score on first use
            self.metric = metric  # type: ignore[assignment]
            self.rule_options = {"metric": metric}
        GradientAttribution.__init__(self, forward_func)
        self.embedding_func = check_embedding_func(embedding_func)
        warn_if_classifier(self._layer.model, self.embedding_func)

    @log_usage(part_of_slo=True)
    @public_call
    def attribute(
        self,
        inputs: TensorOrTuple,
        support: Optional[TensorOrTuple] = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        return_support_attributions: bool = False,
        contrast: Optional[Any] = None,
        target: Optional[TargetType] = None,
        support_labels: Optional[TargetType] = None,
        references: Optional[Tensor] = None,
    ) -> Maps:
        r"""Maps of each query against its support, from the layer gradients
        of the member's pair score (against ``contrast``: of the score of
        S minus the score of S').

        Args and Returns: as
        :meth:`~captum_sfam.methods.ForwardPairAttribution.attribute`. The
        support runs once per query (its gradients depend on the query), with
        autograd, in one forward and one backward pass per call. Besides:

        Args:
            references (Tensor, optional): the other side as embeddings
                        (R, D), from any tower or source (text embeddings of a
                        CLIP model, stored gallery vectors), in place of
                        ``support`` (not both). ``target`` picks each query's
                        reference (an int, a list or a (B,) tensor; may be
                        omitted when R is 1 or B); ``contrast`` is then
                        another reference's index (int, list, (B,) tensor) or
                        an embedding (D,), (1, D) or (B, D): the score is
                        :math:`s(f(Q), r) - s(f(Q), r')`. Only the queries
                        run (one forward, one backward pass); the query
                        maps equal those against support images whose
                        (mean) embedding is the reference.
                        Default: None
        """
        if contrast is not None and self.contrast_refusal is not None:
            raise ValueError(self.contrast_refusal)
        check_other_side(
            support, support_labels, references, return_support_attributions
        )
        if references is not None:
            return self._reference_maps(
                inputs, references, target, contrast, additional_forward_args,
                attribute_to_layer_input, relu_attributions,
            )  # fmt: skip
        pairs = pair_arguments(
            inputs, support, additional_forward_args, attribute_to_layer_input,
            contrast, target, support_labels, per_query=True,
        )  # fmt: skip
        features = self._features(pairs)
        query_grads, shot_grads = features.query_gradients, features.support_gradients
        assert query_grads is not None and shot_grads is not None
        # Grad-CAM's weights: the spatial means of the layer gradients
        query_weights, shot_weights = (
            query_grads.mean((-2, -1)),
            shot_grads.mean((-2, -1)),
        )
        relu, dtype = relu_attributions, features.query.dtype
        query_maps = weighted_sum(query_weights, features.query)
        query_maps = finalize_maps(query_maps, relu, dtype).unsqueeze(1)
        if not return_support_attributions:
            return query_maps
        shot_maps = weighted_sum(shot_weights, features.support)
        return query_maps, finalize_maps(shot_maps, relu, dtype).unsqueeze(2)

    def _weights(self, features: Features) -> Tuple[Tensor, Tensor]:
        """Grad-CAM's weights: the spatial means of the layer gradients."""
        assert features.query_gradients is not None
        assert features.support_gradients is not None
        return (
            features.query_gradients.mean(dim=(-2, -1)),
            features.support_gradients.mean(dim=(-2, -1)),
        )

    def _features(self, pairs: Pairs) -> Features:
        """Activations and gradients at the layer of the pair score (S minus
        S' with a contrast), for the queries and each support shot; ``pairs``
        hold one support per query."""
        (query, support, *_), (query_grads, support_grads, *_) = (
            self._layer.gradient_pass(
                pairs, self._score, self.embedding_func, type(self).__name__
            )
        )
        per_query = (len(query), pairs.shots)
        return Features(
            query, support.reshape(*per_query, *support.shape[1:]),
            query_gradients=query_grads,
            support_gradients=support_grads.reshape(*per_query, *support.shape[1:]),
        )  # fmt: skip

    def _score(
        self, query: Tensor, support: Tensor, contrast: Optional[Tensor]
    ) -> Tensor:
        """(B,) pair scores from query (B, D), support (B*K, D) and contrast
        (B*K', D) embeddings: ``pair_score`` of S, minus that of S'."""
        batch, options = query.shape[0], self.rule_options
        score = self.pair_score(
            query, support.reshape(batch, -1, query.shape[1]), **options
        )
        if contrast is None:
            return score
        against = contrast.reshape(batch, -1, query.shape[1])
        return score - self.pair_score(query, against, **options)

    # ------------------------------------------------ the other side as embeddings --
    @log_usage(part_of_slo=True)
    @public_call
    def attribute_pairs(
        self,
        inputs: TensorOrTuple,
        references: Tensor,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        contrast: Optional[Any] = None,
        chunk_size: Optional[int] = None,
    ) -> Tensor:
        r"""Maps of every (query, reference) pair: Q images against R
        reference embeddings (the T texts of a CLIP model, a gallery's
        vectors), batched.

        One forward pass of the Q queries; the gradients of the R scores in
        one batched backward pass per ``chunk_size`` references
        (``torch.autograd.grad(..., is_grads_batched=True)``; one pass per
        reference for a model ``vmap`` cannot batch), never Q x R passes.
        ``result[i, j]`` equals ``attribute(inputs[i:i+1], references=
        references, target=j)`` (tested); the model must be batch-independent
        (eval mode) for that.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): Q query images.
            references (Tensor): (R, D) embeddings (or (D,) for one).
            additional_forward_args, attribute_to_layer_input,
            relu_attributions: as in ``attribute``.
            contrast (optional): an index into ``references`` or an
                        embedding (D,) / (1, D) for all pairs, or one per
                        query ((Q,) indices, (Q, D) embeddings): the score
                        of pair (i, j) is :math:`s(f(Q_i), r_j) - s(f(Q_i),
                        r'_i)`.
                        Default: None
            chunk_size (int, optional): references whose gradients are taken
                        in one backward pass (memory grows with it).
                        Default: None (all R at once)

        Returns:
            *Tensor* of maps (Q, R, 1, h, w) at the layer's resolution.
        """
        check_positive_int(chunk_size, "chunk_size")
        if contrast is not None and self.contrast_refusal is not None:
            raise ValueError(self.contrast_refusal)
        queries = format_inputs(inputs)
        check_finite(*queries, names=["inputs"] * len(queries))
        refs = reference_arguments(references, len(queries[0]), None, contrast, True)
        args = format_additional_forward_args(additional_forward_args)
        with query_graph(
            [self._layer], queries, args, attribute_to_layer_input,
            self.embedding_func,
        ) as (captured, emb):  # fmt: skip
            self._check_embeddings(emb, refs)
            batch, count = emb.shape[0], refs.references.shape[0]
            pairs_emb = emb.unsqueeze(1).expand(batch, count, -1).flatten(0, 1)
            against = refs.references.to(emb.dtype).repeat(batch, 1)
            scores = self._reference_score(pairs_emb, against, None)
            if refs.contrast is not None:
                scores = scores.reshape(batch, count) - self._reference_score(
                    emb, refs.contrast.to(emb.dtype).expand(batch, -1), None
                ).unsqueeze(1)
            scores = scores.reshape(batch, count)
            acts = as_grid(self._layer, captured[0], queries, False)
            dtype = compute_dtype(acts)
            weights = acts.new_empty(count, batch, acts.shape[1], dtype=dtype)
            zero = torch.zeros(batch, dtype=torch.bool, device=acts.device)
            for cols, (grads, emb_grads) in batched_gradients(
                scores, [captured[0], emb], chunk_size
            ):
                grid = as_grid(self._layer, grads, queries, True)
                weights[cols] = grid.to(dtype).mean((-2, -1))  # (r, Q, N)
                # as in attribute: a pair whose score moves with the embedding
                # but not with the layer has an all-zero map
                still = (grid.flatten(2) == 0).all(2) & (emb_grads != 0).any(2)
                zero |= still.any(0).to(zero.device)
        acts = checked_pass(
            self._layer.model, [acts], [acts], ["inputs"], zero, type(self).__name__
        )[0]
        maps = weighted_sum(weights, acts.unsqueeze(0)).transpose(0, 1)
        return finalize_maps(maps, relu_attributions, acts.dtype).unsqueeze(2)

    def _check_embeddings(self, emb: Tensor, refs: ReferencePairs) -> None:
        check_width(emb, refs.references, "references", self.metric)
        if refs.contrast is not None:
            check_width(emb, refs.contrast, "contrast", self.metric)

    def _reference_score(
        self, emb: Tensor, reference: Tensor, contrast: Optional[Tensor]
    ) -> Tensor:
        """(P,) pair scores of embeddings (P, D) against references (P, D),
        minus those against ``contrast`` (P or 1, D) when given."""
        score = self.pair_score(emb, reference.unsqueeze(1), **self.rule_options)
        if contrast is None:
            return score
        against = contrast.to(emb.dtype).expand(emb.shape[0], -1).unsqueeze(1)
        return score - self.pair_score(emb, against, **self.rule_options)

    def _reference_maps(
        self,
        inputs: TensorOrTuple,
        references: Tensor,
        target: Any,
        contrast: Any,
        additional_forward_args: Any,
        to_input: bool,
        relu: bool,
    ) -> Tensor:
        """(B, 1, h, w) maps of each query against its reference embedding:
        one forward and one backward pass of the queries."""
        queries = format_inputs(inputs)
        check_finite(*queries, names=["inputs"] * len(queries))
        batch = len(queries[0])
        refs = reference_arguments(references, batch, target, contrast)
        args = format_additional_forward_args(additional_forward_args)
        with query_graph(
            [self._layer], queries, args, to_input, self.embedding_func
        ) as (captured, emb):
            self._check_embeddings(emb, refs)
            chosen = refs.chosen(batch).to(emb.dtype)
            score = self._reference_score(emb, chosen, refs.contrast).sum()
            grad, emb_grad = torch.autograd.grad(
                score, [captured[0], emb], allow_unused=True
            )
        grad = torch.zeros_like(captured[0]) if grad is None else grad
        acts = as_grid(self._layer, captured[0], queries, False)
        grads = as_grid(self._layer, grad, queries, False)
        moves = emb_grad is not None and (emb_grad != 0).any(1)
        zero = (grads.flatten(1) == 0).all(1) & moves
        acts = checked_pass(
            self._layer.model, [acts], [acts], ["inputs"], zero, type(self).__name__
        )[0]
        maps = weighted_sum(grads.to(acts.dtype).mean((-2, -1)), acts)
        return finalize_maps(maps, relu, acts.dtype).unsqueeze(1)
