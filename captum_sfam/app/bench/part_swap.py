r"""The part-swap setting: every method scored on :mod:`captum_sfam.demo.part_swap`.

For each kept triple (probe p, mate m, non-mate n, twin, edited-part mask)
every method's map of the probe is scored: plain maps explain p against m,
"(contrast)" maps explain p against m with n as the contrast. Measures:

- ``pointing``: the map's arg-max (the first in raster order) lies in the
  mask (:func:`pointing_in_mask`);
- ``mass``: the share of the map's positive mass inside the mask
  (:func:`mass_in_mask`; a map with no positive mass scores 0);
- ``flip``: XFR's curve (``classified_as_inpainted_twin``): for each share
  q of :data:`GRID`, the map's top q of pixels are taken from the twin into
  the probe; the smallest q at which the blend is decided the non-mate's,
  :math:`s(b, n) > s(b, m)` (:func:`flip_share`; lower is better; at
  q = 1 the blend is the twin, which flips by the game's construction).
  Its mean over triples is the area above the curve of "share of triples
  flipped" against q.

Rows: the family (plain and contrast), Captum's LayerGradCam and
IntegratedGradients through :class:`~captum_sfam.SimilarityTarget` (with
``contrast_support`` for the contrast rows), pytorch-grad-cam's ``GradCAM``
with a similarity (or similarity-difference) target (the ``bench`` extra),
a seeded uniform random map ("chance") and the mask itself ("ideal").
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch import Tensor
from torch.nn import Module

from ..._optional import require_extra
from ...demo.part_swap import Game, Triple, photo_game, shapes_game
from ...metrics.localization import _map2d
from ...similarity import SimilarityTarget, embed, paired_similarity
from .explainers import CONTRAST, contrast_explainers, explainers

#: the shares of pixels taken from the twin, in order
GRID = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25,
        0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # fmt: skip
#: blends embedded per forward pass while scanning the grid
CHUNK = 5
#: the rows that are not methods
CHANCE, IDEAL = "chance (random map)", "ideal (the mask)"
#: (probe, mate, non-mate) -> (H, W) map
MapFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def pointing_in_mask(saliency: Tensor, mask: Tensor) -> bool:
    r"""Whether the map's arg-max (the first in raster order, as
    :func:`~captum_sfam.metrics.pointing_game`) lies in ``mask`` (H, W)."""
    m = _map2d(saliency)
    return bool(mask.reshape(-1)[int(torch.argmax(m))])


def mass_in_mask(saliency: Tensor, mask: Tensor) -> float:
    r""":math:`\sum_{x \in M} \max(a_x, 0) / \sum_x \max(a_x, 0)`, 0 when the
    map has no positive mass."""
    m = _map2d(saliency).clamp(min=0).double()
    total = float(m.sum())
    return float(m[mask].sum()) / total if total > 0 else 0.0


def ranking(saliency: Tensor) -> Tensor:
    """Pixel indices, most salient first; ties in raster order (stable)."""
    m = _map2d(saliency).reshape(-1)
    return torch.sort(m, descending=True, stable=True).indices


def flip_share(
    model: Module, metric: str, triple: Triple, saliency: Tensor,
    grid: Sequence[float] = GRID, chunk: int = CHUNK,
) -> float:  # fmt: skip
    r"""The smallest share q of :data:`GRID` at which the probe with the map's
    top q of pixels taken from the twin is decided the non-mate's,
    :math:`s(b, n) > s(b, m)`; 1.0 if none (the twin itself flips by the
    game's construction). The grid is scanned in chunks, stopping at the
    first flip.

    Args:
        model (Module): the embedding model.
        metric (str): its metric.
        triple (Triple): the game's triple.
        saliency (Tensor): the (H, W) map of the probe.
        grid (sequence of float): increasing shares in (0, 1]. Default: GRID
        chunk (int): blends per forward pass. Default: 5

    Returns:
        the share, a float in (0, 1].
    """
    probe, twin = triple.probe[0], triple.twin[0]
    order = ranking(saliency)
    pixels = order.numel()
    refs = embed(model, torch.cat([triple.mate, triple.non_mate]))
    for start in range(0, len(grid), chunk):
        shares = grid[start : start + chunk]
        blends = []
        for q in shares:
            chosen = torch.zeros(pixels, dtype=torch.bool)
            chosen[order[: int(round(q * pixels))]] = True
            blends.append(torch.where(chosen.reshape(probe.shape[-2:]), twin, probe))
        emb = embed(model, torch.stack(blends))
        to_mate = paired_similarity(emb, refs[0:1].expand_as(emb), metric)
        to_non_mate = paired_similarity(emb, refs[1:2].expand_as(emb), metric)
        flipped = (to_non_mate > to_mate).tolist()
        if any(flipped):
            return float(shares[flipped.index(True)])
    return 1.0


class SimilarityScore:
    """pytorch-grad-cam target: the similarity of the output to ``ref`` (minus
    that to ``against`` when given)."""

    def __init__(self, metric: str, ref: Tensor, against: Optional[Tensor]) -> None:
        self.metric, self.ref, self.against = metric, ref, against

    def __call__(self, output: Tensor) -> Tensor:
        out = output.reshape(1, -1)
        score = paired_similarity(out, self.ref, self.metric)
        if self.against is not None:
            score = score - paired_similarity(out, self.against, self.metric)
        return score[0]


def peer_maps(
    model: Module, layer: Module, metric: str, ig_steps: int
) -> Dict[str, MapFn]:
    r"""pytorch-grad-cam's GradCAM (plain and contrast) and Captum's
    IntegratedGradients against the contrast, as (probe, mate, non-mate) ->
    (H, W) maps."""
    require_extra("pytorch_grad_cam", "grad-cam", extra="bench")
    from pytorch_grad_cam import GradCAM

    def grad_cam(contrast: bool) -> MapFn:
        def run(probe: Tensor, mate: Tensor, non_mate: Tensor) -> Tensor:
            refs = embed(model, torch.cat([mate, non_mate]))
            target = SimilarityScore(metric, refs[0:1], refs[1:2] if contrast else None)
            params = list(model.parameters())
            grads = [p.grad for p in params]  # GradCAM's backward fills .grad
            try:
                with GradCAM(model=model, target_layers=[layer]) as cam:
                    out = cam(input_tensor=probe.clone(), targets=[target])
            finally:
                for p, g in zip(params, grads):
                    p.grad = g
            return torch.from_numpy(np.ascontiguousarray(out[0])).float()

        return run

    def ig_contrast(probe: Tensor, mate: Tensor, non_mate: Tensor) -> Tensor:
        target = SimilarityTarget.from_support(
            model, mate[None], metric=metric, contrast_support=non_mate[None]
        )
        attr = IntegratedGradients(target).attribute(
            probe, target=0, n_steps=ig_steps, internal_batch_size=ig_steps
        )
        return attr.detach()[0].abs().sum(0)

    return {
        "pytorch-grad-cam GradCAM": grad_cam(False),
        "pytorch-grad-cam GradCAM" + CONTRAST: grad_cam(True),
        "Captum IntegratedGradients" + CONTRAST: ig_contrast,
    }


def all_maps(
    model: Module, layer: Module, metric: str, ig_steps: int
) -> Dict[str, MapFn]:
    """Every row's map function, in table order (chance and ideal added by
    :func:`score_game`)."""
    plain = explainers(model, layer, metric, ig_steps)
    contrastive = contrast_explainers(model, layer, metric)
    peers = peer_maps(model, layer, metric, ig_steps)
    out: Dict[str, MapFn] = {}
    for name, fn in plain.items():
        out[name] = lambda p, m, n, fn=fn: fn(p, m)
        if name + CONTRAST in contrastive:
            out[name + CONTRAST] = contrastive[name + CONTRAST]
        if name + CONTRAST in peers:
            out[name + CONTRAST] = peers[name + CONTRAST]
    for name in ("pytorch-grad-cam GradCAM", "pytorch-grad-cam GradCAM" + CONTRAST):
        out[name] = peers[name]
    return out


def score_game(
    model: Module, layer: Module, game: Game, maps: Dict[str, MapFn], seed: int,
    progress: Optional[Callable[..., object]] = None,
) -> Dict[str, Dict[str, Optional[float]]]:  # fmt: skip
    r"""Pointing, mass and flip share of every map on every kept triple.

    Returns:
        row -> ``pointing``, ``mass``, ``flip`` (means; None without
        triples) and ``n``; the rows of ``maps``, then :data:`CHANCE` (a
        uniform random map drawn from ``seed``) and :data:`IDEAL`.
    """
    gen = torch.Generator().manual_seed(seed)
    rows: Dict[str, List[Tuple[float, float, float]]] = {}
    for triple in game.triples:
        shape = triple.probe.shape[-2:]
        made = {name: fn(triple.probe, triple.mate, triple.non_mate)
                for name, fn in maps.items()}  # fmt: skip
        made[CHANCE] = torch.rand(shape, generator=gen)
        made[IDEAL] = triple.mask.float()
        for name, saliency in made.items():
            flip = flip_share(model, game.metric, triple, saliency)
            rows.setdefault(name, []).append(
                (pointing_in_mask(saliency, triple.mask),
                 mass_in_mask(saliency, triple.mask), flip)
            )  # fmt: skip
        if progress is not None:
            progress()
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for name, values in rows.items():
        means = np.mean(np.array(values, dtype=np.float64), axis=0).tolist()
        out[name] = {"pointing": means[0], "mass": means[1], "flip": means[2],
                     "n": len(values)}  # fmt: skip
    return out


def _mean(values: List[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def part_swap_setting(
    args: argparse.Namespace,
) -> List[Tuple[str, str, Dict[str, object], Dict[str, Dict[str, Optional[float]]]]]:
    r"""Runs the game for the two demo models and the photo model.

    Args:
        args (argparse.Namespace): ``swap_pairs`` (triples per demo model),
                    ``swap_photos`` (photo triples), ``seed``, ``train_steps``,
                    ``no_progress``.

    Returns:
        (key, title, info, summary) per model. IntegratedGradients takes 32
        steps on the 64 px models and 8 on the photos (its 2 x 8 passes of
        224 px images are most of a photo triple's time).
    """
    from ...demo.pretrained import efficientnet_lite0
    from ...demo.trained import cosine_embedder, protonet

    require_extra("tqdm", "tqdm")
    from tqdm.auto import tqdm

    proto = protonet(steps=args.train_steps)
    cosine = cosine_embedder(steps=args.train_steps)
    photo = efficientnet_lite0(embedding=True)
    runs = [
        ("protonet", proto, proto.layer, "euclidean", 32,
         lambda: shapes_game(proto, "euclidean", args.swap_pairs, args.seed),
         "Euclidean ProtoNet (64 px shapes)"),
        ("cosine", cosine, cosine.layer, "cosine", 32,
         lambda: shapes_game(cosine, "cosine", args.swap_pairs, args.seed),
         "cosine multi-similarity model (64 px shapes)"),
        ("photo", photo, photo.bn2, "cosine", 8,
         lambda: photo_game(photo, args.swap_photos, args.seed),
         "ImageNet EfficientNet-Lite0 (224 px photos)"),
    ]  # fmt: skip
    out = []
    for key, model, layer, metric, ig_steps, make, label in runs:
        game = make()
        bar = tqdm(total=len(game.triples), desc=f"(e) part-swap {key}",
                   disable=args.no_progress)  # fmt: skip
        maps = all_maps(model, layer, metric, ig_steps)
        summary = score_game(model, layer, game, maps, args.seed, bar.update)
        bar.close()
        info = {"kept": len(game.triples), "drawn": game.drawn,
                "threshold": game.threshold, "metric": metric,
                "steps": [t.step for t in game.triples],
                "mask_share": _mean([float(t.mask.float().mean())
                                     for t in game.triples])}  # fmt: skip
        title = (
            f"(e) part-swap game, {label}: {len(game.triples)} triples kept of "
            f"{game.drawn} drawn (threshold t = {game.threshold:.3f}; edited part "
            f"{100 * info['mask_share']:.1f} % of the image on average). Point / "
            "Mass: in the edited part (higher is better); Flip %: share of the "
            "probe's pixels taken from the twin, most salient first, before the "
            "decision flips (lower is better)"
        )
        out.append((key, title, info, summary))
    return out


__all__ = [
    "CHANCE",
    "GRID",
    "IDEAL",
    "SimilarityScore",
    "all_maps",
    "flip_share",
    "mass_in_mask",
    "part_swap_setting",
    "peer_maps",
    "pointing_in_mask",
    "ranking",
    "score_game",
]
