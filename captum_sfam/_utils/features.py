r"""The features of a batch of pairs: layer activations and pooled vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from .capture import batch_independent, capture_activations
from .checks import PoolingType, check_finite, compute_dtype
from .maps import pool
from .model import channels_last, tokens_grid

ReshapeTransform = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class PooledPair:
    r"""The input of a weight rule: pooled vectors with any leading dims.

    ``attribute`` passes (B, N) queries and (1 or B, K, N) shots;
    ``attribute_pairs`` passes (Q, 1, N) queries and (1, M, K, N) shots.
    """

    query: Tensor  # (..., N) V^Q
    shots: Tensor  # (..., K, N) pooled support shots
    query_positions: int  # h * w of the query activations
    support_positions: int  # h' * w' of the support activations
    contrast_shots: Optional[Tensor] = None  # (..., K', N) pooled contrast shots

    @property
    def support(self) -> Tensor:
        """(..., N) V^S, the mean of the K pooled shots (Eq. 1)."""
        return self.shots.mean(dim=-2)

    @property
    def contrast(self) -> Optional[Tensor]:
        """(..., N) V^S', the mean of the K' pooled contrast shots, or None."""
        return None if self.contrast_shots is None else self.contrast_shots.mean(-2)


@dataclass
class PairFeatures:
    r"""What the engine knows about a batch of pairs after the forward passes.

    ``G`` is 1 when one support is shared by all B queries (its features are
    computed once and broadcast) and B when each query has its own support.
    Activations and vectors are float32 (float64 if the activations are).
    """

    query: Tensor  # (B, N, h, w) query activations
    support: Tensor  # (G, K, N, h', w') support activations
    query_vectors: Tensor  # (B, N) pooled query activations, V^Q
    shot_vectors: Tensor  # (G, K, N) pooled support shots
    query_gradients: Optional[Tensor] = None  # (B, N, h, w), gradient members
    support_gradients: Optional[Tensor] = None  # (B, K, N, h', w')
    contrast: Optional[Tensor] = None  # (G', K', N, h'', w'') contrast activations
    contrast_vectors: Optional[Tensor] = None  # (G', K', N) pooled contrast shots

    @property
    def batch_size(self) -> int:
        return self.query.shape[0]

    @property
    def shots(self) -> int:
        return self.support.shape[1]

    @property
    def output_dtype(self) -> torch.dtype:
        return self.query.dtype

    def select(self, index: Tensor) -> PairFeatures:
        """The features with each query's reference: support and shot
        vectors (G, ...) indexed by the (B,) ``index``."""
        self.support = self.support[index]
        self.shot_vectors = self.shot_vectors[index]
        return self

    def pooled(self) -> PooledPair:
        return PooledPair(
            self.query_vectors,
            self.shot_vectors,
            self.query.shape[-2] * self.query.shape[-1],
            self.support.shape[-2] * self.support.shape[-1],
            self.contrast_vectors,
        )


@dataclass(frozen=True)
class LayerSpec:
    """Where and how a member reads the model: the captured layer's setup."""

    forward_func: Callable[..., Any]
    layer: Module
    pooling: PoolingType
    reshape_transform: Optional[ReshapeTransform]
    device_ids: Optional[List[int]]
    attribute_to_layer_input: bool
    additional_forward_args: Any
    layout: str = "auto"
    num_prefix_tokens: Optional[int] = None  # declared, or read from the model
    patch_size: Optional[Tuple[int, int]] = None  # read from the model
    channels: Optional[int] = None  # the layer's channel count, from parameters


def to_grid(
    spec: LayerSpec,
    acts: Tuple[Tensor, ...],
    batch: int,
    image_shape: Optional[Tuple[int, ...]] = None,
) -> Tensor:
    """The layer's tensor as (B, N, h, w).

    ``reshape_transform`` when given; otherwise by ``spec.layout``: 4-D
    activations are (B, N, h, w) or channels-last (B, H, W, N) (declared, or
    detected from the layer's parameters, see :func:`.model.channels_last`),
    3-D ones are tokens (B, T, N) whose first ``num_prefix_tokens`` are
    dropped and the rest laid on the patch grid of ``image_shape``.
    """
    if len(acts) != 1:
        raise ValueError(
            f"the layer gives {len(acts)} tensors; pair attributions need a "
            "layer with a single tensor output (or input)"
        )
    act = acts[0]
    if spec.reshape_transform is not None:
        act = spec.reshape_transform(act)
        if not isinstance(act, Tensor):
            raise TypeError("reshape_transform must return a Tensor")
    elif act.dim() == 3 and spec.layout in ("auto", "tokens"):
        act = _tokens(spec, act, image_shape)
    elif act.dim() == 4 and channels_last(act, spec.channels, spec.layout):
        act = act.permute(0, 3, 1, 2)
    if act.dim() != 4 or act.shape[0] != batch:
        raise ValueError(
            f"layer activations must be (B={batch}, N, h, w), got "
            f"{tuple(act.shape)}; pass layout= ('channels_last', 'tokens') or "
            "reshape_transform to turn them into that layout"
        )
    if not act.is_floating_point():
        raise TypeError(f"layer activations must be floating point, got {act.dtype}")
    check_finite(act, "the layer activations")
    return act


def _tokens(
    spec: LayerSpec, act: Tensor, image_shape: Optional[Tuple[int, ...]]
) -> Tensor:
    """(B, T, N) tokens -> (B, N, h, w) patch grid."""
    prefix = spec.num_prefix_tokens
    if prefix is None:
        raise ValueError(
            f"layer activations {tuple(act.shape)} are tokens (B, T, N) and the "
            "number of prefix tokens (class, register tokens) cannot be read "
            "from forward_func: pass num_prefix_tokens= (1 for a class token, "
            "1 + registers for DINOv2 with registers, 0 for Swin)"
        )
    count = act.shape[1] - prefix
    grid = tokens_grid(count, image_shape, spec.patch_size)
    if grid is None:
        raise ValueError(
            f"{count} patch tokens (after {prefix} prefix tokens) do not form "
            "the patch grid: check num_prefix_tokens, or pass reshape_transform="
            "tokens_to_grid(num_prefix_tokens, grid_size=(h, w))"
        )
    patches = act[:, prefix:, :]
    return patches.transpose(1, 2).reshape(act.shape[0], act.shape[2], *grid)


def layer_activations(
    spec: LayerSpec,
    inputs: Tuple[Tensor, ...],
    argument: str = "inputs",
    batch_size: Optional[int] = None,
) -> Tensor:
    """(B, N, h, w) activations of the layer, forward only.

    With ``batch_size``, the inputs go through the network in batches of that
    many examples, so only one batch's intermediate tensors are alive at a
    time. ``argument`` names the inputs in error messages.
    """
    total = inputs[0].shape[0]
    step = batch_size or total
    parts = []
    for start in range(0, total, step):
        chunk = tuple(t[start : start + step] for t in inputs)
        acts = capture_activations(
            spec.forward_func, spec.layer, chunk, spec.additional_forward_args,
            spec.attribute_to_layer_input, spec.device_ids, argument,
        )  # fmt: skip
        parts.append(to_grid(spec, acts, chunk[0].shape[0], tuple(chunk[0].shape)))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def query_and_other_activations(
    spec: LayerSpec,
    inputs: Tuple[Tensor, ...],
    others: Tuple[Tensor, ...],
    argument: str,
    batch_size: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """Layer activations of the queries and of ``others`` (support or gallery).

    One forward pass for both when that cannot change the result: no module
    that may mix the batch (``batch_independent``: an eval-mode model), no
    ``device_ids``, and image tensors of the same shape, dtype and device.
    Otherwise, or when the joint pass fails, one pass each, so that an error
    names the argument it comes from.
    """
    joint = (
        spec.device_ids is None
        and batch_independent(spec.forward_func, spec.layer)
        and all(
            a.shape[1:] == b.shape[1:] and a.dtype == b.dtype and a.device == b.device
            for a, b in zip(inputs, others)
        )
    )
    if joint:
        both = tuple(torch.cat([a, b]) for a, b in zip(inputs, others))
        try:
            acts = layer_activations(spec, both, f"inputs and {argument}", batch_size)
        except ValueError:
            pass  # run them apart below, for an error that names its argument
        else:
            batch = inputs[0].shape[0]
            return acts[:batch], acts[batch:]
    return (
        layer_activations(spec, inputs, "inputs", batch_size),
        layer_activations(spec, others, argument, batch_size),
    )


def pair_features(
    spec: LayerSpec,
    query: Tensor,
    others: Tensor,
    groups: int,
    shots: int,
    argument: str,
) -> PairFeatures:
    """Pool (B, N, h, w) query and (G*K, N, h', w') activations of ``argument``."""
    if others.shape[1] != query.shape[1]:
        raise ValueError(
            f"{argument} gives {others.shape[1]} channels at the layer, inputs "
            f"give {query.shape[1]}"
        )
    dtype = compute_dtype(query, others)
    query, others = query.to(dtype), others.to(dtype)
    return PairFeatures(
        query=query,
        support=others.reshape(groups, shots, *others.shape[1:]),
        query_vectors=pool(query, spec.pooling),
        shot_vectors=pool(others, spec.pooling).reshape(groups, shots, -1),
    )
