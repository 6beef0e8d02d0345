r"""Cascading-randomisation sanity check (Adebayo et al., NeurIPS 2018)."""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import Module

from .localization import _scipy


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two maps (average ranks for ties)."""
    spearmanr = _scipy("scipy.stats").spearmanr
    x, y = (
        a.detach().flatten().double().cpu().numpy(),
        b.detach().flatten().double().cpu().numpy(),
    )
    if x.shape != y.shape:
        raise ValueError("the two maps must have the same number of elements")
    if np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0  # a constant map has no ranking; report no correlation
    return float(spearmanr(x, y).statistic)


def sanity_check(
    model: Module,
    explain: Callable[[Module], Tensor],
    layers: Sequence[str],
    seed: int = 0,
) -> List[Dict[str, object]]:
    r"""Cascading randomisation (Adebayo et al. 2018; SFAM paper section 4.4).

    The named modules are re-initialised one after the other, from the top of
    the network down, cumulatively, on a copy of ``model`` (the original is
    untouched): each parameter, in ``parameters()`` order, gets
    :math:`\mathcal N(0, 1/\mathrm{fan_{in}})` draws from one generator seeded
    with ``seed``, :math:`\mathrm{fan_{in}}` the size of one output's weights
    (``param[0]``; the whole parameter for a 1-d one such as a bias). After
    each step the explanation is recomputed on the randomised copy (the
    support embedding too: ``explain`` receives the copy) and compared with
    the original map.

    Caveat: randomising layers above the layer an activation-only method reads
    (e.g. an embedding head above SFAM's layer) cannot change its map: a high
    correlation there is expected, not a failure.

    Args:
        model (Module): the trained model.
        explain: maps a model to one map (any shape), e.g.
                    ``lambda m: LayerSFAM(m, m.layer4).attribute(q, s)[0, 0]``.
        layers: dotted module names, top first.
        seed (int): seed of the re-initialisation. Default: 0

    Returns:
        one dict per step: ``layer`` (the last randomised), ``spearman`` and
        ``spearman_abs`` (on absolute values).
    """
    original = explain(model).detach()
    randomized = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    rows: List[Dict[str, object]] = []
    for name in layers:
        try:
            module = randomized.get_submodule(name)
        except AttributeError as error:
            raise ValueError(f"unknown layer {name!r}") from error
        with torch.no_grad():
            for param in module.parameters():
                fan = param[0].numel() if param.dim() > 1 else param.numel()
                std = 1.0 / max(fan, 1) ** 0.5
                param.copy_(torch.randn(param.shape, generator=generator) * std)
        current = explain(randomized).detach()
        rows.append(
            {
                "layer": name,
                "spearman": spearman(original, current),
                "spearman_abs": spearman(original.abs(), current.abs()),
            }
        )
    return rows
