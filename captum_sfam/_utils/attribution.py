r"""The engine of the pair-attribution family: orchestration only.

Every member explains a *pair*, a query image against a K-shot support:

1. capture the activations ``A`` of one layer for the queries and the support
   images (:mod:`.capture`), pool them into vectors ``V = p(A)``; the support
   vector is the mean of the K pooled shots (Eq. 1 of the SFAM paper);
2. turn the pooled pair into channel weights: the member's one weight rule,
   :meth:`PairAttribution._pair_weights` (gradient members instead define one
   pair score, see :class:`GradientPairAttribution`);
3. combine weights and activations, ``L = sum_n w_n A^n``
   (:meth:`PairAttribution._pair_maps`; Decomposition alone replaces it).

Weight rules and maps broadcast over leading dimensions, so the same two
functions serve ``attribute`` (B queries, one support each, or one shared
support) and ``attribute_pairs`` (Q queries x M gallery items).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from captum.attr import LayerAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from .captum_compat import format_additional_forward_args
from .capture import root_module
from .checks import (
    METRICS,
    PoolingType,
    check_metric,
    check_pooling,
    check_positive_int,
    deferred_checks,
)
from .features import (
    LayerSpec,
    PairFeatures,
    PooledPair,
    ReshapeTransform,
    layer_activations,
    pair_features,
    query_and_other_activations,
)
from .formatting import TensorOrTuple, format_gallery, format_inputs, format_support
from .maps import finalize_maps, weighted_sum

#: weights built at once by ``attribute_pairs`` (queries x items x shots x N)
MAX_CHUNK_ELEMENTS = 1 << 21


class PairAttribution(LayerAttribution):
    r"""Base class of the pair-attribution family (not used directly).

    A forward-only member implements :meth:`_pair_weights`, a call to its pure
    weight rule; it then has ``attribute``, ``attribute_pairs`` and
    ``channel_weights``. Activation capture, pooling, K-shot supports, batching,
    the weighted sum, ReLU and every check live here and in ``_utils``.
    """

    #: metrics a member is defined for
    supported_metrics: Tuple[str, ...] = METRICS
    #: pooling names a member is defined for; None: any, callables included
    supported_poolings: Optional[Tuple[str, ...]] = None
    #: False for members whose weights need gradients (no ``attribute_pairs``)
    forward_only: bool = True

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: Module,
        metric: str = "euclidean",
        pooling: PoolingType = "avg",
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
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
                        activations to (B, N, h, w), e.g. the tokens
                        (B, T, N) of a vision transformer to a grid.
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
        root = root_module(forward_func)
        if root is not None and not any(m is layer for m in root.modules()):
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

    # -- what a member implements -------------------------------------------
    def _pair_weights(self, pair: PooledPair) -> Tuple[Tensor, Tensor]:
        """Query weights (..., N) and shot weights (..., K or 1, N)."""
        raise NotImplementedError

    def _pair_maps(
        self,
        query: Tensor,
        support: Tensor,
        query_weights: Tensor,
        shot_weights: Tensor,
        with_support: bool = True,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Query maps (..., h, w) and shot maps (..., K, h', w'), Eq. 3.

        query (..., N, h, w) and support (..., K, N, h', w') activations; the
        leading dimensions of all four tensors broadcast. Shot maps are None
        unless ``with_support``.
        """
        query_maps = weighted_sum(query_weights, query)
        if not with_support:
            return query_maps, None
        return query_maps, weighted_sum(shot_weights, support)

    # -- orchestration --------------------------------------------------------
    def _weights(self, features: PairFeatures) -> Tuple[Tensor, Tensor]:
        return self._pair_weights(features.pooled())

    def _spec(self, additional_forward_args: Any, to_layer_input: bool) -> LayerSpec:
        return LayerSpec(
            self.forward_func, self.layer, self.pooling, self.reshape_transform,
            self.device_ids, to_layer_input, additional_forward_args,
        )  # fmt: skip

    def _pair_features(
        self,
        inputs: TensorOrTuple,
        support: TensorOrTuple,
        additional_forward_args: Any,
        attribute_to_layer_input: bool,
    ) -> PairFeatures:
        """Check and format the arguments of a call, then run the model."""
        args = format_additional_forward_args(additional_forward_args)
        spec = self._spec(args, attribute_to_layer_input)
        return self._features(spec, format_inputs(inputs), support)

    def _features(
        self, spec: LayerSpec, inputs: Tuple[Tensor, ...], support: TensorOrTuple
    ) -> PairFeatures:
        """Forward-only activations and pooled vectors of queries and support."""
        flat, groups, shots = format_support(inputs, support)
        query, others = query_and_other_activations(spec, inputs, flat, "support")
        return pair_features(spec, query, others, groups, shots, "support")

    @deferred_checks()
    def layer_activations(
        self,
        inputs: TensorOrTuple,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        batch_size: Optional[int] = None,
    ) -> Tensor:
        """(B, N, h, w) activations of the layer (after ``reshape_transform``),
        forward only, in batches of ``batch_size`` inputs (default: all)."""
        args = format_additional_forward_args(additional_forward_args)
        spec = self._spec(args, attribute_to_layer_input)
        return layer_activations(spec, format_inputs(inputs), "inputs", batch_size)

    @log_usage(part_of_slo=True)
    @deferred_checks()
    def attribute(
        self,
        inputs: TensorOrTuple,
        support: TensorOrTuple,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        return_support_attributions: bool = False,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): The queries, (B, C, H, W)
                        for an image model. A tuple for models taking several
                        tensors.
            support (Tensor or tuple[Tensor, ...]): Either (K, C, H, W): one
                        K-shot support shared by every query (its activations
                        are computed once), or (B, K, C, H, W): one support per
                        query. K = 1 is a plain pair. The support vector is the
                        mean of the K pooled shots (Eq. 1 of the SFAM paper).
                        A tuple, matching ``inputs``, for models taking several
                        tensors.
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after the inputs, for the queries and
                        for the support alike (so they must not depend on the
                        batch size).
                        Default: None
            attribute_to_layer_input (bool, optional): Explain the layer's
                        input instead of its output, as in Captum.
                        Default: False
            relu_attributions (bool, optional): Apply ReLU to the maps, as the
                        original CAM-style methods do before display.
                        Default: False
            return_support_attributions (bool, optional): Also return the maps
                        of the support images (Fig. 2 of the SFAM paper).
                        Default: False

        Returns:
            *Tensor* or *tuple[Tensor, Tensor]* of **attributions**:
            - **attributions** (*Tensor*): query maps of shape (B, 1, h, w) at
                        the layer's resolution; upsample them with
                        ``LayerAttribution.interpolate(attr, size, "bilinear")``.
            - with ``return_support_attributions=True``, a tuple of the query
                        maps and the support maps, of shape (B, K, 1, h', w').

            Maps are float32 (float64 when the activations are float64),
            detached, and finite.

        Raises:
            ValueError: NaN or inf in the inputs, the support or the
                        activations; shapes that do not fit; a degenerate pair
                        the method cannot explain (see the class docstring).
            TypeError: non-floating inputs or support.

        Examples::

            >>> net = torchvision.models.resnet50().eval()
            >>> sfam = LayerSFAM(net, net.layer4, metric="cosine")
            >>> # 8 queries against a shared 5-shot support
            >>> attr = sfam.attribute(queries, support=support)  # (8, 1, 7, 7)
            >>> up = LayerAttribution.interpolate(attr, (224, 224), "bilinear")
            >>> q_maps, s_maps = sfam.attribute(
            ...     queries, support, return_support_attributions=True)
        """
        features = self._pair_features(
            inputs, support, additional_forward_args, attribute_to_layer_input
        )
        query_weights, shot_weights = self._weights(features)
        dtype, relu = features.output_dtype, relu_attributions
        with torch.no_grad():
            query_maps, shot_maps = self._pair_maps(
                features.query, features.support, query_weights, shot_weights,
                with_support=return_support_attributions,
            )  # fmt: skip
            query_maps = finalize_maps(query_maps, relu, dtype).unsqueeze(1)
            if shot_maps is None or not return_support_attributions:
                return query_maps
            shot_maps = shot_maps.expand(features.batch_size, *shot_maps.shape[1:])
            return query_maps, finalize_maps(shot_maps, relu, dtype).unsqueeze(2)

    @deferred_checks()
    def attribute_pairs(
        self,
        inputs: TensorOrTuple,
        gallery: TensorOrTuple,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        return_gallery_attributions: bool = False,
        chunk_size: Optional[int] = None,
        forward_batch_size: Optional[int] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""Maps for every (query, gallery item) pair, from Q + M·K forwards.

        Retrieval (Q queries against a gallery of M images) and N-way K-shot
        few-shot episodes (M = N classes of K shots) explained in one call:
        each image runs through the network once, then all Q x M weight
        vectors and maps come from the member's weight rule and map function
        broadcast over (query, item), in chunks of queries so that memory
        stays bounded. ``result[i, j]`` equals
        ``attribute(inputs[i:i+1], gallery[j])`` (tested).

        Args:

            inputs (Tensor or tuple[Tensor, ...]): Q queries (Q, C, H, W).
            gallery (Tensor or tuple[Tensor, ...]): (M, C, H, W): M one-shot
                        items (retrieval), or (M, K, C, H, W): M items of K
                        shots each (few-shot classes; the support vector of an
                        item is the mean of its K pooled shots).
            additional_forward_args, attribute_to_layer_input,
            relu_attributions: as in :meth:`attribute`.
            return_gallery_attributions (bool, optional): Also return the maps
                        of the gallery images for every query.
                        Default: False
            chunk_size (int, optional): queries processed at once; by default
                        chosen so that a chunk holds about
                        ``MAX_CHUNK_ELEMENTS`` (2**21) weights.
                        Default: None
            forward_batch_size (int, optional): images per forward pass, for
                        large galleries: bounds the network's activation
                        memory (the explained layer's activations of all
                        images are kept). Default: all at once

        Returns:
            *Tensor* or *tuple[Tensor, Tensor]*: query maps (Q, M, 1, h, w);
            with ``return_gallery_attributions=True`` also the gallery maps,
            (Q, M, 1, h', w') for a (M, C, H, W) gallery and
            (Q, M, K, 1, h', w') for a (M, K, C, H, W) gallery.

        Raises:
            NotImplementedError: for gradient members (CG-RAM, Grad-FAM), which
                        have no all-pairs form; call :meth:`attribute` with one
                        support per query.
        """
        if not self.forward_only:
            raise NotImplementedError(
                f"{type(self).__name__} has no all-pairs form (its weights need "
                "a backward pass per pair): call attribute() with one support "
                "per query instead"
            )
        formatted = format_inputs(inputs)
        check_positive_int(chunk_size, "chunk_size")
        check_positive_int(forward_batch_size, "forward_batch_size")
        flat, items, shots = format_gallery(formatted, gallery)
        first = gallery[0] if isinstance(gallery, tuple) else gallery
        per_item_shots = first.dim() > formatted[0].dim()
        args = format_additional_forward_args(additional_forward_args)
        spec = self._spec(args, attribute_to_layer_input)
        query, others = query_and_other_activations(
            spec, formatted, flat, "gallery", forward_batch_size
        )
        features = pair_features(spec, query, others, items, shots, "gallery")
        pooled, dtype = features.pooled(), features.output_dtype
        query, gal = features.query, features.support.unsqueeze(0)
        channels = query.shape[1]
        step = chunk_size or max(1, MAX_CHUNK_ELEMENTS // (items * shots * channels))
        query_out, gallery_out = [], []
        with torch.no_grad():
            for start in range(0, query.shape[0], step):
                chunk = slice(start, start + step)
                # queries on dim 0, gallery items on dim 1 (shots on dim 2)
                weights = self._pair_weights(
                    PooledPair(
                        pooled.query[chunk].unsqueeze(1),
                        pooled.shots.unsqueeze(0),
                        pooled.query_positions,
                        pooled.support_positions,
                    )
                )
                query_maps, gallery_maps = self._pair_maps(
                    query[chunk].unsqueeze(1), gal, *weights,
                    with_support=return_gallery_attributions,
                )  # fmt: skip
                size = (query[chunk].shape[0], items)
                query_out.append(query_maps.expand(*size, *query_maps.shape[2:]))
                if return_gallery_attributions:
                    assert gallery_maps is not None
                    gallery_out.append(
                        gallery_maps.expand(*size, *gallery_maps.shape[2:])
                    )
            query_maps = finalize_maps(torch.cat(query_out), relu_attributions, dtype)
            if not return_gallery_attributions:
                return query_maps.unsqueeze(2)
            gallery_maps = finalize_maps(
                torch.cat(gallery_out), relu_attributions, dtype
            ).unsqueeze(3)
        if not per_item_shots:
            gallery_maps = gallery_maps.squeeze(2)
        return query_maps.unsqueeze(2), gallery_maps

    @deferred_checks()
    def channel_weights(
        self,
        inputs: TensorOrTuple,
        support: TensorOrTuple,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
    ) -> Tuple[Tensor, Tensor]:
        r"""The channel weights the method gives each pair.

        Args:
            inputs, support, additional_forward_args, attribute_to_layer_input:
                        as in :meth:`attribute`.

        Returns:
            *tuple[Tensor, Tensor]* of **(query_weights, support_weights)**:
            query weights of shape (B, N), which multiply the query's
            activations, and support weights of shape (B, K, N), which multiply
            each support image's activations.
        """
        features = self._pair_features(
            inputs, support, additional_forward_args, attribute_to_layer_input
        )
        query_weights, shot_weights = self._weights(features)
        batch, shots = features.batch_size, features.shots
        channels, dtype = features.query.shape[1], features.output_dtype
        return (
            query_weights.detach().to(dtype).expand(batch, channels).clone(),
            shot_weights.detach().to(dtype).expand(batch, shots, channels).clone(),
        )
