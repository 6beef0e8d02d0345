r"""The base of the pair-attribution family: what every member shares.

A member explains a *pair*, a query against a K-shot support, in four stages,
one file each: the arguments become :class:`~.pairs.Pairs`; :class:`~.layer.
Layer` turns them into :class:`~.layer.Features` (activations at the layer,
pooled, or with gradients); the member's rule turns features into channel
weights; weights and activations become maps (Eq. 3). Two kinds of member
implement the last two stages: :class:`~.forward.ForwardPairAttribution`
(a pure weight rule, forward only) and :class:`~.gradient.
GradientPairAttribution` (a pair score whose layer gradients are the weights).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from captum.attr import LayerAttribution
from torch import Tensor
from torch.nn import Module

from .captum_compat import format_additional_forward_args
from .checks import (
    METRICS,
    PoolingType,
    check_metric,
    check_pooling,
    checked_pass,
    public_call,
)
from .correspondence import CorrespondenceMixin
from .layer import Layer, ReshapeTransform
from .model import check_layout
from .pairs import Features, TargetType, TensorOrTuple, format_inputs, pair_arguments


class PairAttribution(CorrespondenceMixin, LayerAttribution):
    r"""Base class of the pair-attribution family (not used directly).

    Subclass :class:`~captum_sfam.methods.ForwardPairAttribution` (a weight
    rule) or :class:`~captum_sfam.methods.GradientPairAttribution` (a pair
    score). Every member has ``attribute``, ``channel_weights``,
    ``point_to_point``, ``point_map`` and ``layer_activations``.
    """

    #: metrics a member is defined for
    supported_metrics: Tuple[str, ...] = METRICS
    #: pooling names a member is defined for, or None for any (callables included)
    supported_poolings: Optional[Tuple[str, ...]] = None
    #: why the member (with its settings) refuses ``contrast=``, or None: the
    #: one place a member whose maps do not depend on the support says so
    contrast_refusal: Optional[str] = None
    #: whether the member's features need one support per query (gradients)
    _per_query: bool = False

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: Module,
        metric: str = "euclidean",
        pooling: PoolingType = "avg",
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        layout: str = "auto",
        num_prefix_tokens: Optional[int] = None,
    ) -> None:
        r"""
        Args:

            forward_func (Callable): The forward function of the model or any
                        modification of it. Forward-only methods run it up to
                        ``layer`` only; gradient methods (CG-RAM, Grad-FAM)
                        need it to return the embedding (B, D).
            layer (torch.nn.Module): Layer whose activations are explained,
                        usually the last convolutional block. Its output (or
                        input, see ``attribute_to_layer_input``) must be
                        (B, N, h, w), or become so through
                        ``reshape_transform``. A layer used twice in one
                        forward is captured at its first call.
            metric (str, optional): "euclidean" or "cosine", the metric the
                        model decides with.
                        Default: "euclidean"
            pooling (str or Callable, optional): "avg" (global average pooling,
                        the paper's default), "max", or a callable mapping
                        (B, N, h, w) to (B, N).
                        Default: "avg"
            device_ids (list[int], optional): Device ID list, necessary only if
                        forward_func applies a DataParallel model, as in
                        Captum's layer methods.
                        Default: None
            reshape_transform (Callable, optional): maps the layer's raw
                        activations to (B, N, h, w); overrides ``layout``.
                        Default: None
            layout (str, optional): the layout of the layer's activations:
                        "channels_first" (B, N, h, w), "channels_last"
                        (B, H, W, N) (Swin, ConvNeXt blocks run
                        channels-last), "tokens" (B, T, N) (vision
                        transformers: prefix tokens dropped, patch tokens laid
                        on the grid), or "auto": 3-D activations are tokens,
                        4-D ones channels-first or channels-last as the
                        layer's own parameters tell (its last convolution,
                        norm or linear layer gives the channel count); a shape
                        the parameters cannot settle raises a ``ValueError``
                        asking for ``layout``, it is never guessed.
                        Default: "auto"
            num_prefix_tokens (int, optional): tokens before the patch tokens
                        (class, register and distillation tokens) for token
                        layouts. By default read from the model: timm's
                        ``num_prefix_tokens``, the Hugging Face config (ViT,
                        DeiT, DINOv2 with or without registers, Swin),
                        torchvision's ``class_token``.
                        Default: None
        """
        if not callable(forward_func):
            raise TypeError("forward_func must be callable (a model or a function)")
        if not isinstance(layer, Module):
            raise TypeError(f"layer must be a torch.nn.Module, got {type(layer)}")
        if isinstance(layer, torch.jit.ScriptModule):
            raise TypeError(
                "layer is a TorchScript module: forward hooks are not supported on "
                "ScriptModules (nor by Captum's layer methods); explain the eager "
                "model you scripted, which has the same weights"
            )
        owner = getattr(forward_func, "__self__", None)
        root = forward_func if isinstance(forward_func, Module) else owner
        if isinstance(root, Module) and not any(m is layer for m in root.modules()):
            raise ValueError("layer is not a submodule of forward_func")
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError("reshape_transform must be callable or None")
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        name = type(self).__name__
        self.metric = check_metric(metric)
        if self.metric not in self.supported_metrics:
            raise ValueError(
                f"{name} is defined for metric in {self.supported_metrics} only, "
                f"got {metric!r}"
            )
        self.pooling = check_pooling(pooling)
        allowed = self.supported_poolings
        if allowed is not None and (callable(pooling) or pooling not in allowed):
            raise ValueError(f"{name} needs pooling in {allowed}, got {pooling!r}")
        self.reshape_transform = reshape_transform
        self.layout = check_layout(layout)
        if num_prefix_tokens is not None and (
            not isinstance(num_prefix_tokens, int)
            or isinstance(num_prefix_tokens, bool)
            or num_prefix_tokens < 0
        ):
            raise ValueError(
                "num_prefix_tokens must be a non-negative int, got "
                f"{num_prefix_tokens!r}"
            )
        self._layer = Layer(
            forward_func, layer, self.pooling, reshape_transform, device_ids,
            self.layout, num_prefix_tokens,
        )  # fmt: skip
        self.num_prefix_tokens = self._layer.num_prefix_tokens
        #: keyword options of the member's rule (weight rule or pair score)
        self.rule_options: Dict[str, Any] = {"metric": self.metric}
        #: keyword options of a member's ``map_rule``
        self.map_options: Dict[str, Any] = {}

    def _refuse(self, contrast: Optional[TensorOrTuple]) -> None:
        if contrast is not None and self.contrast_refusal is not None:
            raise ValueError(self.contrast_refusal)

    # -- what the two kinds of member implement -------------------------------
    def _features(self, pairs: Any) -> Features:
        raise NotImplementedError

    def _weights(self, features: Features) -> Tuple[Tensor, Tensor]:
        """Query weights (B or 1, N) and shot weights (G, K or 1, N)."""
        raise NotImplementedError

    # -- public methods shared by every member --------------------------------
    @public_call
    def channel_weights(
        self,
        inputs: TensorOrTuple,
        support: TensorOrTuple,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        contrast: Optional[TensorOrTuple] = None,
        target: Optional[TargetType] = None,
        support_labels: Optional[TargetType] = None,
    ) -> Tuple[Tensor, Tensor]:
        r"""The channel weights the method gives each pair.

        Args:
            inputs, support, additional_forward_args, attribute_to_layer_input,
            contrast, target, support_labels: as in ``attribute``.

        Returns:
            *tuple[Tensor, Tensor]* of **(query_weights, support_weights)**:
            query weights of shape (B, N), which multiply the query's
            activations, and support weights of shape (B, K, N), which multiply
            each support image's activations.
        """
        self._refuse(contrast)
        pairs = pair_arguments(
            inputs, support, additional_forward_args, attribute_to_layer_input,
            contrast, target, support_labels, per_query=self._per_query,
        )  # fmt: skip
        features = self._features(pairs)
        query_weights, shot_weights = self._weights(features)
        batch, (shots, channels) = pairs.batch_size, features.support.shape[1:3]
        return (
            query_weights.detach()
            .to(features.query.dtype)
            .expand(batch, channels)
            .clone(),
            shot_weights.detach()
            .to(features.query.dtype)
            .expand(batch, shots, channels)
            .clone(),
        )

    @public_call
    def layer_activations(
        self,
        inputs: TensorOrTuple,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        batch_size: Optional[int] = None,
    ) -> Tensor:
        """(B, N, h, w) activations of the layer (after ``reshape_transform``
        or the layout), forward only, in batches of ``batch_size`` inputs."""
        args = format_additional_forward_args(additional_forward_args)
        acts = self._layer.activations(
            format_inputs(inputs), "inputs", args, attribute_to_layer_input, batch_size
        )
        checked_pass(self._layer.model, [acts], [acts], ["inputs"])
        return acts  # in the model's dtype
