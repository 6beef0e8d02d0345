r"""RAM's weight rule (Yang et al., CVPR 2019)."""

from __future__ import annotations

from typing import Tuple

from torch import Tensor

from .pair import PooledPair

WEIGHTINGS = ("self", "other", "product")


def ram_weights(pair: PooledPair, weighting: str = "self") -> Tuple[Tensor, Tensor]:
    r"""RAM's weight rule, broadcasting over leading dims.

    ``pair.query`` (..., N) and ``pair.shots`` (..., K, N) -> query weights
    (..., N) and shot weights (..., K or 1, N). The rule is linear in
    :math:`V^S`, so against a contrast (``pair.contrast_shots`` (..., K', N),
    :math:`V^{S'}` their mean) the query weights are those for :math:`S`
    minus those for :math:`S'`: :math:`v^S - v^{S'}` for "other" and
    :math:`v^Q (v^S - v^{S'})` for "product" (the channel's contribution to
    :math:`\langle V^Q, V^S\rangle - \langle V^Q, V^{S'}\rangle`, which
    "product" also gives the shots). "other" shots keep their weights
    (:math:`S'` does not involve them). "self" is pair-agnostic: a contrast
    is a ValueError (it would give all-zero query maps).
    """
    query_vectors, shot_vectors = pair.query, pair.shots
    contrast_shots = pair.contrast_shots
    if weighting == "self":  # each image weighted by its own pooled vector
        if contrast_shots is not None:
            raise ValueError(
                'weighting="self" does not depend on the support: no contrast'
            )
        return query_vectors, shot_vectors
    contrast = None if contrast_shots is None else contrast_shots.mean(dim=-2)
    support_vectors = shot_vectors.mean(dim=-2)  # Eq. 1
    if contrast is not None:  # linear in V^S: weights(S) - weights(S')
        support_vectors = support_vectors - contrast
    if weighting == "other":  # each image weighted by the other side's vector
        return support_vectors, query_vectors.unsqueeze(-2)
    product = query_vectors * support_vectors  # channel contributions to V^Q.V^S
    return product, product.unsqueeze(-2)
