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
from .correspondence import CorrespondenceMixin
from .features import (
    LayerSpec,
    PairFeatures,
    PooledPair,
    ReshapeTransform,
    layer_activations,
    pair_features,
    query_and_other_activations,
)
from .formatting import (
    References,
    TargetType,
    TensorOrTuple,
    format_gallery,
    format_inputs,
    format_references,
    format_support,
    group_by_label,
)
from .maps import finalize_maps, pool, weighted_sum
from .model import (
    channel_count,
    check_layout,
    find_model,
    patch_size,
    prefix_tokens,
)

#: weights built at once by ``attribute_pairs`` (queries x items x shots x N)
MAX_CHUNK_ELEMENTS = 1 << 21


def _activations(
    spec: LayerSpec,
    inputs: Tuple[Tensor, ...],
    others: Tuple[Tensor, ...],
    contrast: Optional[Tuple[Tensor, ...]],
    argument: str,
    batch_size: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Activations of the queries, of ``others`` and of the contrast images.

    The contrast images join the support (or gallery) in the same forward
    pass as the queries when their shapes allow it (see
    :func:`query_and_other_activations`)."""
    if contrast is None:
        query, acts = query_and_other_activations(
            spec, inputs, others, argument, batch_size
        )
        return query, acts, None
    if all(
        a.shape[1:] == c.shape[1:] and a.dtype == c.dtype
        for a, c in zip(others, contrast)
    ):
        both = tuple(torch.cat([a, c]) for a, c in zip(others, contrast))
        query, acts = query_and_other_activations(
            spec, inputs, both, f"{argument} and contrast", batch_size
        )
        count = others[0].shape[0]
        return query, acts[:count], acts[count:]
    query, acts = query_and_other_activations(
        spec, inputs, others, argument, batch_size
    )
    return query, acts, layer_activations(spec, contrast, "contrast", batch_size)


def _add_contrast(
    spec: LayerSpec,
    features: PairFeatures,
    activations: Optional[Tensor],
    groups: int,
    shots: int,
) -> PairFeatures:
    """Store the (G'*K', N, h'', w'') contrast activations and pooled shots."""
    if activations is None:
        return features
    if activations.shape[1] != features.query.shape[1]:
        raise ValueError(
            f"contrast gives {activations.shape[1]} channels at the layer, "
            f"inputs give {features.query.shape[1]}"
        )
    activations = activations.to(features.output_dtype)
    features.contrast = activations.reshape(groups, shots, *activations.shape[1:])
    features.contrast_vectors = pool(activations, spec.pooling).reshape(
        groups, shots, -1
    )
    return features


class PairAttribution(CorrespondenceMixin, LayerAttribution):
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
    #: False for members (or settings) whose maps do not depend on the
    #: support: ``contrast=`` is then refused rather than giving zero maps
    supports_contrast: bool = True

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
        model = root if root is not None else find_model(forward_func, layer)
        self.num_prefix_tokens = (
            prefix_tokens(model) if num_prefix_tokens is None else num_prefix_tokens
        )
        self._patch_size = patch_size(model)
        self._channels = channel_count(layer, model)

    def _check_contrast(self, contrast: Optional[TensorOrTuple]) -> None:
        """Refuse ``contrast=`` where it would give an all-zero (or unchanged) map."""
        if contrast is not None and not self.supports_contrast:
            raise ValueError(
                f"{type(self).__name__}{self._contrast_hint()} has no contrastive "
                "map: its maps do not depend on the support, so contrast would "
                "give all-zero or unchanged maps"
            )

    def _contrast_hint(self) -> str:
        return ""

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
        contrast: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Query maps (..., h, w) and shot maps (..., K, h', w'), Eq. 3.

        query (..., N, h, w) and support (..., K, N, h', w') activations; the
        leading dimensions of all four tensors broadcast. Shot maps are None
        unless ``with_support``. ``contrast`` (..., K', N, h'', w''), the
        contrast support's activations, is for members whose maps need more
        than the weights (the weights already hold the contrast).
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
            self.layout, self.num_prefix_tokens, self._patch_size, self._channels,
        )  # fmt: skip

    def _pair_features(
        self,
        inputs: TensorOrTuple,
        support: TensorOrTuple,
        additional_forward_args: Any,
        attribute_to_layer_input: bool,
        contrast: Optional[TensorOrTuple] = None,
        target: Optional[TargetType] = None,
        support_labels: Optional[TargetType] = None,
    ) -> PairFeatures:
        """Check and format the arguments of a call, then run the model.

        With ``target`` (or ``support_labels``) the support holds R references
        and each query is explained against ``support[target[b]]``: forward-only
        members run the R references once and select afterwards.
        """
        args = format_additional_forward_args(additional_forward_args)
        spec = self._spec(args, attribute_to_layer_input)
        formatted = format_inputs(inputs)
        refs: Optional[References] = None
        if target is not None or support_labels is not None:
            refs = References(
                *format_references(formatted, support, target, support_labels)
            )
            support = refs
        if contrast is None:
            features = self._features(spec, formatted, support)
        else:
            features = self._features(spec, formatted, support, contrast=contrast)
        if refs is not None and self.forward_only:
            features = features.select(refs.index)
        return features

    def _features(
        self,
        spec: LayerSpec,
        inputs: Tuple[Tensor, ...],
        support: TensorOrTuple,
        contrast: Optional[TensorOrTuple] = None,
    ) -> PairFeatures:
        """Forward-only activations and pooled vectors of queries and support.

        ``contrast``, a second support in the layouts of ``support``, is
        formatted by ``format_support(inputs, contrast, "contrast")`` and
        stored in ``PairFeatures.contrast``/``contrast_vectors``; the weight
        rule reads it as ``PooledPair.contrast_shots``. (Gradient members
        override this hook and build their contrast from the pair score.)
        """
        self._check_contrast(contrast)
        flat, groups, shots = format_support(inputs, support)
        cflat, cgroups, cshots = None, 1, 1
        if contrast is not None:
            cflat, cgroups, cshots = format_support(inputs, contrast, "contrast")
        query, others, cacts = _activations(spec, inputs, flat, cflat, "support")
        features = pair_features(spec, query, others, groups, shots, "support")
        return _add_contrast(spec, features, cacts, cgroups, cshots)

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
        contrast: Optional[TensorOrTuple] = None,
        target: Optional[TargetType] = None,
        support_labels: Optional[TargetType] = None,
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
            contrast (Tensor or tuple[Tensor, ...], optional): a second
                        support S' in the layouts of ``support`` ((K', C, H, W)
                        shared or (B, K', C, H, W) per query): the maps then
                        explain why the query matches ``support`` rather than
                        ``contrast`` (each member's formula is in its class
                        docstring and the README, "Contrastive maps"). The
                        contrast images run in the same forward pass as the
                        queries and the support when the model is in eval mode.
                        Default: None
            target (int, list[int] or Tensor, optional): Captum's target, the
                        reference each query is explained against: with a
                        target, ``support`` holds R references, (R, C, H, W)
                        one-shot or (R, K, C, H, W), each run once, and query b
                        is explained against ``support[target[b]]``. This is
                        the form for ``NoiseTunnel`` and ``sensitivity_max``,
                        which repeat the inputs and the target together. With
                        ``support_labels``, the target holds labels.
                        Default: None
            support_labels (list[int] or Tensor, optional): labels (M,) of a
                        flat support (M, C, H, W), as easyfsl and
                        pytorch-metric-learning hold it: the support is grouped
                        into classes in label order (each class needs the same
                        number of shots) and ``target`` gives the label each
                        query is explained against.
                        Default: None

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
            inputs, support, additional_forward_args, attribute_to_layer_input,
            contrast, target, support_labels,
        )  # fmt: skip
        query_weights, shot_weights = self._weights(features)
        dtype, relu = features.output_dtype, relu_attributions
        with torch.no_grad():
            query_maps, shot_maps = self._pair_maps(
                features.query, features.support, query_weights, shot_weights,
                with_support=return_support_attributions,
                contrast=features.contrast,
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
        contrast: Optional[TensorOrTuple] = None,
        gallery_labels: Optional[TargetType] = None,
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
            contrast (Tensor or tuple[Tensor, ...], optional): a contrast
                        support, (K', C, H, W) shared by every pair or
                        (Q, K', C, H, W) one per query: pair (i, j) is explained
                        against ``contrast`` (or ``contrast[i]``), as
                        :meth:`attribute` does.
                        Default: None
            gallery_labels (list[int] or Tensor, optional): labels (M,) of a
                        flat gallery (M, C, H, W) of few-shot support images:
                        the gallery is grouped into classes in label order
                        (M/R shots each), so item j of the result is the j-th
                        smallest label.
                        Default: None

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
        if gallery_labels is not None:
            if not isinstance(gallery, Tensor):
                raise TypeError("gallery_labels needs gallery as one Tensor (M, ...)")
            if gallery.dim() != formatted[0].dim():
                raise ValueError(
                    "gallery_labels needs a flat gallery (M, *inputs.shape[1:]), "
                    f"got {tuple(gallery.shape)}"
                )
            gallery, _ = group_by_label(gallery, gallery_labels, "gallery")
        flat, items, shots = format_gallery(formatted, gallery)
        first = gallery[0] if isinstance(gallery, tuple) else gallery
        per_item_shots = first.dim() > formatted[0].dim()
        self._check_contrast(contrast)
        cflat, cgroups, cshots = None, 1, 1
        if contrast is not None:
            cflat, cgroups, cshots = format_support(formatted, contrast, "contrast")
        args = format_additional_forward_args(additional_forward_args)
        spec = self._spec(args, attribute_to_layer_input)
        query, others, cacts = _activations(
            spec, formatted, flat, cflat, "gallery", forward_batch_size
        )
        features = pair_features(spec, query, others, items, shots, "gallery")
        features = _add_contrast(spec, features, cacts, cgroups, cshots)
        pooled, dtype = features.pooled(), features.output_dtype
        query, gal = features.query, features.support.unsqueeze(0)
        channels = query.shape[1]
        step = chunk_size or max(1, MAX_CHUNK_ELEMENTS // (items * shots * channels))
        query_out, gallery_out = [], []
        with torch.no_grad():
            for start in range(0, query.shape[0], step):
                chunk = slice(start, start + step)
                # queries on dim 0, gallery items on dim 1 (shots on dim 2)
                contrast_shots = contrast_acts = None
                if features.contrast is not None:  # (1 or Q, 1, K', ...)
                    rows = chunk if features.contrast.shape[0] > 1 else slice(None)
                    contrast_acts = features.contrast[rows].unsqueeze(1)
                    contrast_shots = pooled.contrast_shots[rows].unsqueeze(1)
                weights = self._pair_weights(
                    PooledPair(
                        pooled.query[chunk].unsqueeze(1),
                        pooled.shots.unsqueeze(0),
                        pooled.query_positions,
                        pooled.support_positions,
                        contrast_shots,
                    )
                )
                query_maps, gallery_maps = self._pair_maps(
                    query[chunk].unsqueeze(1), gal, *weights,
                    with_support=return_gallery_attributions,
                    contrast=contrast_acts,
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
        contrast: Optional[TensorOrTuple] = None,
        target: Optional[TargetType] = None,
        support_labels: Optional[TargetType] = None,
    ) -> Tuple[Tensor, Tensor]:
        r"""The channel weights the method gives each pair.

        Args:
            inputs, support, additional_forward_args, attribute_to_layer_input,
            contrast, target, support_labels: as in :meth:`attribute`.

        Returns:
            *tuple[Tensor, Tensor]* of **(query_weights, support_weights)**:
            query weights of shape (B, N), which multiply the query's
            activations, and support weights of shape (B, K, N), which multiply
            each support image's activations.
        """
        features = self._pair_features(
            inputs, support, additional_forward_args, attribute_to_layer_input,
            contrast, target, support_labels,
        )  # fmt: skip
        query_weights, shot_weights = self._weights(features)
        batch, shots = features.batch_size, features.shots
        channels, dtype = features.query.shape[1], features.output_dtype
        return (
            query_weights.detach().to(dtype).expand(batch, channels).clone(),
            shot_weights.detach().to(dtype).expand(batch, shots, channels).clone(),
        )
