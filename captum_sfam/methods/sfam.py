r"""SFAM: Similar Feature Activation Map (Liao et al., arXiv 2506.01636)."""

from __future__ import annotations

from .._engine.forward import ForwardPairAttribution
from ..functional.sfam import (
    channel_importance,
    minmax_normalize,
    sfam_weights,
    weight_spread,
)


class LayerSFAM(ForwardPairAttribution):
    r"""
    Similar Feature Activation Map (SFAM) for metric-learning models.

    SFAM explains why a metric-learning model finds a query similar to a
    support (one image, or the K shots of a class). It needs the activations
    of one layer only, no gradient and no classifier. With ``A`` the
    activations of the chosen layer (N channels) and ``p`` a pooling,
    :math:`V^Q = p(A_Q)` and :math:`V^S = \frac1K\sum_k p(A_{S_k})` (Eq. 1):

    1. channel-wise contribution importance scores (Eq. 2, cosine: Eq. 5),
       :math:`\omega_n = (D - d_n)/((N-1)D)` with
       :math:`d_n = (v^Q_n - v^S_n)^2`, :math:`D=\sum_n d_n`: channels on
       which query and support agree matter most;
    2. min-max normalisation Norm (Eq. 4);
    3. the map :math:`L = \sum_n \mathrm{Norm}(\omega)_n A^n` (Eq. 3 / Eq. 6)
       at the layer's resolution, for the query and, with the same weights,
       for each support image.

    Upsample with ``LayerAttribution.interpolate(attr, size, "bilinear")`` as
    the paper does. Weights are computed in float64 and maps in float32
    (float64 for float64 activations), whatever the activations' dtype.

    SFAM's weights are never negative, so its maps are non-negative wherever
    the activations are (post-ReLU layers). Degenerate pairs: see
    :func:`channel_importance` (N = 1 and a zero vector with cosine raise
    ``ValueError``; identical vectors give the plain activation sum).

    Caveats. SFAM weights depend only on :math:`|v^Q_n - v^S_n|`; on wide
    networks most channels get Norm(ω) close to 1 (see :func:`weight_spread`),
    so the map approaches the plain activation sum. The Euclidean variant is a
    surrogate of the decision of models that do not compare pooled vectors
    (e.g. FRN reconstructs feature maps). Explanations run in the model's
    current mode (call ``model.eval()`` yourself); buffers such as BatchNorm
    statistics are restored after the forward pass.

    Contrast (``attribute(..., contrast=S')``: why does the query match S
    rather than S'?). The Eq. 2 / 5 scores against S' are subtracted from
    those against S *before* normalising, and the difference is scaled by
    its largest magnitude instead of Eq. 4's min-max (which would move the
    zero and give every channel a positive weight):

    .. math::
        \Delta_n = \omega_n(Q, S) - \omega_n(Q, S'), \qquad
        w_n = \Delta_n / \max_m |\Delta_m| \in [-1, 1],
        \qquad L = \sum_n w_n A^n,

    all zeros when no channel tells S from S'; the shots' maps use the same
    weights. Swapping S and S' negates the map. The reading was chosen by
    measurement (docs/members/sfam.md, "Measured").

    More details: Liao et al., "Visual explanation via similar feature
    activation for metric learning", https://arxiv.org/abs/2506.01636
    """

    weight_rule = staticmethod(sfam_weights)


__all__ = [
    "LayerSFAM",
    "channel_importance",
    "minmax_normalize",
    "sfam_weights",
    "weight_spread",
]
