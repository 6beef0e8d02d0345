r"""SFAM's maths (Liao et al., arXiv 2506.01636): Eq. 1, 2/5 and 4."""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor

from .._engine.checks import check_metric, check_vectors, compute_dtype, require
from .pair import PooledPair

#: unit vectors closer than this (max abs difference) count as parallel, D = 0
PARALLEL_TOL = 1e-12
#: contrastive scores whose largest difference, times N - 1, is below this
#: tell the support from the contrast nowhere: zero weights
CONTRAST_TOL = 1e-12
#: the smallest positive float64: a safe denominator for quantities that are
#: zero only where their quotient is not used
TINY = torch.finfo(torch.float64).tiny


def _unit(v: Tensor, name: str, rescale: bool = True) -> Tensor:
    """L2-normalise the float64 ``v`` along the last dim; zero -> error.

    ``rescale`` divides by the largest magnitude first, so that float64 data
    near its range cannot overflow; values that came from float32 or
    narrower (|v| < 3.5e38, squares < 1.2e77) cannot, and skip it.
    """
    if rescale:  # a zero vector stays zero: its norm below is 0 either way
        v = v / v.abs().amax(dim=-1, keepdim=True).clamp_min(TINY)
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    require(
        (norm == 0).any(),
        f"{name} contains a zero vector: cosine similarity (Eq. 5) is undefined for it",
    )
    return v / norm


def channel_importance(
    query_vectors: Tensor,
    support_vectors: Tensor,
    metric: str = "euclidean",
) -> Tensor:
    r"""Channel-wise contribution importance scores (CIS), Eq. 2 / Eq. 5.

    With :math:`d_n = (v^Q_n - v^S_n)^2` and :math:`D = \sum_n d_n`,

    .. math::
        \omega_n = \frac{D - d_n}{(N - 1) D}                     \qquad (2)

    The cosine variant (Eq. 5) uses the L2-normalised vectors
    :math:`\hat V^Q, \hat V^S` instead. Channels on which the two vectors agree
    get the largest scores; the scores sum to 1 and lie in
    :math:`[0, 1/(N-1)]`.

    For the cosine variant the paper's Eq. 7 drops a factor 2: with unit
    vectors and :math:`c = \cos(V^Q, V^S)`,

    .. math::
        \hat\omega_n = \frac{\sum_{m\neq n}(\hat v^Q_m)^2 + \sum_{m\neq n}
        (\hat v^S_m)^2 - 2c + 2\,\hat v^Q_n \hat v^S_n}{(N-1)(2 - 2c)},

    so, for a fixed cosine and a fixed channel energy
    :math:`(\hat v^Q_n)^2 + (\hat v^S_n)^2`, :math:`\hat\omega_n` is strictly
    increasing in the channel's contribution :math:`\hat v^Q_n\hat v^S_n` to
    the cosine (the paper's claim, in its corrected form; tested).

    Degenerate cases (not defined by the paper):

    - N = 1: ``ValueError`` (Eq. 2 divides by N - 1).
    - D = 0 (identical vectors, or identical directions for cosine, up to
      ``PARALLEL_TOL = 1e-12`` on the unit vectors): every channel is equally
      similar, :math:`\omega_n = 1/N`.
    - a zero vector with ``metric="cosine"``: ``ValueError``.
    - NaN or inf entries: ``ValueError``.

    Computed in float64 after rescaling, so no intermediate overflows.

    Args:
        query_vectors (Tensor): pooled query vectors :math:`V^Q`, shape (N,)
                    or (B, N).
        support_vectors (Tensor): pooled support vectors :math:`V^S`, of a
                    shape broadcastable with ``query_vectors``.
        metric (str, optional): "euclidean" (Eq. 2) or "cosine" (Eq. 5).
                    Default: "euclidean"

    Returns:
        *Tensor* of **scores** :math:`\omega`, of the broadcast shape, summing
        to 1 over the last dimension; float32 (float64 if an input is float64).
    """
    metric = check_metric(metric)
    q = check_vectors(query_vectors, "query_vectors")
    s = check_vectors(support_vectors, "support_vectors")
    try:
        q, s = torch.broadcast_tensors(q, s)
    except RuntimeError as error:
        raise ValueError(
            f"query_vectors {tuple(q.shape)} and support_vectors "
            f"{tuple(s.shape)} do not broadcast"
        ) from error
    channels = q.shape[-1]
    if channels < 2:
        raise ValueError(
            f"channel_importance needs at least 2 channels, got N = {channels}: "
            "Eq. 2 divides by N - 1"
        )
    return _importance(q, s, metric).to(compute_dtype(q, s))


def _importance(q: Tensor, s: Tensor, metric: str) -> Tensor:
    """Eq. 2 / 5 on checked, broadcast vectors with N >= 2; float64 out.

    float64 costs nothing measurable here: the weight maths is O(B N) on
    pooled vectors, against O(B N h w) for the maps and the network's
    forward; on a GPU its cost is the number of kernels, not their width.
    """
    channels = q.shape[-1]
    # float64 data may overflow when squared; data from float32 or narrower
    # cannot (in float64): it skips the rescaling (fewer kernels on a GPU)
    wide = torch.float64 in (q.dtype, s.dtype)
    q, s = q.double(), s.double()
    if metric == "cosine":
        q, s = _unit(q, "query_vectors", wide), _unit(s, "support_vectors", wide)
    r = (q - s).abs()
    # Rescale by the largest difference (float64 data): omega is invariant to
    # it, and squares can no longer overflow. Normalising parallel vectors
    # leaves rounding noise (~1e-16) that Eq. 5 would amplify into arbitrary
    # scores: below PARALLEL_TOL the vectors count as equal (D = 0).
    largest = r.amax(dim=-1, keepdim=True)
    distinct = largest > (PARALLEL_TOL if metric == "cosine" else 0.0)
    d = (r / largest.clamp_min(TINY)) ** 2 if wide else r * r
    total = d.sum(dim=-1, keepdim=True)  # > 0 where distinct
    omega = (total - d) / ((channels - 1) * total.clamp_min(TINY))  # Eq. 2
    omega = torch.where(distinct, omega, 1.0 / channels)  # D = 0: all equal
    return omega.clamp(0.0, 1.0 / (channels - 1))


def minmax_normalize(weights: Tensor) -> Tensor:
    r"""Min-max normalisation over the last dimension, Eq. 4.

    .. math::
        \mathrm{Norm}(\omega_n) = \frac{\omega_n - \min_m \omega_m}
        {\max_m \omega_m - \min_m \omega_m}                     \qquad (4)

    The result lies in [0, 1], with minimum exactly 0 and maximum exactly 1
    whenever the input is not constant. A constant input (the paper leaves it
    undefined) gives all ones: every channel is equally important, so the map
    becomes the plain sum of the activations.

    Args:
        weights (Tensor): scores of shape (..., N), finite.

    Returns:
        *Tensor* of the same shape, float32 (float64 for float64 input).
    """
    w = check_vectors(weights, "weights").double()
    scale = w.abs().amax(dim=-1, keepdim=True)  # any finite input, no overflow
    return _minmax(w / scale.clamp_min(TINY)).to(compute_dtype(weights))


def _minmax(w: Tensor) -> Tensor:
    """Eq. 4 on finite float64 scores of moderate size (Eq. 2's lie in
    [0, 1/(N-1)]); a constant input gives all ones."""
    low = w.amin(dim=-1, keepdim=True)
    span = w.amax(dim=-1, keepdim=True) - low
    return torch.where(span > 0, (w - low) / span.clamp_min(TINY), 1.0)


def weight_spread(
    normalized_weights: Tensor, thresholds: Sequence[float] = (0.5, 0.9)
) -> Dict[float, Tensor]:
    r"""How many channels get a large normalised weight.

    On wide networks (hundreds or thousands of channels) a few very dissimilar
    channels set the scale of Eq. 4, and most channels end up with Norm(ω)
    close to 1: the SFAM map then approaches the plain sum of the activations
    and moves little when the support changes. This diagnostic makes that
    visible.

    Args:
        normalized_weights (Tensor): Norm(ω), shape (..., N), e.g. the query
                    weights from :meth:`LayerSFAM.channel_weights`.
        thresholds (sequence of float, optional): thresholds t.
                    Default: (0.5, 0.9)

    Returns:
        *dict[float, Tensor]*: for each threshold t, the fraction of channels
        with Norm(ω) > t, of shape (...).
    """
    w = check_vectors(normalized_weights, "normalized_weights")
    return {float(t): (w > t).to(torch.float32).mean(dim=-1) for t in thresholds}


def sfam_weights(pair: PooledPair, metric: str = "euclidean") -> Tuple[Tensor, Tensor]:
    r"""SFAM's weight rule: Norm(ω) for the query and, unchanged, for every shot.

    ``pair.query`` (..., N) and ``pair.shots`` (..., K, N), leading dims
    broadcasting -> query weights (..., N) and shot weights (..., 1, N).

    With a contrast support (``pair.contrast_shots`` (..., K', N),
    :math:`V^{S'}` their mean) the Eq. 2 / 5 scores are subtracted before
    normalising, and the difference is scaled by its largest magnitude
    (Eq. 4's min-max would move the zero):
    :math:`\Delta_n = \omega_n(Q, S) - \omega_n(Q, S')`,
    weights :math:`\Delta_n / \max_m |\Delta_m|` in [-1, 1], all zeros when
    no channel tells S from S' (:math:`\max|\Delta| (N-1) \le 10^{-12}`).
    Computed in float64.
    """
    query_vectors, shot_vectors = pair.query, pair.shots
    contrast_shots = pair.contrast_shots
    support_vectors = shot_vectors.mean(dim=-2)  # Eq. 1
    if contrast_shots is None:
        if query_vectors.shape[-1] < 2:
            channel_importance(query_vectors, support_vectors, metric)  # raises
        # Eq. 4 of Eq. 2 (Euclidean) or Eq. 5 (cosine); the engine checked the
        # vectors (finite, shapes), so the checked public functions are skipped
        wide = torch.float64 in (query_vectors.dtype, shot_vectors.dtype)
        dtype = torch.float64 if wide else torch.float32  # float32 or wider
        weights = _minmax(_importance(query_vectors, support_vectors, metric))
        weights = weights.to(dtype)
        return weights, weights.unsqueeze(-2)
    dtype = compute_dtype(query_vectors, shot_vectors, contrast_shots)
    query, contrast = query_vectors.double(), contrast_shots.double().mean(dim=-2)
    delta = channel_importance(  # Eq. 2 / 5 for S minus Eq. 2 / 5 for S'
        query, support_vectors.double(), metric
    ) - channel_importance(query, contrast, metric)
    scale = delta.abs().amax(dim=-1, keepdim=True)
    distinct = scale * (delta.shape[-1] - 1) > CONTRAST_TOL
    weights = torch.where(distinct, delta / torch.where(distinct, scale, 1.0), 0.0).to(
        dtype
    )
    return weights, weights.unsqueeze(-2)
