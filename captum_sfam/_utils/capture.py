r"""Activation capture: hooks, early stop, buffer protection, gradients.

Everything that touches the user's model lives here. Hooks are removed and
buffers restored even when an error is raised; nothing else about the model
(mode, flags, parameters, ``.grad``) is changed.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from .captum_compat import (
    format_additional_forward_args,
    forward_layer_eval,
)
from .model import (
    EmbeddingFunc,
    find_model,
    held_modules,
    select_embedding,
    siamese_hint,
)


class _StopForward(Exception):
    """Raised by our hook to stop the network right after the hooked layer."""


def root_module(forward_func: Callable[..., Any]) -> Optional[Module]:
    """The module ``forward_func`` is (itself, or a bound method's owner)."""
    if isinstance(forward_func, Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, Module) else None


def warn_if_batch_or_chance_dependent(model: Module) -> None:
    """Warn when ``model`` has BatchNorm or Dropout (p > 0) in training mode:
    a map would depend on the other images of the batch, or on chance."""
    found = [
        f"{type(m).__name__} at {name or 'the model'!r}"
        for name, m in model.named_modules()
        if m.training
        and (
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            or (isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0)
        )
    ]
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        warnings.warn(
            f"the model has modules in training mode ({', '.join(found[:3])}{more}): "
            "BatchNorm normalises with the statistics of each forward batch, so a "
            "map depends on the other images explained with it, and Dropout makes "
            "maps random. Call model.eval() before explaining (captum-sfam never "
            "changes the model's mode; running statistics are restored after the "
            "call either way)",
            stacklevel=6,
        )


@contextlib.contextmanager
def _modes_checked_after(model: Optional[Module]) -> Iterator[None]:
    """Warn, after a forward pass that succeeded, if ``model`` ran with
    BatchNorm or Dropout in training mode (read after the pass: a wrapper may
    switch its model to eval mode itself, as pytorch-metric-learning's
    InferenceModel does)."""
    yield
    if model is not None:
        warn_if_batch_or_chance_dependent(model)


def protected_model(
    forward_func: Callable[..., Any], layer: Module
) -> Optional[Module]:
    """The model whose buffers a call protects: ``forward_func``'s own module,
    or the one a closure, partial or lambda runs (see :func:`.model.find_model`).
    Warns when none is found and ``layer`` is in training mode, since then
    the modules the callable runs may update their statistics."""
    model = root_module(forward_func)
    if model is None:
        model = find_model(forward_func, layer)
    if model is None and layer.training:
        warnings.warn(
            "forward_func is a callable holding no torch.nn.Module that contains "
            "layer, and layer is in training mode: buffers (BatchNorm running "
            "statistics) outside layer cannot be protected from this call. Put "
            "the model in eval() mode or pass the model (or a bound method of it) "
            "as forward_func",
            stacklevel=5,
        )
    return model


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
    """Restore, on exit, the buffers that a forward pass of ``modules`` may write.

    A forward pass of a model left in ``train()`` mode updates BatchNorm running
    statistics; an explanation must not, so the buffers of every submodule in
    training mode are put back bitwise (one fused copy). Modules in eval mode
    do not write their buffers (BatchNorm, the layers of torchvision and timm),
    so an eval-mode model costs nothing here.
    """
    buffers: List[Tensor] = []
    seen = set()
    for module in modules:
        if module is None:
            continue
        for sub in module.modules():
            if not sub.training:
                continue
            for buf in sub.buffers(recurse=False):
                if id(buf) not in seen:
                    seen.add(id(buf))
                    buffers.append(buf)
    saved = [buf.detach().clone() for buf in buffers]
    try:
        yield
    finally:
        if buffers:
            with torch.no_grad():
                torch._foreach_copy_(buffers, saved)


def _may_mix_batch(module: Module) -> bool:
    """Whether a module in training mode may let the images of a batch
    influence each other: BatchNorm (batch statistics), and any module outside
    ``torch.nn`` with parameters or buffers of its own (its train-mode forward
    is unknown). ``torch.nn``'s other layers (Identity, activations, Dropout,
    Linear, convolutions, LayerNorm, containers, ...) act image by image."""
    if not module.training:
        return False
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return True
    if type(module).__module__.startswith("torch.nn."):
        return False
    own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    return bool(own)


def batch_independent(
    forward_func: Callable[..., Any], layer: Optional[Module] = None
) -> bool:
    """True when the images of a batch cannot influence each other's
    activations in ``forward_func``, so that queries and support may share one
    forward pass: no DataParallel, and no submodule in training mode that may
    mix the batch (BatchNorm, or a custom module with state of its own). An
    eval-mode model qualifies, and so does one whose only train-mode modules
    are stateless ``torch.nn`` layers (an ``nn.Identity()`` head assigned after
    ``model.eval()``, say). A callable that is not a module (a closure, a
    partial, a wrapper's bound method) is judged by every module it holds, one
    of which must contain ``layer``; one that holds none gets separate passes.
    """
    forward_func = eager_forward(forward_func)
    root = root_module(forward_func)
    modules = [root] if root is not None else held_modules(forward_func)
    if not modules:
        return False
    if layer is not None and not any(
        m is layer for module in modules for m in module.modules()
    ):
        return False
    return not any(
        isinstance(module, torch.nn.DataParallel)
        or any(_may_mix_batch(m) for m in module.modules())
        for module in modules
    )


def _forward_error(
    error: Exception, forward_func: Callable[..., Any], argument: str
) -> Exception:
    """The error a failed forward pass is reported as, naming ``argument``."""
    if isinstance(error, TypeError):
        hint = siamese_hint(error, forward_func)
        return TypeError(hint) if hint else error
    return ValueError(f"{argument}: forward_func cannot run on it: {error}")


NOT_CALLED = (
    "layer was not called by forward_func: pass a submodule that the model's "
    "forward uses"
)


@contextlib.contextmanager
def _hooked(
    layer: Module,
    hook: Callable[..., Any],
    to_input: bool,
    forward_func: Callable[..., Any],
    argument: str,
) -> Iterator[None]:
    """``hook`` on ``layer`` (a pre-hook for its input) for the block, removed
    at its end; a model error in the block is reported naming ``argument``."""
    if to_input:
        handle = layer.register_forward_pre_hook(hook)
    else:
        handle = layer.register_forward_hook(hook)
    try:
        yield
    except (RuntimeError, TypeError) as error:
        raise _forward_error(error, forward_func, argument) from error
    finally:
        handle.remove()


def capture_activations(
    forward_func: Callable[..., Any],
    layer: Module,
    inputs: Tuple[Tensor, ...],
    additional_forward_args: Any = None,
    attribute_to_layer_input: bool = False,
    device_ids: Optional[List[int]] = None,
    argument: str = "inputs",
) -> Tuple[Tensor, ...]:
    """Activations of ``layer`` for ``inputs``, without recording a graph.

    The network stops right after ``layer`` (a private exception raised by the
    hook), so the part after the layer costs nothing. With ``device_ids`` or a
    ``DataParallel`` forward, Captum's own helper is used instead, which runs the
    whole network and gathers the replicas' activations as Captum's layer
    methods do; they are returned on the inputs' device. ``argument`` names
    the inputs in error messages.
    """
    forward_func = eager_forward(forward_func)
    root = root_module(forward_func)
    model = protected_model(forward_func, layer)
    with preserved_buffers(model, layer), _modes_checked_after(model):
        if device_ids is not None or isinstance(root, torch.nn.DataParallel):
            acts = forward_layer_eval(
                forward_func,
                inputs,
                layer,
                additional_forward_args=additional_forward_args,
                device_ids=device_ids,
                attribute_to_layer_input=attribute_to_layer_input,
                grad_enabled=False,
            )
            return tuple(a.to(inputs[0].device) for a in acts)
        store: List[Tuple[Tensor, ...]] = []

        def hook(_module: Module, args: Any, output: Any = None) -> None:
            value = args if attribute_to_layer_input else output
            value = value if isinstance(value, tuple) else (value,)
            store.append(tuple(v.detach() for v in value if isinstance(v, Tensor)))
            raise _StopForward

        args = format_additional_forward_args(additional_forward_args) or ()
        try:
            with _hooked(layer, hook, attribute_to_layer_input, forward_func, argument):
                with torch.no_grad():
                    forward_func(*inputs, *args)
        except _StopForward:
            pass
    if not store:
        raise ValueError(NOT_CALLED)
    return store[0]


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


def gradient_pass(
    forward_func: Callable[..., Any],
    layer: Module,
    batches: Sequence[Tuple[Tensor, ...]],
    score: Callable[[List[Tensor]], Tensor],
    embedding_func: EmbeddingFunc = None,
    additional_forward_args: Any = None,
    attribute_to_layer_input: bool = False,
    arguments: Sequence[str] = ("inputs",),
    device_ids: Optional[List[int]] = None,
) -> Tuple[List[Tuple[Tensor, ...]], List[Tuple[Tensor, ...]], List[Tensor]]:
    """Layer activations and gradients of a score, from one forward pass per
    batch and ONE backward pass for all of them.

    Each batch of ``batches`` runs through ``forward_func`` with autograd
    enabled (even inside ``torch.no_grad()`` or ``torch.inference_mode()``);
    ``score`` maps the list of the batches' embeddings (selected by
    ``embedding_func``) to a score per pair, whose sum is differentiated with
    respect to the activations of the FIRST call of ``layer`` in each batch
    (a layer called twice contributes through both calls, to its first
    output). Returns ``(activations, gradients, embedding_gradients)``, one
    entry per batch, detached. ``arguments`` names the batches in error messages.
    """
    forward_func = eager_forward(forward_func)
    root = root_module(forward_func)
    if device_ids is None and isinstance(root, torch.nn.DataParallel):
        device_ids = list(root.device_ids or [])
    args = format_additional_forward_args(additional_forward_args) or ()
    captured: List[Tuple[Tensor, ...]] = []
    embeddings: List[Tensor] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        model = protected_model(forward_func, layer)
        stack.enter_context(preserved_buffers(model, layer))
        stack.enter_context(_modes_checked_after(model))
        for batch, argument in zip(batches, arguments):
            store: Dict[torch.device, Tuple[Tensor, ...]] = {}

            hook = _first_call_hook(store, attribute_to_layer_input)
            # inference tensors (made under inference_mode) cannot enter a graph
            batch = tuple(t.clone() if t.is_inference() else t for t in batch)
            with _hooked(layer, hook, attribute_to_layer_input, forward_func, argument):
                output = forward_func(*batch, *args)
            if not store:
                raise ValueError(NOT_CALLED)
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
            captured.append(_in_batch_order(store, device_ids))
            embeddings.append(embedding)
        total = score(embeddings).sum()
        flat = [t for group in captured for t in group]
        # the embeddings' gradients come free with the same backward pass: they
        # tell a stationary score (zero maps are right) from an embedding that
        # does not depend on the layer
        grads = torch.autograd.grad(total, flat + embeddings, allow_unused=True)
        embedding_grads = grads[len(flat) :]
        grads = grads[: len(flat)]
    out_grads, start = [], 0
    for group in captured:
        part = grads[start : start + len(group)]
        out_grads.append(
            tuple(
                torch.zeros_like(t) if g is None else g.detach()
                for t, g in zip(group, part)
            )
        )
        start += len(group)
    device = batches[0][0].device  # DataParallel: back on the inputs' device
    return (
        [tuple(t.detach().to(device) for t in group) for group in captured],
        [tuple(g.to(device) for g in group) for group in out_grads],
        [
            torch.zeros_like(e) if g is None else g.detach().to(device)
            for e, g in zip(embeddings, embedding_grads)
        ],
    )
