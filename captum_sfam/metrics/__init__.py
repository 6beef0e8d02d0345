r"""Evaluation protocols for pair explanations (needs the ``eval`` extra: scipy).

- :func:`localization`: the SFAM paper's protocol (CAM, Zhou et al. 2016;
  clovaai/wsolevaluation): min-max normalise the upsampled map, threshold at
  0.2, box of the largest connected component, IoU with the ground-truth box;
  mean IoU and accuracy at IoU >= 0.5 over the correctly predicted samples.
- :func:`pointing_game` (Zhang et al., ECCV 2016): is the arg-max inside the
  ground-truth box (with a tolerance in pixels, 15 in TorchRay)?
- :func:`pair_specificity`: on a query holding two objects, explained once
  against a support of each, the share of each map's positive mass on the
  object that matches its support; a pair-agnostic map scores 0.5. Also how
  much the map moves when the support is swapped.
- :func:`deletion_insertion` (RISE, Petsiuk et al., BMVC 2018) with the pair's
  similarity as the score, and its pair forms:
  :func:`conditional_deletion_insertion` (perturb the query, keep the
  support), :func:`simultaneous_deletion_insertion` (perturb both, each by its
  own map) and :func:`contrastive_deletion_insertion` (the margin
  :math:`s(q, S) - s(q, S')` as the query is perturbed);
  :func:`pair_similarity_fn` builds their pair score from a model.
- :func:`correspondence_pck` (``correspondence.py``): point-to-point maps
  scored on pairs of known geometry (:func:`flip_pair`, :func:`crop_pair`,
  :func:`rescale_pair`; :func:`true_cells` gives each query cell's support
  cell).
- ``captum_sfam.metrics.quantus``: :class:`~.quantus.SupportSimilarityModel`
  and :func:`~.quantus.explain`, so that Quantus scores pair attributions.
- :func:`sanity_check` (Adebayo et al., NeurIPS 2018; SFAM paper 4.4):
  cascading randomisation from the top layer down, Spearman rank correlation
  with the original map at each step.
- :func:`recall_at_k`, :func:`nearest_neighbours`: retrieval on embeddings.
- :func:`input_resolution` and :func:`explanation_func`
  (``captum_metrics.py``): layer maps for Captum's ``infidelity`` and
  ``sensitivity_max``.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the map's frame, half-open
(``x1``, ``y1`` excluded). Maps are (H, W) tensors at the image's resolution
(upsample layer maps with ``LayerAttribution.interpolate(..., "bilinear")``).
"""

from .captum_metrics import explanation_func, input_resolution
from .correspondence import (
    KnownPair,
    correspondence_pck,
    crop_pair,
    flip_pair,
    known_geometry_pair,
    rescale_pair,
    true_cells,
)
from .localization import (
    Box,
    box_from_map,
    box_iou,
    localization,
    normalize_map,
    pair_specificity,
    pointing_game,
)
from .pairs import (
    conditional_deletion_insertion,
    contrastive_deletion_insertion,
    deletion_insertion,
    pair_similarity_fn,
    simultaneous_deletion_insertion,
)
from .retrieval import nearest_neighbours, recall_at_k
from .sanity import sanity_check, spearman

__all__ = [
    "Box",
    "KnownPair",
    "box_from_map",
    "box_iou",
    "conditional_deletion_insertion",
    "contrastive_deletion_insertion",
    "correspondence_pck",
    "crop_pair",
    "deletion_insertion",
    "explanation_func",
    "flip_pair",
    "input_resolution",
    "known_geometry_pair",
    "localization",
    "nearest_neighbours",
    "normalize_map",
    "pair_similarity_fn",
    "pair_specificity",
    "pointing_game",
    "recall_at_k",
    "rescale_pair",
    "sanity_check",
    "simultaneous_deletion_insertion",
    "spearman",
    "true_cells",
]
