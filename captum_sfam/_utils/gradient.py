r"""The engine of the gradient members (CG-RAM, Grad-FAM).

As Captum's ``LayerGradCam`` mixes ``GradientAttribution`` into a layer
attribution, these members are pair attributions whose channel weights are
Grad-CAM's spatial means of layer gradients. A member defines one pair score,
:meth:`GradientPairAttribution._pair_score`; the engine differentiates it with
respect to the layer activations of the query and of each support shot, from
one forward pass (queries, support and contrast together when the model is in
eval mode) and one backward pass, and keeps the activations of that pass for
the maps.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from captum.attr import GradientAttribution
from torch import Tensor
from torch.nn import Module

from ..similarity import MetricFunc
from .attribution import PairAttribution
from .capture import batch_independent, gradient_pass
from .checks import PoolingType, warn_if
from .features import LayerSpec, PairFeatures, ReshapeTransform, pair_features, to_grid
from .formatting import References, TensorOrTuple, format_support
from .maps import spatial_mean
from .model import EmbeddingFunc, check_embedding_func, find_model, warn_if_classifier


def _per_query(flat: Tuple[Tensor, ...], groups: int, batch: int) -> Tuple[Tensor, ...]:
    """A shared support (G = 1) repeated for each of the B queries."""
    if groups != 1:
        return flat
    return tuple(t.unsqueeze(0).expand(batch, *t.shape).flatten(0, 1) for t in flat)


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
    """

    forward_only = False

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
        if custom:
            self.metric = metric  # type: ignore[assignment]
        GradientAttribution.__init__(self, forward_func)
        self.embedding_func = check_embedding_func(embedding_func)
        warn_if_classifier(find_model(forward_func, layer), self.embedding_func)

    # -- what a gradient member implements ------------------------------------
    def _pair_score(self, query: Tensor, shots: Tensor) -> Tensor:
        """Scores (B,) of query embeddings (B, D) and shot embeddings (B, K, D)."""
        raise NotImplementedError

    # -- orchestration ----------------------------------------------------------
    def _weights(self, features: PairFeatures) -> Tuple[Tensor, Tensor]:
        assert features.query_gradients is not None
        assert features.support_gradients is not None
        return (
            spatial_mean(features.query_gradients),
            spatial_mean(features.support_gradients),
        )

    def _features(
        self,
        spec: LayerSpec,
        inputs: Tuple[Tensor, ...],
        support: Union[TensorOrTuple, References],
        contrast: Optional[TensorOrTuple] = None,
    ) -> PairFeatures:
        batch = inputs[0].shape[0]
        if isinstance(support, References):
            flat, shots = support.per_query(), support.shots
        else:
            flat, groups, shots = format_support(inputs, support)
            flat = _per_query(flat, groups, batch)
        parts = [inputs, flat]
        self._check_contrast(contrast)
        if contrast is not None:
            cflat, cgroups, cshots = format_support(inputs, contrast, "contrast")
            parts.append(_per_query(cflat, cgroups, batch))
        sizes = [p[0].shape[0] for p in parts]
        names = ["inputs", "support", "contrast"][: len(parts)]

        def score(embeddings: List[Tensor]) -> Tensor:
            emb = torch.cat(embeddings) if len(embeddings) > 1 else embeddings[0]
            query, *others = emb.split(sizes)
            s = self._pair_score(query, others[0].reshape(batch, shots, -1))
            if len(others) > 1:  # contrastive: s(Q, S) - s(Q, S')
                s = s - self._pair_score(
                    query, others[1].reshape(batch, -1, emb.shape[1])
                )
            return s

        joint = batch_independent(spec.forward_func, spec.layer) and all(
            all(
                a.shape[1:] == b.shape[1:] and a.dtype == b.dtype
                for a, b in zip(inputs, p)
            )
            for p in parts[1:]
        )
        if joint:
            batches = [tuple(torch.cat(ts) for ts in zip(*parts))]
            names = [" and ".join(names)]
        else:
            batches = parts
        acts, grads, emb_grads = gradient_pass(
            spec.forward_func, spec.layer, batches, score, self.embedding_func,
            spec.additional_forward_args, spec.attribute_to_layer_input, names,
            spec.device_ids,
        )  # fmt: skip
        act_parts: List[Tensor] = []
        grad_parts: List[Tensor] = []
        for a, g, b in zip(acts, grads, batches):
            shape = tuple(b[0].shape)
            act_parts.append(to_grid(spec, a, shape[0], shape))
            grad_parts.append(to_grid(spec, g, shape[0], shape))
        if joint:  # one pass: split it back into queries, support, contrast
            act_parts = list(act_parts[0].split(sizes))
            grad_parts = list(grad_parts[0].split(sizes))
        query, support_acts = act_parts[0], act_parts[1]
        query_grad, support_grad = grad_parts[0], grad_parts[1]
        features = pair_features(spec, query, support_acts, batch, shots, "support")
        dtype = features.output_dtype
        query_grad, support_grad = query_grad.to(dtype), support_grad.to(dtype)
        # an embedding that does not depend on the layer's positions (e.g. the
        # class token of a ViT at its last block, or every unit after the layer
        # inactive for this image) has an exactly zero gradient there while
        # the score moves with the embedding: the map is all zero, say why
        emb_grad = torch.cat(emb_grads)[: sizes[0]]
        warn_if(
            (
                (query_grad.flatten(1) == 0).all(dim=1) & (emb_grad != 0).any(dim=1)
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
        features.query_gradients = query_grad
        features.support_gradients = support_grad.reshape(
            batch, shots, *support_grad.shape[1:]
        )
        return features
