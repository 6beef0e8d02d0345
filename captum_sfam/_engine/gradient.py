r"""Gradient members: Grad-CAM weights of a pair score (CG-RAM, Grad-FAM).

:class:`GradientPairAttribution` reads a call top to bottom: arguments ->
pairs (:mod:`.pairs`) -> activations and gradients of the member's pair
score from one forward and one backward pass (queries, support and contrast
together when the model allows) -> weights, Grad-CAM's spatial means ->
maps (Eq. 3). Its score is a function of :mod:`captum_sfam.functional`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from ..functional.similarity import MetricFunc
from .base import PairAttribution
from .checks import (
    PoolingType,
    checked_pass,
    compute_dtype,
    finalize_maps,
    public_call,
    warn_if,
)
from .layer import NOT_CALLED, Features, ReshapeTransform, split_parts, weighted_sum
from .model import EmbeddingFunc, check_embedding_func, warn_if_classifier
from .pairs import Images, Pairs, TargetType, TensorOrTuple, pair_arguments

Maps = Union[Tensor, Tuple[Tensor, Tensor]]


class GradientPairAttribution(PairAttribution, GradientAttribution):
    r"""Base of the members whose weights are gradients of a pair score.

    For a score :math:`s_b` of pair b (the member's :meth:`_pair_score` of the
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
        support: TensorOrTuple,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        return_support_attributions: bool = False,
        contrast: Optional[TensorOrTuple] = None,
        target: Optional[TargetType] = None,
        support_labels: Optional[TargetType] = None,
    ) -> Maps:
        r"""Maps of each query against its support, from the layer gradients
        of the member's pair score (against ``contrast``: of the score of
        S minus the score of S').

        Args and Returns: as
        :meth:`~captum_sfam.methods.ForwardPairAttribution.attribute`. The
        support runs once per query (its gradients depend on the query), with
        autograd, in one forward and one backward pass per call.
        """
        if contrast is not None and self.contrast_refusal is not None:
            raise ValueError(self.contrast_refusal)
        pairs = pair_arguments(
            inputs, support, additional_forward_args, attribute_to_layer_input,
            contrast, target, support_labels,
        )  # fmt: skip
        features = self._features(pairs)
        query_weights, shot_weights = self._weights(features)
        relu, dtype = relu_attributions, features.dtype
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
        """Activations and gradients of the pair score (S minus S' with a
        contrast) at the layer, for the queries and each support shot."""
        support, contrast = pairs.per_query()
        parts = [pairs.inputs, support] + ([contrast] if contrast else [])
        sizes = [p[0].shape[0] for p in parts]
        batch, shots = pairs.batch_size, pairs.shots

        def total(embeddings: List[Tensor]) -> Tensor:
            query, *others = split_parts(embeddings, groups, sizes)
            score = self.pair_score(
                query, others[0].reshape(batch, shots, -1), **self.rule_options
            )
            if contrast:  # s(Q, S) - s(Q, S')
                against = others[1].reshape(batch, -1, query.shape[1])
                score = score - self.pair_score(query, against, **self.rule_options)
            return score.sum()

        batches, names, groups = self._layer._batches(
            parts, ["inputs", pairs.argument, "contrast"][: len(parts)]
        )
        acts, grads, emb_grads = self._gradient_pass(batches, names, total, pairs)
        acts = split_parts(acts, groups, sizes)  # queries, support, contrast
        grads = split_parts(grads, groups, sizes)
        checked_pass(self._layer.model, list(acts))
        dtype = compute_dtype(acts[0], acts[1])
        query, others = self._layer._fits(acts[0], acts[1], pairs.argument, dtype)
        self._warn_if_zero(grads[0], split_parts(emb_grads, groups, sizes)[0])
        return Features(
            query, others.reshape(batch, shots, *others.shape[1:]),
            query_gradients=grads[0].to(dtype),
            support_gradients=grads[1].to(dtype).reshape(
                batch, shots, *grads[1].shape[1:]
            ),
        )  # fmt: skip

    def _gradient_pass(
        self,
        batches: Sequence[Images],
        names: Sequence[str],
        total: Callable[[List[Tensor]], Tensor],
        pairs: Pairs,
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Grid activations and gradients of ``total(embeddings)`` at the
        layer's FIRST call in each batch (a layer called twice contributes
        through both calls), and the embeddings' gradients: one forward per
        batch and ONE backward, with autograd enabled even inside
        ``torch.no_grad()``/``inference_mode()``."""
        layer, to_input = self._layer, pairs.attribute_to_layer_input
        args = pairs.additional_forward_args or ()
        device_ids = layer.device_ids
        if device_ids is None and isinstance(layer.root, torch.nn.DataParallel):
            device_ids = list(layer.root.device_ids or [])
        captured: List[Images] = []
        embeddings: List[Tensor] = []
        with torch.inference_mode(False), torch.enable_grad(), layer._protected():
            for batch, argument in zip(batches, names):
                store: Dict[torch.device, Images] = {}
                # inference tensors (made under inference_mode) cannot enter a graph
                batch = tuple(t.clone() if t.is_inference() else t for t in batch)
                hook = _first_call_hook(store, to_input)
                with layer._hooked(hook, to_input, argument):
                    output = layer.forward_func(*batch, *args)
                if not store:
                    raise ValueError(NOT_CALLED)
                captured.append(_in_batch_order(store, device_ids))
                embeddings.append(_embedding_with_grad(output, self.embedding_func))
            flat = [t for group in captured for t in group]
            wrt = flat + embeddings
            grads = torch.autograd.grad(total(embeddings), wrt, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]
        device, acts, layer_grads, start = batches[0][0].device, [], [], 0
        for group, batch in zip(captured, batches):
            part = grads[start : start + len(group)]
            start += len(group)
            shape = tuple(batch[0].shape)  # DataParallel: back on the inputs' device
            acts.append(layer.grid(tuple(t.detach().to(device) for t in group), shape))
            part = tuple(g.detach().to(device) for g in part)
            layer_grads.append(layer.grid(part, shape))
        return acts, layer_grads, [g.detach().to(device) for g in grads[len(flat) :]]

    def _warn_if_zero(self, query_grads: Tensor, embedding_grads: Tensor) -> None:
        """An embedding that does not depend on the layer's positions (a ViT's
        class token at its last block, every unit after the layer inactive)
        has an exactly zero gradient there while the score moves with the
        embedding: the map is all zero, so say why."""
        warn_if(
            (
                (query_grads.flatten(1) == 0).all(dim=1)
                & (embedding_grads != 0).any(dim=1)
            ).any(),
            f"{type(self).__name__}: the map is all zero for a query, because the "
            "embedding does not depend on layer there (its gradient at layer is "
            "exactly zero while the score depends on the embedding). A vision "
            "transformer whose embedding is the class token does not use its last "
            "block's patch tokens; a ReLU network may have every unit after the "
            "layer inactive for this image. Explain an earlier block (e.g. "
            "blocks[-2]), pass attribute_to_layer_input=True, or use a "
            "forward-only member (LayerSFAM)",
        )


def _grad_ready(value: Tensor) -> Tensor:
    """``value`` as a node of the graph (a fresh leaf if nothing before the
    layer requires grad, e.g. frozen parameters and plain inputs)."""
    return value if value.requires_grad else value.detach().requires_grad_(True)


def _first_call_hook(
    store: Dict[torch.device, Tuple[Tensor, ...]], to_input: bool
) -> Callable[..., Any]:
    """A hook keeping the tensors of a layer's first call on each device (one
    device, or each replica of a ``DataParallel`` model), in the graph."""

    def hook(_module: Module, hook_args: Any, output: Any = None) -> Any:
        value = hook_args if to_input else output
        values = value if isinstance(value, tuple) else (value,)
        tensors = [v for v in values if isinstance(v, Tensor)]
        if not tensors or tensors[0].device in store:
            return None  # a layer called twice: the first call is explained
        ready = tuple(_grad_ready(v) if isinstance(v, Tensor) else v for v in values)
        store[tensors[0].device] = tuple(v for v in ready if isinstance(v, Tensor))
        if isinstance(value, tuple):
            return ready
        return ready[0]

    return hook


def _in_batch_order(
    store: Dict[torch.device, Tuple[Tensor, ...]], order: Optional[List[int]]
) -> Tuple[Tensor, ...]:
    """The per-device captures, in the order DataParallel scattered the batch."""
    if len(store) == 1:
        return next(iter(store.values()))
    devices = sorted(store, key=lambda d: (order or []).index(d.index)
                     if order and d.index in order else (d.index or 0))  # fmt: skip
    return tuple(torch.cat(parts) for parts in zip(*(store[d] for d in devices)))


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output.keys())}"
    if isinstance(output, (tuple, list)):
        kinds = [type(o).__name__ for o in output]
        return f"a {type(output).__name__} of {len(output)} items {kinds}"
    return f"a {type(output).__name__}"


def select_embedding(output: Any, embedding_func: EmbeddingFunc) -> Tensor:
    """The (B, D) embedding in a model output (other tensor shapes flattened).

    ``embedding_func`` None: the output must be a tensor. A str reads a dict
    key or a ``ModelOutput`` field, an int a tuple item, a callable maps the
    output to the embedding.
    """
    if embedding_func is None:
        value = output
        if not isinstance(value, Tensor):
            raise TypeError(
                f"forward_func returned {_describe(output)}, not the embedding "
                "tensor: pass embedding_func= to pick it (a key such as "
                "'pooler_output' or 'embedding', an index such as 0, or a "
                "callable mapping the output to (B, D))"
            )
    elif callable(embedding_func):
        value = embedding_func(output)
    elif isinstance(embedding_func, str):
        if isinstance(output, Mapping) and embedding_func in output:
            value = output[embedding_func]
        elif not isinstance(output, Mapping) and hasattr(output, embedding_func):
            value = getattr(output, embedding_func)
        else:
            raise ValueError(
                f"embedding_func={embedding_func!r}: forward_func returned "
                f"{_describe(output)}, which has no such key"
            )
    else:
        if not isinstance(output, (tuple, list)) or not (
            -len(output) <= embedding_func < len(output)
        ):
            raise ValueError(
                f"embedding_func={embedding_func!r}: forward_func returned "
                f"{_describe(output)}, which has no such index"
            )
        value = output[embedding_func]
    if not isinstance(value, Tensor):
        raise TypeError(
            f"embedding_func must select a Tensor, got {type(value).__name__}"
        )
    if value.dim() < 2:
        raise ValueError(
            f"the embedding must be (B, D), got shape {tuple(value.shape)}: "
            "check embedding_func"
        )
    return value.reshape(value.shape[0], -1)


def _embedding_with_grad(output: Any, embedding_func: EmbeddingFunc) -> Tensor:
    embedding = select_embedding(output, embedding_func)
    if not embedding.requires_grad:
        raise ValueError(
            "forward_func computes the embedding without autograd (it runs "
            "under torch.no_grad() or torch.inference_mode(), as "
            "pytorch-metric-learning's InferenceModel.get_embeddings does, "
            "or detaches it): the gradient members need its gradient. Pass "
            "the model itself (e.g. trunk followed by embedder) as "
            "forward_func"
        )
    return embedding
