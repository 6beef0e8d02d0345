"""captum-sfam: SFAM and friends, visual explanations for metric-learning models.

Captum attributions that explain a *pair* (a query against a K-shot support),
and an adapter that lets every Captum method explain similarity models.
"""

from ._utils.attribution import PairAttribution, PairFeatures
from .methods import (
    REGISTRY,
    LayerCGRAM,
    LayerDecomposition,
    LayerGradFAM,
    LayerRAM,
    LayerSFAM,
    LayerSimilarityGradCam,
)
from .methods.sfam import (
    channel_importance,
    minmax_normalize,
    weight_spread,
)
from .similarity import SimilarityTarget
from .methods.similarity_grad_cam import similarity_gradients
from .transforms import tokens_to_grid

__version__ = "0.1.0"

__all__ = [
    "LayerCGRAM",
    "LayerDecomposition",
    "LayerGradFAM",
    "LayerRAM",
    "LayerSFAM",
    "LayerSimilarityGradCam",
    "PairAttribution",
    "PairFeatures",
    "REGISTRY",
    "SimilarityTarget",
    "channel_importance",
    "minmax_normalize",
    "similarity_gradients",
    "tokens_to_grid",
    "weight_spread",
]
