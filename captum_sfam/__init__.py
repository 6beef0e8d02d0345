"""captum-sfam: SFAM and friends, visual explanations for metric-learning models.

Captum attributions that explain a *pair* (a query against a K-shot support),
and an adapter that lets every Captum method explain similarity models.
The pure maths lives in ``captum_sfam.functional``. The core needs torch
and captum only; evaluation (``captum_sfam.metrics``),
the command line (``captum_sfam.app``) and demo data and models
(``captum_sfam.demo``) are imported on demand.
"""

from .functional import (
    PooledPair,
    channel_importance,
    minmax_normalize,
    similarity_gradients,
    weight_spread,
)
from .methods import *  # noqa: F403  the family, REGISTRY, READINGS, supports_contrast
from .methods import __all__ as _FAMILY
from .similarity import SimilarityTarget
from .transforms import interpolate, tokens_to_grid

__version__ = "0.1.0"

__all__ = [
    *_FAMILY,
    "PooledPair",
    "SimilarityTarget",
    "channel_importance",
    "interpolate",
    "minmax_normalize",
    "similarity_gradients",
    "tokens_to_grid",
    "weight_spread",
]
