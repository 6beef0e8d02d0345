"""captum-sfam: SFAM and friends, visual explanations for metric-learning models.

Captum attributions that explain a *pair* (a query against a K-shot support),
and an adapter that lets every Captum method explain similarity models.
"""

from ._engine import PairAttribution, PairFeatures
from .sfam import (
    LayerSFAM,
    channel_importance,
    minmax_normalize,
    weight_spread,
)
from .similarity import SimilarityTarget

__version__ = "0.1.0"

__all__ = [
    "LayerSFAM",
    "PairAttribution",
    "PairFeatures",
    "SimilarityTarget",
    "channel_importance",
    "minmax_normalize",
    "weight_spread",
]
