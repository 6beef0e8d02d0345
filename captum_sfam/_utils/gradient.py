r"""The engine of the gradient members (CG-RAM, Grad-FAM).

As Captum's ``LayerGradCam`` mixes ``GradientAttribution`` into a layer
attribution, these members are pair attributions whose channel weights are
Grad-CAM's spatial means of layer gradients. A member defines one pair score,
:meth:`GradientPairAttribution._pair_score`; the engine differentiates it with
respect to the layer activations of the query and of each support shot, and
keeps the activations of the same passes for the maps.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from captum.attr import GradientAttribution
from torch import Tensor
from torch.nn import Module

from ..similarity import flatten_embeddings
from .attribution import PairAttribution
from .capture import gradients_and_activations, model_outputs
from .checks import PoolingType
from .features import LayerSpec, PairFeatures, ReshapeTransform, pair_features, to_grid
from .formatting import TensorOrTuple, format_support
from .maps import spatial_mean


class GradientPairAttribution(PairAttribution, GradientAttribution):
    r"""Base of the members whose weights are gradients of a pair score.

    For a score :math:`s_b` of pair b (the member's :meth:`_pair_score` of the
    query embedding and the K support embeddings), the query's weights are
    :math:`\mathrm{mean}_{ij}\,\partial s_b/\partial A_{Q_b}` and shot k's
    weights :math:`\mathrm{mean}_{ij}\,\partial s_b/\partial A_{S_{bk}}`.
    The support is run once per query (B*K images), since its gradients depend
    on the query. ``forward_func`` must return the embedding (B, D) (other
    shapes are flattened).
    """

    forward_only = False

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: Module,
        metric: str = "euclidean",
        pooling: PoolingType = "avg",
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
    ) -> None:
        PairAttribution.__init__(
            self, forward_func, layer, metric, pooling, device_ids, reshape_transform
        )
        GradientAttribution.__init__(self, forward_func)

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
        self, spec: LayerSpec, inputs: Tuple[Tensor, ...], support: TensorOrTuple
    ) -> PairFeatures:
        flat, groups, shots = format_support(inputs, support)
        batch = inputs[0].shape[0]
        args = spec.additional_forward_args
        model, layer = spec.forward_func, spec.layer
        query_emb = flatten_embeddings(model_outputs(model, layer, inputs, args))
        shot_emb = flatten_embeddings(model_outputs(model, layer, flat, args))
        shot_emb = shot_emb.reshape(groups, shots, -1).expand(batch, -1, -1)
        if groups == 1:  # the support images once per query
            flat = tuple(
                t.unsqueeze(0).expand(batch, *t.shape).flatten(0, 1) for t in flat
            )

        def query_objective(output: Tensor) -> Tensor:
            return self._pair_score(
                flatten_embeddings(output), shot_emb.to(output.dtype)
            )

        def support_objective(output: Tensor) -> Tensor:
            emb = flatten_embeddings(output).reshape(batch, shots, -1)
            score = self._pair_score(query_emb.to(output.dtype), emb)
            # one row per support image; the rows of pair b sum to s_b
            return (score / shots).repeat_interleave(shots)

        query_grad, query = self._gradients(spec, inputs, query_objective)
        support_grad, support = self._gradients(spec, flat, support_objective)
        features = pair_features(spec, query, support, batch, shots, "support")
        dtype = features.output_dtype
        features.query_gradients = query_grad.to(dtype)
        features.support_gradients = support_grad.to(dtype).reshape(
            batch, shots, *support_grad.shape[1:]
        )
        return features

    def _gradients(
        self,
        spec: LayerSpec,
        inputs: Tuple[Tensor, ...],
        objective: Callable[[Tensor], Tensor],
    ) -> Tuple[Tensor, Tensor]:
        """Layer gradients of ``objective`` and layer activations, (B, N, h, w)."""
        grads, acts = gradients_and_activations(
            spec.forward_func, spec.layer, inputs, objective,
            spec.additional_forward_args, spec.attribute_to_layer_input,
            spec.device_ids,
        )  # fmt: skip
        batch = inputs[0].shape[0]
        return to_grid(spec, grads, batch), to_grid(spec, acts, batch)
