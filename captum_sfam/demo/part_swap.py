r"""The part-swap game: ground truth for "why this match and not that one".

An offline version of XFR's inpainting game (Williford, May, Byrne, ECCV
2020; stresearch/xfr). A *probe* and its *mate* show the same class; the
*non-mate* is the mate with ONE part edited, and the *twin* is the probe with
the same part edited (XFR's inpainted probe). The edited part, in the probe's
pixels, is the ground truth of a map of the probe explaining "why the mate and
not the non-mate". The parts are defined in the object's (or the photo's)
own coordinates, so that they exist in both images.

The decision. With :math:`s` the model's similarity (cosine, or the negative
squared Euclidean distance) and :math:`t` the model's verification threshold
(:func:`verification_threshold`: the one that minimises false accepts plus
false rejects on genuine and impostor pairs of held-out images), a triple is
kept (XFR's per-model filter) when

1. the mate is accepted: :math:`s(p, m) \ge t`;
2. the non-mate is rejected: :math:`s(p, n) < t` (so :math:`s(p, m) > s(p, n)`
   by a margin that crosses the decision);
3. the twin is decided the non-mate's: :math:`s(\tilde p, n) > s(\tilde p, m)`
   (so that taking every edited pixel from the twin into the probe flips the
   decision, XFR's ``classified_as_inpainted_twin``);

and the edit is the first step of a growing schedule (:data:`SCHEDULE`, the
part's side relative to the object's box; :data:`PHOTO_SCHEDULE` for photos)
that meets 2 and 3. A probe for which no step does is dropped.

- :func:`shapes_game`: the synthetic scenes (:class:`~.synthetic.ShapesFewShot`
  test classes, 64 px): a corner block of the object, clipped to the shape,
  is given another class's colour and texture.
- :func:`photo_game`: scikit-image photos for the ImageNet EfficientNet-Lite0:
  a square of the photo is replaced by a patch of another photo; probe = the
  photo, mate = its second view (mirrored zoomed crop), both 224 px.

Everything is drawn from ``seed``. Pixels outside a triple's masks are
identical in the probe and the twin, and in the mate and the non-mate (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.nn import Module

from ..similarity import embed, paired_similarity, similarity_matrix
from .synthetic import COLOURS, ShapesFewShot, _background, _shape_mask, _texture

#: the synthetic part's side, as a fraction of the object's box, step by step
SCHEDULE = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: the photo part's side, as a fraction of the photo's shorter side
PHOTO_SCHEDULE = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
#: the scikit-image photos of the photo game, in order
PHOTOS = ("cat", "coffee", "astronaut", "rocket", "motorcycle_left")


@dataclass
class Triple:
    r"""One kept triple of the game.

    Attributes:
        probe (Tensor): (1, C, H, W) the probe p.
        mate (Tensor): (1, C, H, W) the mate m, same class as the probe.
        non_mate (Tensor): (1, C, H, W) the mate with one part edited, n.
        twin (Tensor): (1, C, H, W) the probe with the same part edited.
        mask (Tensor): (H, W) bool, the pixels where twin and probe differ
                    may lie (the ground truth, in the probe's frame).
        mate_mask (Tensor): (H, W) bool, the same part in the mate's frame.
        step (int): index of the edit in the schedule.
        scores (dict): ``mate``: s(p, m), ``non_mate``: s(p, n),
                    ``threshold``: t, ``twin_mate``: s(twin, m),
                    ``twin_non_mate``: s(twin, n).
        info (str): what was edited.
        earlier (tuple): the twins and non-mates of the schedule's earlier
                    steps, (S, C, H, W) each, none of which met the criterion.
    """

    probe: Tensor
    mate: Tensor
    non_mate: Tensor
    twin: Tensor
    mask: Tensor
    mate_mask: Tensor
    step: int
    scores: Dict[str, float] = field(default_factory=dict)
    info: str = ""
    earlier: Tuple[Tensor, Tensor] = (torch.empty(0), torch.empty(0))


@dataclass
class Game:
    """The kept triples, and how many candidates were drawn (XFR's filter)."""

    triples: List[Triple]
    drawn: int
    threshold: float
    metric: str


def similarity(model: Module, a: Tensor, b: Tensor, metric: str) -> Tensor:
    r"""(B,) similarities of images ``a`` (B, C, H, W) to images ``b`` (B or
    1, C, H, W): cosine or the negative squared Euclidean distance."""
    ea, eb = embed(model, a), embed(model, b)
    return paired_similarity(ea, eb.expand_as(ea), metric)


def verification_threshold(embeddings: Tensor, labels: Tensor, metric: str) -> float:
    r"""The threshold t that minimises false rejects of genuine pairs (same
    label, :math:`s < t`) plus false accepts of impostor pairs (:math:`s \ge
    t`), both as rates, over all pairs of ``embeddings`` (M, D); the midpoint
    between the two scores it falls between (the first best, scanning up).

    Args:
        embeddings (Tensor): (M, D) embeddings.
        labels (Tensor): (M,) labels; at least one genuine and one impostor
                    pair.
        metric (str): ``"cosine"`` or ``"euclidean"``.

    Returns:
        t, a float.
    """
    sims = similarity_matrix(embeddings, embeddings, metric).double()
    upper = torch.triu(torch.ones_like(sims, dtype=torch.bool), diagonal=1)
    same = labels[:, None] == labels[None, :]
    genuine, impostor = sims[upper & same], sims[upper & ~same]
    if genuine.numel() == 0 or impostor.numel() == 0:
        raise ValueError("labels must give at least one genuine and one impostor pair")
    values = torch.cat([genuine, impostor]).unique()  # sorted
    cuts = torch.cat([values[:1] - 1, (values[1:] + values[:-1]) / 2, values[-1:] + 1])
    frr = (genuine[None, :] < cuts[:, None]).double().mean(1)
    far = (impostor[None, :] >= cuts[:, None]).double().mean(1)
    return float(cuts[int(torch.argmin(frr + far))])


def decide(
    model: Module, metric: str, threshold: float, probe: Tensor, mate: Tensor,
    non_mates: Tensor, twins: Tensor,
) -> Tuple[bool, Optional[int], List[Dict[str, float]]]:  # fmt: skip
    r"""The game's criterion for the candidate edits of one probe, in one
    forward pass.

    Args:
        model, metric, threshold: the model, its metric and its t.
        probe, mate (Tensor): (1, C, H, W).
        non_mates, twins (Tensor): (S, C, H, W), edit by edit (the schedule).

    Returns:
        (the mate is accepted, :math:`s(p,m) \ge t`; the first edit that
        flips, :math:`s(p,n) < t` and :math:`s(\tilde p,n) > s(\tilde p,m)`,
        or None; the scores of every edit).
    """
    steps = non_mates.shape[0]
    emb = embed(model, torch.cat([probe, mate, non_mates, twins]))
    p, m, n, tw = emb[0:1], emb[1:2], emb[2 : 2 + steps], emb[2 + steps :]
    mate_score = float(paired_similarity(p, m, metric)[0])
    non_mate = paired_similarity(p.expand_as(n), n, metric).tolist()
    twin_mate = paired_similarity(tw, m.expand_as(tw), metric).tolist()
    twin_non_mate = paired_similarity(tw, n, metric).tolist()
    scores = [
        {"mate": mate_score, "non_mate": a, "twin_mate": b, "twin_non_mate": c,
         "threshold": threshold}
        for a, b, c in zip(non_mate, twin_mate, twin_non_mate)
    ]  # fmt: skip
    flips = [
        a < threshold and c > b for a, b, c in zip(non_mate, twin_mate, twin_non_mate)
    ]
    first = flips.index(True) if any(flips) else None
    return mate_score >= threshold, first, scores


# -- the synthetic scenes --------------------------------------------------------------


def render(data: ShapesFewShot, index: int) -> Tuple[Tensor, Tuple[int, int, int]]:
    """Image ``index`` of ``data`` (equal to ``data[index][0]``) and its object's
    placement (x0, y0, side), drawn from the same generator."""
    gen = data._generator(index)
    image = _background(data.size, gen)
    x0, y0, side = data._placement(gen)
    cls = data.classes[data.label(index)]
    mask = _shape_mask(cls.shape, side)
    obj = _texture(cls.texture, side, torch.tensor(COLOURS[cls.colour]))
    region = image[:, y0 : y0 + side, x0 : x0 + side]
    region.mul_(1 - mask).add_(obj * mask)
    return image, (x0, y0, side)


def part_mask(
    data: ShapesFewShot, index: int, place: Tuple[int, int, int], corner: int,
    fraction: float,
) -> Tensor:  # fmt: skip
    """(H, W) bool: the object's pixels inside the corner block (``corner`` 0-3:
    top-left, top-right, bottom-left, bottom-right) of side ``fraction`` of its
    box."""
    x0, y0, side = place
    shape = _shape_mask(data.classes[data.label(index)].shape, side) > 0
    block = torch.zeros(side, side, dtype=torch.bool)
    k = max(1, int(round(fraction * side)))
    rows = slice(0, k) if corner < 2 else slice(side - k, side)
    cols = slice(0, k) if corner % 2 == 0 else slice(side - k, side)
    block[rows, cols] = True
    out = torch.zeros(data.size, data.size, dtype=torch.bool)
    out[y0 : y0 + side, x0 : x0 + side] = block & shape
    return out


def recolour(image: Tensor, mask: Tensor, place: Tuple[int, int, int], donor) -> Tensor:
    """A copy of ``image`` whose ``mask`` pixels take the ``donor`` class's
    colour and texture (rendered over the object's box); the rest unchanged."""
    x0, y0, side = place
    paint = torch.zeros_like(image)
    texture = _texture(donor.texture, side, torch.tensor(COLOURS[donor.colour]))
    paint[:, y0 : y0 + side, x0 : x0 + side] = texture
    return torch.where(mask[None], paint, image)


def shapes_game(
    model: Module, metric: str, count: int, seed: int = 0,
    data: Optional[ShapesFewShot] = None, max_draws: Optional[int] = None,
) -> Game:  # fmt: skip
    r"""The game on the synthetic test classes for a trained demo model.

    Args:
        model (Module): the embedding model (64 px inputs).
        metric (str): its metric.
        count (int): triples to keep.
        seed (int): draws classes, images, corners and donors. Default: 0
        data (ShapesFewShot, optional): Default: the test split, seed 0.
        max_draws (int, optional): candidates drawn at most. Default: 8 * count

    Returns:
        the :class:`Game` (fewer than ``count`` triples when the draws run out).
    """
    data = ShapesFewShot("test", seed=0) if data is None else data
    gen = torch.Generator().manual_seed(seed)
    calib_classes = torch.randperm(len(data.classes), generator=gen)[:24].tolist()
    ids = [i for c in calib_classes for i in data.images_of(c)[-4:]]
    images = torch.stack([data[i][0] for i in ids])
    labels = torch.tensor([data.label(i) for i in ids])
    threshold = verification_threshold(embed(model, images), labels, metric)
    triples: List[Triple] = []
    draws, limit = 0, 8 * count if max_draws is None else max_draws
    while len(triples) < count and draws < limit:
        draws += 1
        label = int(torch.randint(0, len(data.classes), (1,), generator=gen))
        own = data.classes[label]
        donors = [c for c in data.classes if c.colour != own.colour]
        donor = donors[int(torch.randint(0, len(donors), (1,), generator=gen))]
        first, second = torch.randperm(data.images_per_class - 4, generator=gen)[:2]
        p_id, m_id = (
            data.images_of(label)[int(first)],
            data.images_of(label)[int(second)],
        )
        corner = int(torch.randint(0, 4, (1,), generator=gen))
        probe, p_place = render(data, p_id)
        mate, m_place = render(data, m_id)
        steps = [
            (i, part_mask(data, p_id, p_place, corner, f),
             part_mask(data, m_id, m_place, corner, f))
            for i, f in enumerate(SCHEDULE)
        ]  # fmt: skip
        steps = [(i, a, b) for i, a, b in steps if bool(a.any()) and bool(b.any())]
        if not steps:
            continue
        twins = torch.stack([recolour(probe, a, p_place, donor) for _, a, _ in steps])
        non_mates = torch.stack([recolour(mate, b, m_place, donor) for *_, b in steps])
        accepted, first, scores = decide(
            model, metric, threshold, probe[None], mate[None], non_mates, twins
        )
        if accepted and first is not None:
            step, mask, mate_mask = steps[first]
            info = f"{own.name}: corner {corner} -> {donor.name}"
            triples.append(
                Triple(probe[None], mate[None], non_mates[first : first + 1],
                       twins[first : first + 1], mask, mate_mask, step,
                       scores[first], info, (twins[:first], non_mates[:first]))
            )  # fmt: skip
    return Game(triples, draws, threshold, metric)


# -- the photos ------------------------------------------------------------------------


def _views(array: np.ndarray) -> Tuple[Tensor, Tensor]:
    """(probe view, mate view) of an (H, W, 3) uint8 array, model inputs."""
    from .pretrained import preprocess, second_view

    return preprocess(array), preprocess(second_view(array))


def photo_game(
    model: Module, count: int, seed: int = 0, names: Sequence[str] = PHOTOS,
    photos: Optional[Dict[str, np.ndarray]] = None,
) -> Game:  # fmt: skip
    r"""The game on scikit-image photos for the EfficientNet-Lite0 (cosine).

    Candidate i edits photo ``names[i % len(names)]``: a square around a
    centre drawn in the photo's middle half is replaced by the same-sized
    centre crop of another photo (nearest-pixel resized), growing along
    :data:`PHOTO_SCHEDULE`. Probe = the photo, mate = its second view
    (``second_view``), each through ``preprocess``; the masks are the edited
    square through the same view and resizing (every pixel it reaches).

    Args:
        model (Module): the embedding model (224 px).
        count (int): triples to keep (at most ``4 * count`` candidates).
        seed (int): draws centres and donors. Default: 0
        names (sequence of str): photos. Default: :data:`PHOTOS`
        photos (dict, optional): name -> (H, W, 3) uint8. Default:
                    ``sample_images()``

    Returns:
        the :class:`Game` (cosine).
    """
    from .pretrained import sample_images

    photos = sample_images() if photos is None else photos
    arrays = [photos[n] for n in names]
    pairs = [_views(a) for a in arrays]
    emb = embed(model, torch.cat([v for pair in pairs for v in pair]))
    labels = torch.arange(len(arrays)).repeat_interleave(2)
    threshold = verification_threshold(emb, labels, "cosine")
    gen = torch.Generator().manual_seed(seed)
    triples: List[Triple] = []
    draws = 0
    while len(triples) < count and draws < 4 * count:
        index, draws = draws % len(arrays), draws + 1
        array, (probe, mate) = arrays[index], pairs[index]
        shift = 1 + int(torch.randint(0, len(arrays) - 1, (1,), generator=gen))
        donor_index = (index + shift) % len(arrays)
        donor = arrays[donor_index]
        cy, cx = (torch.rand(2, generator=gen) * 0.5 + 0.25).tolist()
        edits = [paste_patch(array, donor, (cy, cx), f) for f in PHOTO_SCHEDULE]
        views = [_views(edited) for edited, _ in edits]
        accepted, first, scores = decide(
            model, "cosine", threshold, probe, mate,
            torch.cat([v[1] for v in views]), torch.cat([v[0] for v in views]),
        )  # fmt: skip
        if accepted and first is not None:
            square = edits[first][1]
            mask3 = np.repeat(square[..., None], 3, axis=-1).astype(np.uint8) * 255
            mask, mate_mask = (v[0, 0] > -1 for v in _views(mask3))
            twin, non_mate = views[first]
            info = f"{names[index]}: square at ({cy:.2f}, {cx:.2f})"
            info += f" <- {names[donor_index]}"
            triples.append(
                Triple(probe, mate, non_mate, twin, mask, mate_mask, first,
                       scores[first], info,
                       (torch.cat([v[0] for v in views[:first]] or [probe[:0]]),
                        torch.cat([v[1] for v in views[:first]] or [probe[:0]])))
            )  # fmt: skip
    return Game(triples, draws, threshold, "cosine")


def paste_patch(
    array: np.ndarray, donor: np.ndarray, centre: Tuple[float, float], fraction: float
) -> Tuple[np.ndarray, np.ndarray]:
    """A copy of ``array`` (H, W, 3) with a square of side ``fraction`` of its
    shorter side, centred at ``centre`` (relative y, x), replaced by the
    donor's centre crop; and the square's (H, W) bool mask."""
    height, width = array.shape[:2]
    k = max(2, int(round(fraction * min(height, width))))
    y0 = min(max(0, int(centre[0] * height) - k // 2), height - k)
    x0 = min(max(0, int(centre[1] * width) - k // 2), width - k)
    dh, dw = donor.shape[:2]
    d = min(dh, dw)
    crop = donor[(dh - d) // 2 : (dh - d) // 2 + d, (dw - d) // 2 : (dw - d) // 2 + d]
    pick = (np.arange(k) * d) // k  # nearest-pixel resize to k x k
    out = np.array(array[..., :3], copy=True)
    out[y0 : y0 + k, x0 : x0 + k] = crop[pick][:, pick, :3]
    square = np.zeros((height, width), dtype=bool)
    square[y0 : y0 + k, x0 : x0 + k] = True
    return out, square


#: what a game needs from the caller: (model, count, seed) -> Game
GameFn = Callable[[Module, int, int], Game]

__all__ = [
    "PHOTOS",
    "PHOTO_SCHEDULE",
    "SCHEDULE",
    "Game",
    "Triple",
    "decide",
    "paste_patch",
    "part_mask",
    "photo_game",
    "recolour",
    "render",
    "shapes_game",
    "similarity",
    "verification_threshold",
]
