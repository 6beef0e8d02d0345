r"""The pure maths of captum-sfam: functions on tensors, no model, no state.

As in torchmetrics, the classes (:mod:`captum_sfam.methods`,
:class:`~captum_sfam.SimilarityTarget`) are thin wrappers around these: each
forward-only member's ``weight_rule`` maps a :class:`PooledPair` to channel
weights, each gradient member's ``pair_score`` maps embeddings to scores.
"""

from .decomposition import (
    decomposition_maps,
    decomposition_weights,
    point_to_point_scores,
    position_embeddings,
)
from .pair import PooledPair
from .ram import ram_weights
from .sfam import channel_importance, minmax_normalize, sfam_weights, weight_spread
from .similarity import (
    COSINE_EPS,
    MetricFunc,
    exact_top_k,
    half_squared_norms,
    paired_similarity,
    prototype_similarity,
    similarity_matrix,
)
from .similarity_grad_cam import similarity_grad_cam_weights, similarity_gradients

__all__ = [
    "COSINE_EPS",
    "MetricFunc",
    "PooledPair",
    "channel_importance",
    "decomposition_maps",
    "decomposition_weights",
    "exact_top_k",
    "half_squared_norms",
    "minmax_normalize",
    "paired_similarity",
    "point_to_point_scores",
    "position_embeddings",
    "prototype_similarity",
    "ram_weights",
    "sfam_weights",
    "similarity_grad_cam_weights",
    "similarity_gradients",
    "similarity_matrix",
    "weight_spread",
]
