r"""Captum's layer methods on token layers through ``SimilarityTarget``.

:meth:`captum_sfam.SimilarityTarget.grid` returns a :class:`GridTap`: while
the target runs, a hook lays the tapped layer's patch tokens on the grid,
passes them through the tap (which Captum's layer methods can hook) and back.
A token layer hooked by Captum's ``LayerGradCam`` directly raises an error
naming the fix (its map would be over the channels).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from .model import held_modules, patch_grid


class GridTap(Module):
    """The identity on a (B, N, h, w) grid: what Captum's layer methods hook
    for :meth:`SimilarityTarget.grid`."""

    def __init__(self, prefix: Optional[int], patch: Optional[Tuple[int, int]]):
        super().__init__()
        self.prefix, self.patch = prefix, patch

    def forward(self, grid: Tensor) -> Tensor:
        return grid


def modules_of(model: Any) -> List[Module]:
    return [m for root in held_modules(model) for m in root.modules()]


_TOKENS_MAP = (
    "LayerGradCam on a layer whose output is tokens {shape} (B, T, N) gives "
    "a (B, 1, N) map over the channels, not over the image: pass "
    "target.grid(layer) as the layer (the patch tokens laid on the grid, as "
    "tokens_to_grid does), or use LayerCGRAM(model, layer, "
    "metric=...).attribute(inputs, references=...), which reads the layout"
)


def _grad_cam_running() -> bool:
    """Whether Captum's LayerGradCam is on the call stack."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.endswith("grad_cam.py") and "captum" in (
            frame.f_code.co_filename
        ):
            return True
        frame = frame.f_back
    return False


@contextmanager
def taps_and_checks(
    taps: List[Tuple[Module, GridTap]], model: Any, shape: Tuple[int, ...]
) -> Iterator[None]:
    """During a forward: each tapped layer's tokens go through its grid
    module; a token layer hooked by Captum's LayerGradCam raises."""
    handles = []

    def tapped(tap: GridTap) -> Callable[..., Any]:
        def hook(_module: Module, _args: Any, out: Any) -> Any:
            if not isinstance(out, Tensor) or out.dim() != 3:
                return None
            grid = tap(patch_grid(out, tap.prefix, shape, tap.patch))
            tokens = grid.flatten(2).transpose(1, 2)
            return torch.cat([out[:, : out.shape[1] - tokens.shape[1]], tokens], 1)

        return hook

    def check(_module: Module, _args: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.dim() == 3 and _grad_cam_running():
            raise ValueError(_TOKENS_MAP.format(shape=tuple(out.shape)))

    try:
        for layer, tap in taps:
            handles.append(layer.register_forward_hook(tapped(tap)))
        tapped_layers = {id(layer) for layer, _ in taps}
        for module in modules_of(model):
            hooks = module._forward_hooks.values()
            if id(module) not in tapped_layers and any(
                getattr(h, "__module__", "").startswith("captum.") for h in hooks
            ):
                handles.append(module.register_forward_hook(check))
        yield
    finally:
        for handle in handles:
            handle.remove()
