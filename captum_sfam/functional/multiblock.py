r"""The multi-block map: LeGrad's aggregation over blocks, on activations.

For blocks :math:`l = 1..L` with activations :math:`A_l` (N_l, h_l, w_l)
and gradients :math:`G_l = \partial s / \partial A_l` of the pair score
:math:`s`,

.. math::
    M_l = \frac{1}{N_l}\sum_n \max(0, G_l^n \odot A_l^n), \qquad
    M = \frac1L \sum_l \mathrm{up}(M_l), \qquad
    \hat M = \frac{M - \min M}{\max M - \min M}

(``up``: bilinear resizing to the finest grid among the blocks, the
identity for the same-size blocks of a vision transformer). LeGrad (Bousselham
et al., 2024) takes the positive part of the gradient of each block's
attention map, averages it over heads and sums over blocks, then min-max
normalises the sum; here the positive part of gradient x activation (the
first-order contribution of each patch and channel to the score, in the
score's units at every depth) replaces the attention gradient, so that any
block (or ResNet stage) can be read through a module hook.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def block_map(activations: Tensor, gradients: Tensor) -> Tensor:
    r""":math:`M_l = \mathrm{mean}_n \max(0, G^n A^n)`: (..., N, h, w) ->
    (..., h, w)."""
    return (gradients.to(activations.dtype) * activations).clamp_min(0).mean(-3)


def multiblock_map(
    activations: Sequence[Tensor], gradients: Sequence[Tensor], normalize: bool = True
) -> Tensor:
    r"""The mean over blocks of ``block_map`` (each resized to the finest
    grid), min-max normalised per map with ``normalize`` (a constant map
    gives zeros). Inputs (..., N_l, h_l, w_l); output (..., h, w)."""
    maps = [block_map(a, g) for a, g in zip(activations, gradients)]
    size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
    resized = []
    for m in maps:
        if m.shape[-2:] != size:
            lead = m.shape[:-2]
            flat = m.reshape(-1, 1, *m.shape[-2:])
            flat = F.interpolate(
                flat, size=tuple(size), mode="bilinear", align_corners=False
            )
            m = flat.reshape(*lead, *size)
        resized.append(m)
    total = torch.stack(resized).mean(0)
    if not normalize:
        return total
    # scaled by the largest magnitude first: tiny maps do not underflow
    peak = total.flatten(-2).abs().amax(-1)[..., None, None]
    total = total / torch.where(peak > 0, peak, torch.ones_like(peak))
    low = total.flatten(-2).amin(-1)[..., None, None]
    span = total.flatten(-2).amax(-1)[..., None, None] - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (total - low) / safe, torch.zeros_like(total))
