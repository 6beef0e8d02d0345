"""captum-sfam: SFAM and friends, visual explanations for metric-learning models.

Captum attributions that explain a *pair* (a query against a K-shot support),
and an adapter that lets every Captum method explain similarity models.
The core needs torch and captum only; evaluation (``captum_sfam.metrics``),
the command line (``captum_sfam.app``) and demo data and models
(``captum_sfam.demo``) are imported on demand.
"""

from ._utils.attribution import PairAttribution
from ._utils.features import PairFeatures, PooledPair
from ._utils.gradient import GradientPairAttribution
from .methods import (
    REGISTRY,
    LayerCGRAM,
    LayerDecomposition,
    LayerGradFAM,
    LayerRAM,
    LayerSFAM,
    LayerSimilarityGradCam,
)
from .methods.sfam import channel_importance, minmax_normalize, weight_spread
from .methods.similarity_grad_cam import similarity_gradients
from .similarity import SimilarityTarget
from .transforms import interpolate, tokens_to_grid

__version__ = "0.1.0"

__all__ = [
    "GradientPairAttribution",
    "LayerCGRAM",
    "LayerDecomposition",
    "LayerGradFAM",
    "LayerRAM",
    "LayerSFAM",
    "LayerSimilarityGradCam",
    "PairAttribution",
    "PairFeatures",
    "PooledPair",
    "REGISTRY",
    "SimilarityTarget",
    "channel_importance",
    "minmax_normalize",
    "similarity_gradients",
    "interpolate",
    "tokens_to_grid",
    "weight_spread",
]
