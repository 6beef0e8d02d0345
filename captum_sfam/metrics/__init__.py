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
  similarity as the score.
- :func:`sanity_check` (Adebayo et al., NeurIPS 2018; SFAM paper 4.4):
  cascading randomisation from the top layer down, Spearman rank correlation
  with the original map at each step.
- :func:`recall_at_k`, :func:`nearest_neighbours`: retrieval on embeddings.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the map's frame, half-open
(``x1``, ``y1`` excluded). Maps are (H, W) tensors at the image's resolution
(upsample layer maps with ``LayerAttribution.interpolate(..., "bilinear")``).
"""

from .localization import (
    Box,
    box_from_map,
    box_iou,
    localization,
    normalize_map,
    pointing_game,
)
from .pairs import deletion_insertion, pair_specificity
from .retrieval import nearest_neighbours, recall_at_k
from .sanity import sanity_check, spearman

__all__ = [
    "Box",
    "box_from_map",
    "box_iou",
    "deletion_insertion",
    "localization",
    "nearest_neighbours",
    "normalize_map",
    "pair_specificity",
    "pointing_game",
    "recall_at_k",
    "sanity_check",
    "spearman",
]
