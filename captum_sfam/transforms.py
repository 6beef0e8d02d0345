r"""Activation layouts and map sizes: tokens to the (B, N, h, w) grid, and
maps of any leading dimensions upsampled to the image."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from ._engine.model import tokens_grid


def tokens_to_grid(
    num_prefix_tokens: int = 1, grid_size: Optional[Tuple[int, int]] = None
) -> Callable[[Tensor], Tensor]:
    r"""A ``reshape_transform`` for vision transformers and other token models.

    Returns a function mapping token activations (B, T, N) to a grid
    (B, N, h, w): the first ``num_prefix_tokens`` tokens (class token,
    register / distillation tokens) are dropped and the remaining h*w patch
    tokens, in row-major order, are laid out on the grid. Pass it as
    ``reshape_transform=`` to any member of the family, e.g. for torchvision's
    ``vit_b_16`` with the layer ``model.encoder.layers[-1]``:
    ``tokens_to_grid(1)``; for a DINOv2-style model with 4 registers:
    ``tokens_to_grid(5)``.

    Args:
        num_prefix_tokens (int, optional): tokens before the patch tokens.
                    Default: 1
        grid_size (tuple[int, int], optional): (h, w); by default the patch
                    tokens must form a square.
                    Default: None
    """
    if not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(
            f"num_prefix_tokens must be a non-negative int, got {num_prefix_tokens!r}"
        )

    def transform(tokens: Tensor) -> Tensor:
        if tokens.dim() != 3:
            raise ValueError(
                f"tokens_to_grid expects (B, T, N) token activations, got "
                f"{tuple(tokens.shape)}"
            )
        patches = tokens[:, num_prefix_tokens:, :]
        count = patches.shape[1]
        if grid_size is None:
            square = tokens_grid(count, None, None)
            if square is None:
                raise ValueError(
                    f"{count} patch tokens do not form a square grid: pass "
                    "grid_size=(h, w) or the right num_prefix_tokens"
                )
            h, w = square
        else:
            h, w = grid_size
            if h * w != count:
                raise ValueError(f"grid_size {grid_size} does not hold {count} tokens")
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)

    return transform


def interpolate(
    attributions: Tensor, size: Tuple[int, int], mode: str = "bilinear"
) -> Tensor:
    r"""Upsample maps with any leading dimensions to ``size``.

    ``LayerAttribution.interpolate`` takes (B, 1, h, w) maps; the pair maps of
    ``attribute_pairs`` (Q, M, 1, h, w), the support maps (B, K, 1, h', w')
    and few-shot gallery maps (Q, M, K, 1, h', w') have more leading
    dimensions. This flattens them, resizes the last two dimensions with
    ``torch.nn.functional.interpolate`` and restores the shape.

    Args:
        attributions (Tensor): maps (..., h, w), at least 3-D.
        size (tuple[int, int]): the output (H, W).
        mode (str, optional): as ``torch.nn.functional.interpolate``.
                    Default: "bilinear"

    Returns:
        *Tensor*: maps (..., H, W).
    """
    if not isinstance(attributions, Tensor) or attributions.dim() < 3:
        raise ValueError("attributions must be a Tensor (..., h, w) with dim >= 3")
    lead, (h, w) = attributions.shape[:-2], attributions.shape[-2:]
    flat = attributions.reshape(-1, 1, h, w)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(flat, size=tuple(size), mode=mode, **kwargs)
    return out.reshape(*lead, *out.shape[-2:])
