r"""Activation capture: hooks, early stop, buffer protection, gradients.

Everything that touches the user's model lives here. Hooks are removed and
buffers restored even when an error is raised; nothing else about the model
(mode, flags, parameters, ``.grad``) is changed.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from .captum_compat import (
    format_additional_forward_args,
    forward_layer_eval,
    layer_gradients_and_eval,
)


class _StopForward(Exception):
    """Raised by our hook to stop the network right after the hooked layer."""


def root_module(forward_func: Callable[..., Any]) -> Optional[Module]:
    """The module behind ``forward_func`` (itself, or a bound method's owner)."""
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


def runs_in_eval_mode(forward_func: Callable[..., Any]) -> bool:
    """True when ``forward_func`` is a module (or a bound method of one) with
    every submodule in eval mode, and no DataParallel: then the images of a
    batch do not influence each other's activations."""
    root = root_module(eager_forward(forward_func))
    return (
        root is not None
        and not isinstance(root, torch.nn.DataParallel)
        and not any(m.training for m in root.modules())
    )


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
    methods do. ``argument`` names the inputs in error messages.
    """
    forward_func = eager_forward(forward_func)
    root = root_module(forward_func)
    with preserved_buffers(root, layer):
        if device_ids is not None or isinstance(root, torch.nn.DataParallel):
            return tuple(
                forward_layer_eval(
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
        args = format_additional_forward_args(additional_forward_args) or ()
        try:
            with torch.no_grad():
                forward_func(*inputs, *args)
        except _StopForward:
            pass
        except RuntimeError as error:
            raise ValueError(
                f"{argument}: forward_func cannot run on it: {error}"
            ) from error
        finally:
            handle.remove()
    if not store:
        raise ValueError(
            "layer was not called by forward_func: pass a submodule that the "
            "model's forward uses"
        )
    return store[0]


def model_outputs(
    forward_func: Callable[..., Any],
    layer: Module,
    inputs: Tuple[Tensor, ...],
    additional_forward_args: Any = None,
) -> Any:
    """The full model's outputs for ``inputs`` (no graph, buffers restored)."""
    forward_func = eager_forward(forward_func)
    with preserved_buffers(root_module(forward_func), layer):
        with torch.no_grad():
            return forward_func(*inputs, *(additional_forward_args or ()))


def gradients_and_activations(
    forward_func: Callable[..., Any],
    layer: Module,
    inputs: Tuple[Tensor, ...],
    objective: Callable[[Tensor], Tensor],
    additional_forward_args: Any = None,
    attribute_to_layer_input: bool = False,
    device_ids: Optional[List[int]] = None,
) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
    """Gradient of ``objective(forward_func(inputs)).sum()`` w.r.t. the layer,
    and the layer's activations, from one forward and one backward pass.

    ``objective`` maps the model output (B, ...) to one scalar per row. Uses
    Captum's layer-gradient helper, so ``device_ids`` works as in Captum.
    """
    forward_func = eager_forward(forward_func)

    def scalar_forward(*args: Any) -> Tensor:
        return objective(forward_func(*args))

    with preserved_buffers(root_module(forward_func), layer):
        grads, acts = layer_gradients_and_eval(
            scalar_forward,
            layer,
            inputs,
            None,
            additional_forward_args,
            device_ids=device_ids,
            attribute_to_layer_input=attribute_to_layer_input,
        )
    return (
        tuple(g.detach() for g in grads),
        tuple(a.detach() for a in acts),
    )
