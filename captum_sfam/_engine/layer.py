r"""Stage 2: :class:`Layer` knows the explained layer (resolved once) and
owns the hooks: the forward-only capture and the one gradient pass, of
queries, support and contrast together when a batch's images cannot
influence each other. Hooks are removed and buffers restored even on
errors; the model's mode, flags, parameters and ``.grad`` never change.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from .captum_compat import forward_layer_eval
from .checks import (
    NOT_CALLED,
    UNPROTECTED,
    PoolingType,
    checked_pass,
    select_embedding,
    warn,
)
from .model import (
    EmbeddingFunc,
    channel_count,
    channels_last,
    find_model,
    forward_error,
    held_modules,
    patch_grid,
    patch_size,
    prefix_tokens,
    replicas_in_order,
)
from .pairs import Images, Pairs

ReshapeTransform = Callable[[Tensor], Tensor]
#: a pair score of (query, support, contrast or None) embeddings -> (B,)
Score = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]


class _StopForward(Exception):
    """Stops the network right after the layer."""


class Layer:
    """The explained layer: its setup (the arguments of
    :class:`~captum_sfam.methods.PairAttribution`, checked there) and hooks."""

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: Module,
        pooling: PoolingType,
        reshape_transform: Optional[ReshapeTransform],
        device_ids: Optional[List[int]],
        layout: str,
        num_prefix_tokens: Optional[int],
    ) -> None:
        original = getattr(forward_func, "_orig_mod", None)  # torch.compile
        self.forward_func = original if isinstance(original, Module) else forward_func
        self.layer, self.pooling, self.layout = layer, pooling, layout
        self.reshape_transform, self.device_ids = reshape_transform, device_ids
        owner = getattr(self.forward_func, "__self__", None)
        root = self.forward_func if isinstance(self.forward_func, Module) else owner
        self.root = root if isinstance(root, Module) else None
        #: the modules the callable runs (protected; judged for one pass)
        self.modules = [self.root] if self.root else held_modules(self.forward_func)
        self.model = self.root or find_model(self.forward_func, layer)
        self.num_prefix_tokens = (
            prefix_tokens(self.model)
            if num_prefix_tokens is None
            else num_prefix_tokens
        )
        self.patch_size = patch_size(self.model)
        self.channels = channel_count(layer, self.model)

    # ------------------------------------------------------ the two passes --
    def forward_pass(
        self, pairs: Pairs, batch_size: Optional[int] = None
    ) -> List[Tensor]:
        """(n, N, h, w) activations of each image set of ``pairs`` (queries,
        support or gallery, contrast), forward only, float32 (float64 if the
        model's are), in batches of ``batch_size`` images."""
        parts, names = pairs.parts, pairs.names
        call = (pairs.additional_forward_args, pairs.attribute_to_layer_input)
        batches, labels, groups = self._passes(parts, names, others_together=True)
        try:
            acts = [self.activations(b, n, *call, batch_size)
                    for b, n in zip(batches, labels)]  # fmt: skip
        except ValueError:  # run apart, for an error naming its argument
            if all(len(g) == 1 for g in groups):
                raise
            acts = [self.activations(p, n, *call, batch_size)
                    for p, n in zip(parts, names)]  # fmt: skip
            groups = [[i] for i in range(len(parts))]
        return checked_pass(self.model, acts, _split(acts, groups, parts), names)

    def gradient_pass(
        self, pairs: Pairs, score: Score, embedding_func: EmbeddingFunc, name: str
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Activations and gradients of ``score`` (query (B, D), support
        (B*K, D), contrast (B*K', D) or None embeddings -> (B,)) at the layer's
        FIRST call (a layer called twice contributes through both) for each
        image set of ``pairs`` (one support per query), from one forward pass
        per batch and ONE backward pass, with autograd enabled even inside
        ``torch.no_grad()``/``inference_mode()``. ``name`` (the member) is
        named by the warning of an all-zero map."""
        parts, names = pairs.parts, pairs.names
        batches, labels, groups = self._passes(parts, names)
        to_input, args = pairs.attribute_to_layer_input, pairs.additional_forward_args
        captured: List[Images] = []
        embeddings: List[Tensor] = []
        with torch.inference_mode(False), torch.enable_grad(), self._protected():
            for batch, argument in zip(batches, labels):
                store: Dict[torch.device, Images] = {}
                # inference tensors (made under inference_mode) cannot enter a graph
                batch = tuple(t.clone() if t.is_inference() else t for t in batch)
                hook = _first_call_hook(store, to_input)
                with self._hooked(hook, to_input, argument):
                    output = self.forward_func(*batch, *(args or ()))
                captured.append(self._in_batch_order(store))
                embeddings.append(select_embedding(output, embedding_func, True))
            flat = [t for group in captured for t in group]
            query, support, *contrast = _split(embeddings, groups, parts)
            total = score(query, support, contrast[0] if contrast else None).sum()
            grads = torch.autograd.grad(total, flat + embeddings, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g
                 for t, g in zip(flat + embeddings, grads)]  # fmt: skip
        acts, layer_grads, start = [], [], 0
        for group, batch in zip(captured, batches):
            part, start = grads[start : start + len(group)], start + len(group)
            acts.append(self._grid_on(group, batch))
            layer_grads.append(self._grid_on(part, batch))
        layer_grads = _split(layer_grads, groups, parts)
        # an exactly zero gradient while the score moves with the embedding:
        # the embedding does not depend on the layer there, the map is zero
        zero = (layer_grads[0].flatten(1) == 0).all(1) & (
            grads[len(flat)][: len(query)] != 0
        ).any(1)
        parts_acts = _split(acts, groups, parts)
        acts = checked_pass(self.model, acts, parts_acts, names, zero, name)
        return acts, [g.to(acts[0].dtype) for g in layer_grads]

    def activations(
        self,
        images: Images,
        argument: str,
        additional_forward_args: Any,
        to_input: bool,
        batch_size: Optional[int] = None,
    ) -> Tensor:
        """(n, N, h, w) activations of ``images`` (named ``argument`` in
        errors), without recording a graph, in batches of ``batch_size``. The
        network stops right after the layer; with ``device_ids`` or
        DataParallel Captum's own helper runs the replicas."""
        step, out = batch_size or images[0].shape[0], []
        for start in range(0, images[0].shape[0], step):
            chunk = tuple(t[start : start + step] for t in images)
            with self._protected(), torch.no_grad():
                acts = self._run_to_layer(
                    chunk, argument, additional_forward_args, to_input
                )
            out.append(self.grid(acts, tuple(chunk[0].shape)))
        return out[0] if len(out) == 1 else torch.cat(out)

    # ------------------------------------------------------------ helpers --
    def batch_independent(self) -> bool:
        """True when the images of a batch cannot influence each other's
        activations, so that queries, support and contrast may share one
        forward pass: no DataParallel, ``device_ids`` or train-mode module
        that may mix the batch (BatchNorm, or a custom module with state of
        its own; stateless ``torch.nn`` layers act image by image), and a
        callable that holds a module containing the layer."""
        if self.device_ids is not None or not any(
            m is self.layer for module in self.modules for m in module.modules()
        ):
            return False
        return not any(
            isinstance(module, torch.nn.DataParallel)
            or any(_may_mix_batch(m) for m in module.modules())
            for module in self.modules
        )

    def _passes(
        self, parts: List[Images], names: List[str], others_together: bool = False
    ) -> Tuple[List[Images], List[str], List[List[int]]]:
        """The parts grouped into forward passes: the queries with every part
        whose images can share their batch (same layout, and a batch-
        independent model), the others one pass each; with ``others_together``
        a batch-dependent model runs the queries alone and the other parts
        that fit together. Returns the batches, their names, their parts."""
        joint = self.batch_independent()
        groups: List[List[int]] = [[0]]
        for i in range(1, len(parts)):
            lead = 0 if joint else 1 if others_together and i > 1 else None
            if lead is not None and _same_layout(parts[lead], parts[i]):
                next(g for g in groups if g[0] == lead).append(i)
            else:
                groups.append([i])
        batches = [
            tuple(torch.cat(ts) for ts in zip(*(parts[i] for i in g)))
            if len(g) > 1
            else parts[g[0]]
            for g in groups
        ]
        return batches, [" and ".join(names[i] for i in g) for g in groups], groups

    def _run_to_layer(
        self, chunk: Images, argument: str, args: Any, to_input: bool
    ) -> Images:
        if self.device_ids is not None or isinstance(self.root, torch.nn.DataParallel):
            acts = forward_layer_eval(
                self.forward_func, chunk, self.layer, additional_forward_args=args,
                device_ids=self.device_ids, attribute_to_layer_input=to_input,
                grad_enabled=False,
            )  # fmt: skip
            return tuple(a.to(chunk[0].device) for a in acts)
        store: List[Images] = []

        def hook(_module: Module, hook_args: Any, output: Any = None) -> None:
            value = hook_args if to_input else output
            value = value if isinstance(value, tuple) else (value,)
            store.append(tuple(v.detach() for v in value if isinstance(v, Tensor)))
            raise _StopForward

        try:
            with self._hooked(hook, to_input, argument):
                self.forward_func(*chunk, *(args or ()))
        except _StopForward:
            pass
        if not store:
            raise ValueError(NOT_CALLED)
        return store[0]

    @contextmanager
    def _hooked(
        self, hook: Callable[..., Any], to_input: bool, argument: str
    ) -> Iterator[None]:
        """``hook`` on the layer (a pre-hook for its input) for the block,
        removed at its end; a model error is reported naming ``argument``."""
        if to_input:
            handle = self.layer.register_forward_pre_hook(hook)
        else:
            handle = self.layer.register_forward_hook(hook)
        try:
            yield
        except (RuntimeError, TypeError) as error:
            raise forward_error(error, argument) from error
        finally:
            handle.remove()

    @contextmanager
    def _protected(self) -> Iterator[None]:
        """Restore, on exit, the buffers a forward pass may write (those of
        submodules in training mode, BatchNorm statistics; one fused copy)."""
        if self.model is None and self.layer.training:
            warn(UNPROTECTED)
        modules = [m for m in (self.model, self.layer) if m is not None]
        buffers = list(
            {
                id(b): b
                for module in modules
                for sub in module.modules()
                if sub.training
                for b in sub.buffers(recurse=False)
            }.values()
        )
        saved = [b.detach().clone() for b in buffers]
        try:
            yield
        finally:
            if buffers:
                with torch.no_grad():
                    torch._foreach_copy_(buffers, saved)

    def _in_batch_order(self, store: Dict[torch.device, Images]) -> Images:
        """The per-device captures of a gradient pass, in the order
        DataParallel scattered the batch (one device: as they are)."""
        if not store:
            raise ValueError(NOT_CALLED)
        if len(store) == 1:
            return next(iter(store.values()))
        return replicas_in_order(store, self.device_ids, self.root)

    # ------------------------------------------------------------- layout --
    def _grid_on(self, tensors: Images, batch: Images) -> Tensor:
        """Detached tensors of a pass, back on the inputs' device, as a grid."""
        device = batch[0].device  # DataParallel gathers on its first device
        return self.grid(
            tuple(t.detach().to(device) for t in tensors), tuple(batch[0].shape)
        )

    def _channels_first(self, act: Tensor) -> bool:
        """4-D ``act`` is (B, N, h, w) by declaration or by the channel count
        alone (the rest: :func:`.model.channels_last`)."""
        count = self.channels
        return self.layout == "channels_first" or (
            self.layout == "auto" and count == act.shape[1] != act.shape[3]
        )

    def grid(self, acts: Images, image_shape: Tuple[int, ...]) -> Tensor:
        """The layer's tensor as (B, N, h, w): ``reshape_transform`` when given,
        else by layout: channels-last 4-D activations permuted (declared, or
        detected from the layer's parameters), tokens (B, T, N) laid on the
        patch grid after the prefix tokens."""
        if len(acts) != 1:
            raise ValueError(
                f"the layer gives {len(acts)} tensors; pair attributions need a "
                "layer with a single tensor output (or input)"
            )
        act, batch = acts[0], image_shape[0]
        if self.reshape_transform is not None:
            act = self.reshape_transform(act)
            if not isinstance(act, Tensor):
                raise TypeError("reshape_transform must return a Tensor")
        elif act.dim() == 3 and self.layout in ("auto", "tokens"):
            act = patch_grid(act, self.num_prefix_tokens, image_shape, self.patch_size)
        elif act.dim() == 4 and not self._channels_first(act):
            if channels_last(act, self.channels, self.layout):
                act = act.permute(0, 3, 1, 2)
        if act.dim() != 4 or act.shape[0] != batch:
            raise ValueError(
                f"layer activations must be (B={batch}, N, h, w), got "
                f"{tuple(act.shape)}; pass layout= ('channels_last', 'tokens') or "
                "reshape_transform to turn them into that layout"
            )
        if not act.is_floating_point():
            raise TypeError(
                f"layer activations must be floating point, got {act.dtype}"
            )
        return act


# ------------------------------------------------------------------ maps ---
def _split(
    batches: List[Tensor], groups: List[List[int]], parts: List[Images]
) -> List[Tensor]:
    """The per-part tensors of passes that joined the parts ``groups``."""
    out: List[Tensor] = [batches[0]] * len(parts)
    for batch, group in zip(batches, groups):
        if len(group) == 1:
            out[group[0]] = batch
            continue
        start = 0
        for i in group:  # slices: views, no kernel
            out[i], start = (
                batch[start : start + len(parts[i][0])],
                start + len(parts[i][0]),
            )
    return out


# ----------------------------------------------------- about the model ----
def _may_mix_batch(module: Module) -> bool:
    """A train-mode module that may let a batch's images influence each
    other: BatchNorm, or a module outside ``torch.nn`` with parameters or
    buffers of its own (its train-mode forward is unknown)."""
    if not module.training:
        return False
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return True
    if type(module).__module__.startswith("torch.nn."):
        return False
    own = (*module.parameters(recurse=False), *module.buffers(recurse=False))
    return bool(own)


def _first_call_hook(
    store: Dict[torch.device, Images], to_input: bool
) -> Callable[..., Any]:
    """A hook keeping, in the graph, the tensors of the layer's first call on
    each device (one device, or each replica of a ``DataParallel`` model);
    a fresh leaf when nothing before the layer requires grad."""

    def hook(_module: Module, hook_args: Any, output: Any = None) -> Any:
        value = hook_args if to_input else output
        values = value if isinstance(value, tuple) else (value,)
        tensors = [v for v in values if isinstance(v, Tensor)]
        if not tensors or tensors[0].device in store:
            return None  # a layer called twice: the first call is explained
        fresh = [isinstance(v, Tensor) and not v.requires_grad for v in values]
        ready = tuple(
            v.detach().requires_grad_() if f else v for v, f in zip(values, fresh)
        )
        store[tensors[0].device] = tuple(v for v in ready if isinstance(v, Tensor))
        return ready if isinstance(value, tuple) else ready[0]

    return hook


def _same_layout(first: Images, other: Images) -> bool:
    """Whether two image sets can share a batch: shape, dtype and device."""
    return all(
        (a.shape[1:], a.dtype, a.device) == (b.shape[1:], b.dtype, b.device)
        for a, b in zip(first, other)
    )
