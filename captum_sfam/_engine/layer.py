r"""Stage 2: :class:`Pairs` -> :class:`Features`, through :class:`Layer`,
which knows the explained layer (resolved once) and owns the hooks.

Per call it runs the network on queries, support and contrast (one pass for
all when a batch's images cannot influence each other) and returns the
layer's activations as (B, N, h, w), pooled; the gradient members' pass
(:mod:`.gradient`) uses its hooks and layout. Hooks are removed and buffers
restored even on errors; the model's mode, flags, parameters and ``.grad``
are never changed. Pooling and Eq. 3's weighted sum are here too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from .captum_compat import forward_layer_eval
from .checks import PoolingType, check_finite, checked_pass, warn
from .model import (
    channel_count,
    find_model,
    held_modules,
    patch_size,
    prefix_tokens,
    siamese_hint,
    tokens_grid,
)
from .pairs import Images, Pairs

ReshapeTransform = Callable[[Tensor], Tensor]
NOT_CALLED = (
    "layer was not called by forward_func: pass a submodule that the model's "
    "forward uses"
)


@dataclass(frozen=True)
class Features:
    r"""The layer's view of a batch of pairs, float32 (float64 if the
    activations are). ``G`` is 1 for a shared support (computed once and
    broadcast), B per query (references picked by the pairs' index), M for
    a gallery."""

    query: Tensor  # (B, N, h, w) query activations A_Q
    support: Tensor  # (G, K, N, h', w') support activations
    query_vectors: Optional[Tensor] = None  # (B, N) V^Q = p(A_Q)
    shot_vectors: Optional[Tensor] = None  # (G, K, N) pooled shots
    contrast: Optional[Tensor] = None  # (G', K', N, h'', w'')
    contrast_vectors: Optional[Tensor] = None  # (G', K', N)
    query_gradients: Optional[Tensor] = None  # (B, N, h, w) gradient members
    support_gradients: Optional[Tensor] = None  # (B, K, N, h', w')

    @property
    def dtype(self) -> torch.dtype:
        return self.query.dtype


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
        self.layer, self.pooling = layer, pooling
        self.reshape_transform, self.device_ids = reshape_transform, device_ids
        self.layout = layout
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
    def features(self, pairs: Pairs, batch_size: Optional[int] = None) -> Features:
        """Activations and pooled vectors of the queries, the support (or
        gallery, or references picked by ``pairs.index``) and the contrast,
        forward only, in batches of ``batch_size`` images."""
        parts = [pairs.inputs, pairs.others]
        if pairs.contrast is not None:
            parts.append(pairs.contrast)
        names = ["inputs", pairs.argument, "contrast"][: len(parts)]
        call = (pairs.additional_forward_args, pairs.attribute_to_layer_input)
        query, others, *contrast = self._forward_only(parts, names, call, batch_size)
        checked_pass(self.model, [query, others, *contrast])
        wide = torch.float64 in (query.dtype, others.dtype)  # float32 or wider
        dtype = torch.float64 if wide else torch.float32
        query, others = self._fits(query, others, pairs.argument, dtype)
        support = others.reshape(pairs.groups, pairs.shots, *others.shape[1:])
        shots = pool(others, self.pooling).reshape(pairs.groups, pairs.shots, -1)
        if pairs.index is not None:  # each query's reference
            support, shots = support[pairs.index], shots[pairs.index]
        features = Features(query, support, pool(query, self.pooling), shots)
        if not contrast:
            return features
        _, acts = self._fits(query, contrast[0], "contrast", dtype)
        groups, count = pairs.contrast_groups, pairs.contrast_shots
        return replace(
            features,
            contrast=acts.reshape(groups, count, *acts.shape[1:]),
            contrast_vectors=pool(acts, self.pooling).reshape(groups, count, -1),
        )

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

    def _batches(
        self, parts: List[Images], names: List[str], others_together: bool = False
    ) -> Tuple[List[Images], List[str], List[List[int]]]:
        """The parts grouped into forward passes: the queries with every part
        whose images can share their batch (same shape, dtype and device, and
        a batch-independent model), the others one pass each; with
        ``others_together`` a batch-dependent model runs the queries alone
        and the other parts that fit together. Returns the batches, their
        names and the parts each holds."""
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

    def _forward_only(
        self,
        parts: List[Images],
        names: List[str],
        call: Tuple[Any, bool],
        batch_size: Optional[int],
    ) -> List[Tensor]:
        """(n, N, h, w) activations of each part, in as few passes as
        :meth:`_batches` allows (a joint pass that fails is run apart, for an
        error naming its argument)."""
        batches, labels, groups = self._batches(parts, names, others_together=True)
        try:
            acts = [
                self.activations(b, name, *call, batch_size)
                for b, name in zip(batches, labels)
            ]
        except ValueError:
            if all(len(g) == 1 for g in groups):
                raise
            return [
                self.activations(p, n, *call, batch_size) for p, n in zip(parts, names)
            ]
        return split_parts(acts, groups, [p[0].shape[0] for p in parts])

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
        step = batch_size or images[0].shape[0]
        out = []
        for start in range(0, images[0].shape[0], step):
            chunk = tuple(t[start : start + step] for t in images)
            with self._protected(), torch.no_grad():
                acts = self._run_to_layer(
                    chunk, argument, additional_forward_args, to_input
                )
            out.append(self.grid(acts, tuple(chunk[0].shape)))
        return out[0] if len(out) == 1 else torch.cat(out)

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

    @contextlib.contextmanager
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
            if isinstance(error, TypeError):
                hint = siamese_hint(error)
                raise (TypeError(hint) if hint else error) from error
            raise ValueError(
                f"{argument}: forward_func cannot run on it: {error}"
            ) from error
        finally:
            handle.remove()

    @contextlib.contextmanager
    def _protected(self) -> Iterator[None]:
        """Restore, on exit, the buffers a forward pass may write (those of
        submodules in training mode, BatchNorm statistics; one fused copy),
        and warn after a pass that ran BatchNorm or Dropout in training mode
        (read after it: a wrapper may switch to eval itself)."""
        modules = [m for m in (self.model, self.layer) if m is not None]
        if self.model is None and self.layer.training:
            warn(
                "forward_func is a callable holding no torch.nn.Module that "
                "contains layer, and layer is in training mode: buffers (BatchNorm "
                "running statistics) outside layer cannot be protected from this "
                "call. Put the model in eval() mode or pass the model (or a bound "
                "method of it) as forward_func"
            )
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

    # ------------------------------------------------------------- layout --
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
            act = self._tokens(act, image_shape)
        elif act.dim() == 4 and channels_last(act, self.channels, self.layout):
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

    def _tokens(self, act: Tensor, image_shape: Tuple[int, ...]) -> Tensor:
        """(B, T, N) tokens -> (B, N, h, w) patch grid."""
        prefix = self.num_prefix_tokens
        if prefix is None:
            raise ValueError(
                f"layer activations {tuple(act.shape)} are tokens (B, T, N) and the "
                "number of prefix tokens (class, register tokens) cannot be read "
                "from forward_func: pass num_prefix_tokens= (1 for a class token, "
                "1 + registers for DINOv2 with registers, 0 for Swin)"
            )
        count = act.shape[1] - prefix
        grid = tokens_grid(count, image_shape, self.patch_size)
        if grid is None:
            raise ValueError(
                f"{count} patch tokens (after {prefix} prefix tokens) do not form "
                "the patch grid: check num_prefix_tokens, or pass reshape_transform="
                "tokens_to_grid(num_prefix_tokens, grid_size=(h, w))"
            )
        patches = act[:, prefix:, :]
        return patches.transpose(1, 2).reshape(act.shape[0], act.shape[2], *grid)

    @staticmethod
    def _fits(
        query: Tensor, others: Tensor, argument: str, dtype: torch.dtype
    ) -> Tuple[Tensor, Tensor]:
        """Both activations in ``dtype``, after checking their channel counts."""
        if others.shape[1] != query.shape[1]:
            raise ValueError(
                f"{argument} gives {others.shape[1]} channels at the layer, inputs "
                f"give {query.shape[1]}"
            )
        return query.to(dtype), others.to(dtype)


# ------------------------------------------------------ pooling and maps ---
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
    check_finite(pooled, names=["the output of the pooling callable"])
    return pooled


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    r"""The CAM sum :math:`L = \sum_n w_n A^n` (Eq. 3): weights (..., N) and
    activations (..., N, h, w) -> maps (..., h, w), leading dims broadcasting
    (a shared support, leading size 1, is never copied)."""
    return torch.einsum(
        "...n,...nhw->...hw", weights.to(activations.dtype), activations
    )


# ----------------------------------------------------- about the model ----
def channels_last(act: Tensor, count: Optional[int], layout: str) -> bool:
    """Whether 4-D ``act`` is (B, H, W, N): declared by ``layout``, or
    detected when the parameters' channel ``count`` matches dim 3 and not
    dim 1. Shapes that look channels-last without that evidence raise."""
    if layout in ("channels_first", "channels_last"):
        return layout == "channels_last"
    if layout == "tokens":
        raise ValueError(
            f"layout='tokens' expects (B, T, N) activations, got {tuple(act.shape)}"
        )
    first, last = act.shape[1] == count, act.shape[3] == count
    if count is not None and first != last:
        return last
    if act.shape[1] == act.shape[2] and act.shape[3] != act.shape[1]:
        raise ValueError(
            f"layer activations {tuple(act.shape)} may be (B, N, h, w) or "
            "channels-last (B, H, W, N), and the layer's parameters do not tell: "
            "pass layout='channels_first' or layout='channels_last'"
        )
    return False


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
    return any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False)
    )


def split_parts(
    batches: List[Tensor], groups: List[List[int]], sizes: List[int]
) -> List[Tensor]:
    """The per-part tensors of batches that joined the parts ``groups``."""
    out: List[Optional[Tensor]] = [None] * len(sizes)
    for batch, group in zip(batches, groups):
        for i, t in zip(group, batch.split([sizes[i] for i in group])):
            out[i] = t
    return out  # type: ignore[return-value]


def _same_layout(first: Images, other: Images) -> bool:
    return all(
        (a.shape[1:], a.dtype, a.device) == (b.shape[1:], b.dtype, b.device)
        for a, b in zip(first, other)
    )
