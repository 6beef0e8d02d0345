r"""The input of a weight rule: pooled vectors with any leading dimensions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor


@dataclass(frozen=True)
class PooledPair:
    r"""Pooled vectors of pairs, leading dimensions broadcasting.

    ``attribute`` passes (B, N) queries and (1 or B, K, N) shots;
    ``attribute_pairs`` passes (Q, 1, N) queries and (1, M, K, N) shots. The
    support vector :math:`V^S` is the mean of the K shots (Eq. 1 of the SFAM
    paper), the contrast's :math:`V^{S'}` the mean of its K' shots.
    """

    query: Tensor  # (..., N) V^Q
    shots: Tensor  # (..., K, N) pooled support shots
    query_positions: int = 1  # h * w of the query activations
    support_positions: int = 1  # h' * w' of the support activations
    contrast_shots: Optional[Tensor] = None  # (..., K', N) pooled contrast shots
