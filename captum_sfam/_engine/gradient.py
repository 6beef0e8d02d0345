r"""Gradient members: Grad-CAM weights of a pair score (CG-RAM, Grad-FAM).

:class:`GradientPairAttribution` reads a call top to bottom: arguments ->
pairs (:mod:`.pairs`) -> activations and gradients of the member's pair
score from one forward and one backward pass (queries, support and contrast
together when the model allows) -> weights, Grad-CAM's spatial means ->
maps (Eq. 3). Its score is a function of :mod:`captum_sfam.functional`.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from ..functional.similarity import MetricFunc
from .base import PairAttribution
from .checks import PoolingType, finalize_maps, public_call, weighted_sum
from .layer import ReshapeTransform
from .model import EmbeddingFunc, check_embedding_func, warn_if_classifier
from .pairs import Features, Pairs, TargetType, TensorOrTuple, pair_arguments

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
