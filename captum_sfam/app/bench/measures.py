r"""The benchmark's quality measures, per method, over pairs and scenes.

:func:`evaluate` scores every method's maps on decided pairs (localisation,
pointing game, deletion / insertion of the similarity and of the margin over
the contrast) and on two-object scenes (pair specificity and shift);
:func:`correspondence_setting` scores every forward-only member's
``point_to_point`` by PCK on pairs of known geometry. Both return one row of
means (and counts, ``<column>_n``) per method.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.nn import Module

from ..._optional import require_extra
from ...methods import READINGS, REGISTRY
from ...metrics import (
    box_from_map,
    box_iou,
    deletion_insertion,
    pair_specificity,
    pointing_game,
)
from ...metrics.correspondence import (
    TRANSFORMS,
    correspondence_pck,
    known_geometry_pair,
    true_cells,
)
from ...metrics.localization import BOX_THRESHOLD
from ...similarity import embed, paired_similarity, prototypes, similarity_matrix
from .explainers import contrast_explainers, explainers

#: a decided pair: query (1, C, H, W), support (K, C, H, W), contrast
#: (K', C, H, W), the query's box, whether the model decided it correctly
Pair = Tuple[Tensor, Tensor, Tensor, Tuple, bool]
#: a two-object scene (1, C, H, W), the supports of objects A and B, their boxes
Scene = Tuple[Tensor, Tensor, Tensor, Tuple, Tuple]
Summary = Dict[str, Dict[str, Optional[float]]]
#: the measures of :func:`evaluate`, and ``pck``
COLUMNS = [
    "iou",
    "acc50",
    "pointing",
    "specificity",
    "shift",
    "deletion",
    "insertion",
    "c_deletion",
    "c_insertion",
    "pck",
]


def _score_fn(
    model: Module, support: Tensor, metric: str
) -> Callable[[Tensor], Tensor]:
    ref = prototypes(model, support[None])

    def score(batch: Tensor) -> Tensor:
        emb = embed(model, batch)
        return paired_similarity(emb, ref.expand_as(emb), metric)

    return score


def margin_fn(
    model: Module, support: Tensor, contrast: Tensor, metric: str
) -> Callable[[Tensor], Tensor]:
    r"""Images (B, C, H, W) -> :math:`s(q, S) - s(q, S')` (B,), both prototypes
    embedded once: :func:`~captum_sfam.metrics.deletion_insertion` with it is
    :func:`~captum_sfam.metrics.contrastive_deletion_insertion`.

    Args:
        model (Module): the embedding model.
        support (Tensor): the support S, (K, C, H, W).
        contrast (Tensor): the contrast S', (K', C, H, W).
        metric (str): ``"cosine"`` or ``"euclidean"``.

    Returns:
        the margin function.
    """
    refs = prototypes(model, torch.stack([support, contrast]))

    def score(batch: Tensor) -> Tensor:
        emb = embed(model, batch)
        sims = similarity_matrix(emb, refs, metric)
        return sims[:, 0] - sims[:, 1]

    return score


class Tally:
    """Per-method lists of metric values (one list per :data:`COLUMNS` entry)."""

    def __init__(self, methods: Iterable[str]) -> None:
        self.values = {m: {c: [] for c in COLUMNS} for m in methods}

    def add(self, method: str, column: str, value: float) -> None:
        self.values[method][column].append(float(value))

    def summary(self) -> Summary:
        """Method -> column -> mean (None without values), and ``<column>_n``."""
        out = {}
        for method, cols in self.values.items():
            row = {}
            for c, vals in cols.items():
                row[c] = float(np.mean(vals)) if vals else None
                row[c + "_n"] = len(vals)
            out[method] = row
        return out


def _score_pair(
    tally: Tally,
    model: Module,
    metric: str,
    pair: Pair,
    maps: Dict[str, Tensor],
    steps: int,
) -> None:
    """Adds one decided pair's measures of every method's map to ``tally``."""
    query, support, contrast, box, correct = pair
    score = _score_fn(model, support, metric)
    margin = margin_fn(model, support, contrast, metric)
    for name, saliency in maps.items():
        if correct:
            iou = box_iou(box_from_map(saliency, BOX_THRESHOLD), box)
            tally.add(name, "iou", iou)
            tally.add(name, "acc50", iou >= 0.5)
            tally.add(name, "pointing", pointing_game(saliency, box))
        curves = deletion_insertion(score, query, saliency, steps=steps)
        tally.add(name, "deletion", curves["deletion_auc"])
        tally.add(name, "insertion", curves["insertion_auc"])
        curves = deletion_insertion(margin, query, saliency, steps=steps)
        tally.add(name, "c_deletion", curves["deletion_auc"])
        tally.add(name, "c_insertion", curves["insertion_auc"])


def evaluate(
    model: Module,
    layer: Module,
    metric: str,
    pairs: Sequence[Pair],
    scenes: Sequence[Scene],
    steps: int,
    progress: bool,
    label: str,
    ig_steps: int = 32,
) -> Summary:
    r"""Runs every method on decided pairs and on two-object scenes.

    Plain maps explain the query against the support; "(contrast)" rows
    explain it against the support relative to the contrast (on scenes: A
    against B, and B against A). Localisation is measured on the correctly
    decided pairs only.

    Args:
        model (Module): the embedding model.
        layer (Module): the explained layer.
        metric (str): ``"cosine"`` or ``"euclidean"``.
        pairs: (query (1,C,H,W), support (K,C,H,W), contrast (K',C,H,W),
                    query box, correct).
        scenes: (scene (1,C,H,W), support of A, support of B, box A, box B).
        steps (int): deletion / insertion steps.
        progress (bool): show a tqdm bar.
        label (str): the bar's label.
        ig_steps (int): IntegratedGradients' steps. Default: 32

    Returns:
        method -> column -> mean (None without values), and ``<column>_n``.
    """
    require_extra("tqdm", "tqdm")
    from tqdm.auto import tqdm

    plain = explainers(model, layer, metric, ig_steps)
    contrastive = contrast_explainers(model, layer, metric)

    def maps(query: Tensor, support: Tensor, contrast: Tensor) -> Dict[str, Tensor]:
        out = {name: explain(query, support) for name, explain in plain.items()}
        for name, explain in contrastive.items():
            out[name] = explain(query, support, contrast)
        return out

    tally = Tally([*plain, *contrastive])
    bar = tqdm(total=len(pairs) + len(scenes), desc=label, disable=not progress)
    for pair in pairs:
        _score_pair(tally, model, metric, pair, maps(*pair[:3]), steps)
        bar.update(1)
    for scene, support_a, support_b, box_a, box_b in scenes:
        for_a = maps(scene, support_a, support_b)
        for_b = maps(scene, support_b, support_a)
        for name in for_a:
            spec = pair_specificity(for_a[name], for_b[name], box_a, box_b)
            tally.add(name, "specificity", spec["specificity"])
            tally.add(name, "shift", spec["shift"])
        bar.update(1)
    bar.close()
    return tally.summary()


def _pck_summary(rows: Dict[str, Dict[str, List[float]]]) -> Summary:
    """Per-transform means, their overall mean ``pck`` and count ``pck_n``."""
    out: Summary = {}
    for name, row in rows.items():
        summary: Dict[str, Optional[float]] = {
            t: float(np.mean(v)) if v else None for t, v in row.items()
        }
        every = [x for v in row.values() for x in v]
        summary["pck"] = float(np.mean(every)) if every else None
        summary["pck_n"] = len(every)
        out[name] = summary
    return out


def correspondence_setting(
    model: Module, layer: Module, photos: Sequence[Tensor]
) -> Summary:
    r"""(d) PCK at one cell of every forward-only member's ``point_to_point``.

    Each photo is paired with its mirrored, cropped and rescaled copy (the
    geometry known by construction); every cosine forward-only member is read
    in each of :data:`captum_sfam.methods.READINGS`, its default reading
    marked; a last "chance" row scores constant maps.

    Args:
        model (Module): the embedding model.
        layer (Module): the explained layer.
        photos (sequence of Tensor): (1, 3, H, W) images.

    Returns:
        row name -> transform -> mean PCK, ``pck`` (all transforms) and
        ``pck_n``.
    """
    pairs = [known_geometry_pair(photo, t) for photo in photos for t in TRANSFORMS]
    rows: Dict[str, Dict[str, List[float]]] = {}

    def add(name: str, transform: str, value: float) -> None:
        row = rows.setdefault(name, {t: [] for t in TRANSFORMS})
        row[transform].append(value)

    chance_done = set()
    for member in REGISTRY.values():
        if not member.forward_only or "cosine" not in member.supported_metrics:
            continue
        method = member.cls(model, layer, metric="cosine")
        default = method.correspondence_reading
        for reading in READINGS:
            name = member.display_name
            name += f" ({reading}{', default' if reading == default else ''})"
            for index, kp in enumerate(pairs):
                scores = method.point_to_point(kp.query, kp.support, reading=reading)
                cells = true_cells(kp, scores.shape[1:3], scores.shape[-2:])[None]
                add(name, kp.transform, correspondence_pck(scores, cells))
                if index not in chance_done:  # constant maps: ties shared
                    chance_done.add(index)
                    zeros = torch.zeros_like(scores)
                    add("chance", kp.transform, correspondence_pck(zeros, cells))
    rows["chance"] = rows.pop("chance", {t: [] for t in TRANSFORMS})  # last
    return _pck_summary(rows)


__all__ = [
    "COLUMNS",
    "Pair",
    "Scene",
    "Tally",
    "correspondence_setting",
    "evaluate",
    "margin_fn",
]
