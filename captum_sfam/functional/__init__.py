r"""The pure maths of captum-sfam: functions on tensors, no model, no state.

As in torchmetrics, the classes (:mod:`captum_sfam.methods`,
:class:`~captum_sfam.SimilarityTarget`) are thin wrappers around these.
"""

from .similarity import (
    COSINE_EPS,
    MetricFunc,
    exact_top_k,
    paired_similarity,
    similarity_matrix,
)

__all__ = [
    "COSINE_EPS",
    "MetricFunc",
    "exact_top_k",
    "paired_similarity",
    "similarity_matrix",
]
