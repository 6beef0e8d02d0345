r"""The shared engine of the pair-attribution family.

Every method of the family (SFAM and its baselines) explains a *pair*: a query
image against a K-shot support. They all

1. capture the activations ``A`` of one layer for the queries and for the
   support images (forward only, stopping the network right after the layer),
2. pool them into vectors ``V = p(A)``; the support vector is the mean of the K
   pooled shots (Eq. 1 of the SFAM paper),
3. turn the pair into channel weights (the only part that differs),
4. combine the weights linearly with the activations, ``L = sum_n w_n A^n``.

This module holds steps 1, 2 and 4 and all input checking; each method lives in
its own module and only implements :meth:`PairAttribution._weights` (and, for
Decomposition, :meth:`PairAttribution._maps`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from captum._utils.common import (
    _format_additional_forward_args,
    _format_tensor_into_tuples,
)
from captum._utils.gradient import (
    _forward_layer_eval,
    compute_layer_gradients_and_eval,
)
from captum.attr._utils.attribution import LayerAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
PoolingType = Union[str, Callable[[Tensor], Tensor]]
ReshapeTransform = Callable[[Tensor], Tensor]

METRICS = ("euclidean", "cosine")
POOLINGS = ("avg", "max")


# --------------------------------------------------------------------------
# Argument checking shared by the whole package
# --------------------------------------------------------------------------
def check_metric(metric: object) -> str:
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def check_pooling(pooling: object) -> PoolingType:
    if callable(pooling):
        return pooling  # type: ignore[return-value]
    if not isinstance(pooling, str) or pooling not in POOLINGS:
        raise ValueError(
            f"pooling must be one of {POOLINGS} or a callable mapping "
            f"(B, N, h, w) to (B, N), got {pooling!r}"
        )
    return pooling


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any tensor is float64, float32 otherwise (half types included)."""
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def check_finite(tensor: Tensor, name: str) -> None:
    # A NaN or inf anywhere makes the sum non-finite, and a sum allocates no
    # tensor of the input's size; only then (or on overflow) check elementwise.
    if tensor.numel() == 0 or bool(torch.isfinite(tensor.sum())):
        return
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def pool(activations: Tensor, pooling: PoolingType) -> Tensor:
    """Pool (B, N, h, w) activations into (B, N) vectors: the paper's ``p``."""
    if pooling == "avg":
        return activations.mean(dim=(-2, -1))
    if pooling == "max":
        return activations.amax(dim=(-2, -1))
    pooled = pooling(activations)  # type: ignore[operator]
    expected = activations.shape[:2]
    if not isinstance(pooled, Tensor) or pooled.shape != expected:
        got = tuple(pooled.shape) if isinstance(pooled, Tensor) else type(pooled)
        raise ValueError(
            f"pooling callable must map {tuple(activations.shape)} to "
            f"{tuple(expected)}, got {got}"
        )
    pooled = pooled.to(activations.dtype)
    check_finite(pooled, "the output of the pooling callable")
    return pooled


# --------------------------------------------------------------------------
# Activation capture
# --------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised by our hook to stop the network right after the hooked layer."""


def _root_module(forward_func: Callable[..., Any]) -> Optional[Module]:
    if isinstance(forward_func, Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, Module) else None


def eager_forward(forward_func: Callable[..., Any]) -> Callable[..., Any]:
    """The eager module behind a ``torch.compile``d one (same parameters).

    Explanations hook a submodule and, for forward-only methods, stop the
    network with an exception: both belong to eager execution, so a compiled
    model is explained through the module it wraps.
    """
    original = getattr(forward_func, "_orig_mod", None)
    return original if isinstance(original, Module) else forward_func


@contextlib.contextmanager
def preserved_buffers(*modules: Optional[Module]) -> Iterator[None]:
    """Restore every buffer of ``modules`` on exit.

    A forward pass of a model left in ``train()`` mode updates BatchNorm running
    statistics; an explanation must not, so we put the buffers back bitwise.
    """
    saved = []
    seen = set()
    for module in modules:
        if module is None:
            continue
        for buf in module.buffers():
            if id(buf) not in seen:
                seen.add(id(buf))
                saved.append((buf, buf.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


def capture_activations(
    forward_func: Callable[..., Any],
    layer: Module,
    inputs: Tuple[Tensor, ...],
    additional_forward_args: Any = None,
    attribute_to_layer_input: bool = False,
    device_ids: Optional[List[int]] = None,
    name: str = "inputs",
) -> Tuple[Tensor, ...]:
    """Activations of ``layer`` for ``inputs``, without recording a graph.

    The network stops right after ``layer`` (a private exception raised by the
    hook), so the part after the layer costs nothing. With ``device_ids`` or a
    ``DataParallel`` forward, Captum's own helper is used instead, which runs the
    whole network and gathers the replicas' activations as Captum's layer
    methods do. Hooks are removed and buffers restored even on errors.
    """
    forward_func = eager_forward(forward_func)
    root = _root_module(forward_func)
    with preserved_buffers(root, layer):
        if device_ids is not None or isinstance(root, torch.nn.DataParallel):
            return tuple(
                _forward_layer_eval(
                    forward_func,
                    inputs,
                    layer,
                    additional_forward_args=additional_forward_args,
                    device_ids=device_ids,
                    attribute_to_layer_input=attribute_to_layer_input,
                    grad_enabled=False,
                )
            )
        store: List[Tuple[Tensor, ...]] = []

        def hook(_module: Module, args: Any, output: Any = None) -> None:
            value = args if attribute_to_layer_input else output
            value = value if isinstance(value, tuple) else (value,)
            store.append(tuple(v.detach() for v in value if isinstance(v, Tensor)))
            raise _StopForward

        if attribute_to_layer_input:
            handle = layer.register_forward_pre_hook(hook)
        else:
            handle = layer.register_forward_hook(hook)
        args = _format_additional_forward_args(additional_forward_args) or ()
        try:
            with torch.no_grad():
                forward_func(*inputs, *args)
        except _StopForward:
            pass
        except RuntimeError as error:
            raise ValueError(
                f"{name}: forward_func cannot run on it: {error}"
            ) from error
        finally:
            handle.remove()
    if not store:
        raise ValueError(
            "layer was not called by forward_func: pass a submodule that the "
            "model's forward uses"
        )
    return store[0]


# --------------------------------------------------------------------------
# The features of a batch of pairs
# --------------------------------------------------------------------------
@dataclass
class PairFeatures:
    r"""Everything a method needs to turn pairs into channel weights.

    ``Bs`` is 1 when one support is shared by all B queries (its features are
    computed once and broadcast) and B when each query has its own support.
    Activations and vectors are float32 (float64 if the activations are).
    """

    query: Tensor  # (B, N, h, w) query activations
    support: Tensor  # (Bs, K, N, h', w') support activations
    query_vectors: Tensor  # (B, N) pooled query activations, V^Q
    shot_vectors: Tensor  # (Bs, K, N) pooled support shots
    support_vectors: Tensor  # (Bs, N) V^S, mean of the K shots (Eq. 1)
    inputs: Tuple[Tensor, ...]  # the formatted query inputs
    support_inputs: Tuple[Tensor, ...]  # the support as (Bs*K, ...) inputs
    additional_forward_args: Any
    attribute_to_layer_input: bool
    output_dtype: torch.dtype

    @property
    def batch_size(self) -> int:
        return self.query.shape[0]

    @property
    def shots(self) -> int:
        return self.support.shape[1]

    @property
    def shared_support(self) -> bool:
        """True when one support (computed once) serves every query."""
        return self.support.shape[0] == 1


def _format_support(
    inputs: Tuple[Tensor, ...], support: TensorOrTuple, name: str = "support"
) -> Tuple[Tuple[Tensor, ...], int, int]:
    """Flatten ``support`` to (G*K, ...) tensors; returns (flat, G, K).

    ``name="support"``: (K, ...) is one support shared by every query (G = 1)
    and (B, K, ...) one per query (G = B). ``name="gallery"``: (M, ...) is M
    one-shot items and (M, K, ...) M items of K shots (G = M).
    """
    gallery = name == "gallery"
    if isinstance(support, Tensor):
        support = (support,)
    if not isinstance(support, tuple) or not all(
        isinstance(s, Tensor) for s in support
    ):
        raise TypeError("support must be a Tensor or a tuple of Tensors")
    if len(support) != len(inputs):
        raise ValueError(
            f"support must hold one tensor per input tensor ({len(inputs)}), "
            f"got {len(support)}"
        )
    batch = inputs[0].shape[0]
    flat, layouts = [], set()
    for inp, sup in zip(inputs, support):
        if not sup.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got {sup.dtype}")
        if sup.dim() == inp.dim():  # (K, C, H, W) support, (M, C, H, W) gallery
            groups, shots = (sup.shape[0], 1) if gallery else (1, sup.shape[0])
        elif sup.dim() == inp.dim() + 1:  # (B, K, C, H, W) or (M, K, C, H, W)
            groups, shots = sup.shape[0], sup.shape[1]
            if groups != batch and not gallery:
                raise ValueError(
                    f"support has {groups} per-query supports but inputs has "
                    f"{batch} queries"
                )
        else:
            lead = "(M" if gallery else "(B"
            raise ValueError(
                f"{name} must have shape (K, *inputs.shape[1:]) or "
                f"{lead}, K, *inputs.shape[1:]); got {tuple(sup.shape)} for "
                f"inputs of shape {tuple(inp.shape)}"
            )
        if shots == 0 or groups == 0:
            raise ValueError(f"{name} is empty: it needs at least one image")
        item_shape = sup.shape[sup.dim() - inp.dim() + 1 :]
        if item_shape[0] != inp.shape[1]:
            raise ValueError(
                f"{name} has {item_shape[0]} channels, inputs has {inp.shape[1]}"
            )
        if sup.device != inp.device:
            raise ValueError(
                f"{name} is on device {sup.device} but inputs is on device {inp.device}"
            )
        check_finite(sup, name)
        layouts.add((groups, shots))
        flat.append(sup.reshape(groups * shots, *item_shape))
    if len(layouts) != 1:
        raise ValueError(f"all {name} tensors must share the same layout")
    groups, shots = layouts.pop()
    return tuple(flat), groups, shots


def format_inputs(inputs: TensorOrTuple) -> Tuple[Tensor, ...]:
    if not isinstance(inputs, (Tensor, tuple)):
        raise TypeError("inputs must be a Tensor or a tuple of Tensors")
    formatted = _format_tensor_into_tuples(inputs)
    for inp in formatted:
        if not isinstance(inp, Tensor):
            raise TypeError("inputs must be a Tensor or a tuple of Tensors")
        if not inp.is_floating_point():
            raise TypeError(f"inputs must be a floating point tensor, got {inp.dtype}")
        if inp.dim() < 2 or inp.shape[0] == 0:
            raise ValueError(
                f"inputs must be a non-empty batch (B, ...), got {tuple(inp.shape)}"
            )
        check_finite(inp, "inputs")
    return formatted


# --------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------
class PairAttribution(LayerAttribution):
    r"""Base class of the pair-attribution family (not used directly).

    Subclasses implement :meth:`_weights`, which turns a batch of pairs
    (:class:`PairFeatures`) into query channel weights (B, N) and support channel
    weights broadcastable to (B, K, N). Everything else (activation capture,
    pooling, K-shot supports, batching, the weighted sum, ReLU, checks) is here.
    """

    #: metrics a method is defined for
    supported_metrics: Tuple[str, ...] = METRICS

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
        root = _root_module(forward_func)
        if root is not None and not any(m is layer for m in root.modules()):
            raise ValueError("layer is not a submodule of forward_func")
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError("reshape_transform must be callable or None")
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        self.metric = check_metric(metric)
        if self.metric not in self.supported_metrics:
            raise ValueError(
                f"{type(self).__name__} is defined for metric in "
                f"{self.supported_metrics} only, got {metric!r}"
            )
        self.pooling = check_pooling(pooling)
        self.reshape_transform = reshape_transform
        self._validate()

    def _validate(self) -> None:
        """Subclasses reject configurations they are not defined for."""

    # -- what a method implements ------------------------------------------
    def _weights(self, pair: PairFeatures) -> Tuple[Tensor, Tensor]:
        """Query weights (B, N) and support weights broadcastable to (B, K, N)."""
        raise NotImplementedError

    def _pairwise_weights(
        self,
        query: Tensor,
        gallery: Tensor,
        query_vectors: Tensor,
        shot_vectors: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        """All-pairs weights, for :meth:`attribute_pairs`.

        query (Q, N, h, w) and gallery (M, K, N, h', w') activations, pooled
        query_vectors (Q, N) and shot_vectors (M, K, N) -> query weights
        broadcastable to (Q, M, N) and gallery weights to (Q, M, K, N).
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no all-pairs form: call attribute() "
            "with one support per query instead"
        )

    def _maps(
        self, pair: PairFeatures, query_weights: Tensor, support_weights: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Query maps (B, h, w) and support maps (B, K, h', w'): sum_n w_n A^n."""
        return (
            weighted_sum(query_weights, pair.query),
            weighted_sum_support(support_weights, pair.support, pair.batch_size),
        )

    # -- plumbing -----------------------------------------------------------
    def layer_activations(
        self,
        inputs: Tuple[Tensor, ...],
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        name: str = "inputs",
        batch_size: Optional[int] = None,
    ) -> Tensor:
        """(B, N, h, w) activations of the layer (after ``reshape_transform``).

        With ``batch_size``, the inputs go through the network in batches of
        that many examples, so only one batch's intermediate tensors are alive
        at a time.
        """
        total = inputs[0].shape[0]
        step = batch_size or total
        parts = []
        for start in range(0, total, step):
            chunk = tuple(t[start : start + step] for t in inputs)
            acts = capture_activations(
                self.forward_func,
                self.layer,
                chunk,
                additional_forward_args,
                attribute_to_layer_input,
                self.device_ids,
                name,
            )
            parts.append(self._check_activations(acts, chunk[0].shape[0]))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _check_activations(self, acts: Tuple[Tensor, ...], batch: int) -> Tensor:
        if len(acts) != 1:
            raise ValueError(
                f"the layer gives {len(acts)} tensors; pair attributions need a "
                "layer with a single tensor output (or input)"
            )
        act = acts[0]
        if self.reshape_transform is not None:
            act = self.reshape_transform(act)
            if not isinstance(act, Tensor):
                raise TypeError("reshape_transform must return a Tensor")
        if act.dim() != 4 or act.shape[0] != batch:
            raise ValueError(
                f"layer activations must be (B={batch}, N, h, w), got "
                f"{tuple(act.shape)}; pass reshape_transform to turn them into "
                "that layout (e.g. tokens of a vision transformer)"
            )
        if not act.is_floating_point():
            raise TypeError(
                f"layer activations must be floating point, got {act.dtype}"
            )
        check_finite(act, "the layer activations")
        return act

    def _features(
        self,
        inputs: TensorOrTuple,
        support: TensorOrTuple,
        additional_forward_args: Any,
        attribute_to_layer_input: bool,
    ) -> PairFeatures:
        formatted = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        support_flat, query, supp, query_vectors, shot_vectors = self._capture_both(
            formatted, support, args, attribute_to_layer_input, "support"
        )
        return PairFeatures(
            query=query,
            support=supp,
            query_vectors=query_vectors,
            shot_vectors=shot_vectors,
            support_vectors=shot_vectors.mean(dim=1),  # Eq. 1
            inputs=formatted,
            support_inputs=support_flat,
            additional_forward_args=args,
            attribute_to_layer_input=attribute_to_layer_input,
            output_dtype=query.dtype,
        )

    def _capture_both(
        self,
        formatted: Tuple[Tensor, ...],
        other: TensorOrTuple,
        args: Any,
        attribute_to_layer_input: bool,
        name: str,
        batch_size: Optional[int] = None,
    ) -> Tuple[Tuple[Tensor, ...], Tensor, Tensor, Tensor, Tensor]:
        """Activations and pooled vectors of the queries and of the other side.

        ``other`` is a support (``name="support"``) or a gallery; returns its
        flattened inputs, query activations (B, N, h, w), its activations
        (G, K, N, h', w'), query vectors (B, N) and shot vectors (G, K, N), in
        float32 (float64 if the activations are).
        """
        other_flat, groups, shots = _format_support(formatted, other, name)
        query = self.layer_activations(
            formatted, args, attribute_to_layer_input, "inputs", batch_size
        )
        acts = self.layer_activations(
            other_flat, args, attribute_to_layer_input, name, batch_size
        )
        if acts.shape[1] != query.shape[1]:
            raise ValueError(
                f"{name} gives {acts.shape[1]} channels at the layer, inputs "
                f"give {query.shape[1]}"
            )
        dtype = compute_dtype(query, acts)
        query = query.to(dtype)
        acts = acts.to(dtype).reshape(groups, shots, *acts.shape[1:])
        query_vectors = pool(query, self.pooling)
        shot_vectors = pool(acts.flatten(0, 1), self.pooling).reshape(groups, shots, -1)
        return other_flat, query, acts, query_vectors, shot_vectors

    @log_usage(part_of_slo=True)
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
        pair = self._features(
            inputs, support, additional_forward_args, attribute_to_layer_input
        )
        query_weights, support_weights = self._weights(pair)
        with torch.no_grad():
            query_maps, support_maps = self._maps(pair, query_weights, support_weights)
            query_maps = _finish(query_maps, relu_attributions, pair.output_dtype)
            if not return_support_attributions:
                return query_maps.unsqueeze(1)
            support_maps = _finish(support_maps, relu_attributions, pair.output_dtype)
        return query_maps.unsqueeze(1), support_maps.unsqueeze(2)

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
        vectors and maps come from batched tensor contractions, in chunks of
        queries so that memory stays bounded. ``result[i, j]`` equals
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
                        chosen so that a chunk holds about 2**21 weights.
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
        """
        formatted = format_inputs(inputs)
        if chunk_size is not None and (
            not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if forward_batch_size is not None and (
            not isinstance(forward_batch_size, int) or forward_batch_size < 1
        ):
            raise ValueError(
                f"forward_batch_size must be a positive int, got {forward_batch_size!r}"
            )
        first = gallery[0] if isinstance(gallery, tuple) else gallery
        per_item_shots = isinstance(first, Tensor) and first.dim() > formatted[0].dim()
        args = _format_additional_forward_args(additional_forward_args)
        _, query, gal, query_vectors, shot_vectors = self._capture_both(
            formatted,
            gallery,
            args,
            attribute_to_layer_input,
            "gallery",
            forward_batch_size,
        )
        items, shots = gal.shape[:2]
        dtype = query.dtype
        channels = query.shape[1]
        step = chunk_size or max(1, (1 << 21) // (items * shots * channels))
        q_out, g_out = [], []
        with torch.no_grad():
            for start in range(0, query.shape[0], step):
                q = query[start : start + step]
                qw, gw = self._pairwise_weights(
                    q, gal, query_vectors[start : start + step], shot_vectors
                )
                qw = qw.to(dtype).expand(q.shape[0], items, channels)
                q_out.append(torch.einsum("qmn,qnhw->qmhw", qw, q))
                if return_gallery_attributions:
                    gw = gw.to(dtype).expand(q.shape[0], items, shots, channels)
                    g_out.append(torch.einsum("qmkn,mknhw->qmkhw", gw, gal))
            query_maps = _finish(torch.cat(q_out), relu_attributions, dtype).unsqueeze(
                2
            )
            if not return_gallery_attributions:
                return query_maps
            gallery_maps = _finish(torch.cat(g_out), relu_attributions, dtype)
        gallery_maps = gallery_maps.unsqueeze(3)
        if not per_item_shots:
            gallery_maps = gallery_maps.squeeze(2)
        return query_maps, gallery_maps

    def model_outputs(
        self, inputs: Tuple[Tensor, ...], additional_forward_args: Any
    ) -> Tensor:
        """The full model's outputs for ``inputs`` (no graph, buffers restored)."""
        forward_func = eager_forward(self.forward_func)
        with preserved_buffers(_root_module(forward_func), self.layer):
            with torch.no_grad():
                return forward_func(*inputs, *(additional_forward_args or ()))

    def layer_gradients(
        self,
        inputs: Tuple[Tensor, ...],
        objective: Callable[[Tensor], Tensor],
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
    ) -> Tensor:
        """Gradient of ``objective(forward_func(inputs)).sum()`` w.r.t. the layer.

        For the methods that need real gradients (CG-RAM, Grad-FAM) only; uses
        Captum's layer-gradient helper (so ``device_ids`` works as in Captum).
        ``objective`` maps the model output (B, ...) to one scalar per row.
        The result has the layout of the activations (``reshape_transform``
        applied), in float32 or wider.
        """
        forward_func = eager_forward(self.forward_func)

        def scalar_forward(*args: Any) -> Tensor:
            return objective(forward_func(*args))

        with preserved_buffers(_root_module(forward_func), self.layer):
            grads, _ = compute_layer_gradients_and_eval(
                scalar_forward,
                self.layer,
                inputs,
                None,
                additional_forward_args,
                device_ids=self.device_ids,
                attribute_to_layer_input=attribute_to_layer_input,
            )
        grad = self._check_activations(
            tuple(g.detach() for g in grads), inputs[0].shape[0]
        )
        return grad.to(compute_dtype(grad))

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
        pair = self._features(
            inputs, support, additional_forward_args, attribute_to_layer_input
        )
        query_weights, support_weights = self._weights(pair)
        batch, shots, channels = pair.batch_size, pair.shots, pair.query.shape[1]
        return (
            query_weights.detach().to(pair.output_dtype),
            support_weights.detach()
            .to(pair.output_dtype)
            .expand(batch, shots, channels)
            .clone(),
        )


def _finish(maps: Tensor, relu: bool, dtype: torch.dtype) -> Tensor:
    if relu:
        maps = F.relu(maps)
    maps = maps.to(dtype).contiguous()  # no stride-0 views of a shared support
    if not bool(torch.isfinite(maps).all()):
        raise ValueError(
            "the attribution overflowed (activations too large for "
            f"{dtype}); rescale the model's activations"
        )
    return maps


def spatial_mean(gradients: Tensor) -> Tensor:
    """Grad-CAM's channel weights: the spatial mean of (..., N, h, w) gradients."""
    return gradients.mean(dim=(-2, -1))


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """(B, N) weights and (B, N, h, w) activations -> (B, h, w) maps (Eq. 3)."""
    return torch.einsum("bn,bnhw->bhw", weights.to(activations.dtype), activations)


def weighted_sum_support(weights: Tensor, activations: Tensor, batch: int) -> Tensor:
    """Support maps (B, K, h, w) from weights (B or 1, K or 1, N) and (Bs, K, N, h, w).

    A shared support (Bs = 1) is contracted without copying it B times.
    """
    groups, shots = activations.shape[:2]
    weights = weights.to(activations.dtype)
    weights = weights.expand(weights.shape[0], shots, weights.shape[-1])
    if weights.shape[0] == 1 and groups == 1:
        maps = torch.einsum("kn,knhw->khw", weights[0], activations[0])
        return maps.unsqueeze(0).expand(batch, *maps.shape)
    if groups == 1:
        return torch.einsum("bkn,knhw->bkhw", weights, activations[0])
    return torch.einsum("bkn,bknhw->bkhw", weights.expand(batch, -1, -1), activations)


class GradientPairAttribution(PairAttribution):
    """Placeholder during the move (replaced by the gradient engine)."""
