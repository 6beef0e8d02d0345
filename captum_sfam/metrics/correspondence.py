r"""Correspondence: pairs whose geometry is known by construction, and PCK.

A photo and a copy of it that is mirrored, cropped or rescaled form a pair in
which every point of the query has a known place in the support. Each
transform here is axis-aligned and affine in normalised coordinates
(:math:`x, y \in [0, 1)`, the image's left/top edge at 0, its right/bottom
edge at 1):

.. math::
    x' = a_x x + b_x, \qquad y' = a_y y + b_y,

so :func:`true_cells` maps the centre of each query cell of an (h, w) layer
grid to the support cell of an (h', w') grid that holds it (``-1`` where the
point leaves the support, e.g. outside a crop). :func:`correspondence_pck`
scores point-to-point maps against these cells: the share of query cells
whose best-scoring support cell lies within ``tolerance`` cells of the true
one (PCK, "percentage of correct keypoints", Chebyshev distance on the grid).

Everything works on tensors, offline; photos come from anywhere
(:func:`captum_sfam.demo.pretrained.sample_images` has scikit-image's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

#: the transforms of :func:`known_geometry_pair`
TRANSFORMS = ("flip", "crop", "rescale")
#: default crop box of :func:`crop_pair`, (x0, y0, x1, y1) normalised
DEFAULT_CROP = (0.25, 0.25, 1.0, 1.0)
#: tolerance on normalised coordinates at cell edges (float64 rounding)
EDGE = 1e-9


@dataclass(frozen=True)
class KnownPair:
    r"""A query, its transformed copy and the map between them.

    Attributes:
        query (Tensor): (1, C, H, W).
        support (Tensor): (1, C, H', W').
        transform (str): "flip", "crop" or "rescale".
        affine (tuple): :math:`(a_x, b_x, a_y, b_y)`, query point
                    :math:`(x, y)` -> support point
                    :math:`(a_x x + b_x, a_y y + b_y)`, normalised coordinates.
    """

    query: Tensor
    support: Tensor
    transform: str
    affine: Tuple[float, float, float, float]


def _image(image: Tensor) -> Tensor:
    if not isinstance(image, Tensor) or not image.is_floating_point():
        raise TypeError("image must be a floating point Tensor")
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1 or min(x.shape[-2:]) < 2:
        raise ValueError(
            f"image must be one (C, H, W) image of at least 2 x 2 pixels, got "
            f"{tuple(image.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("image contains NaN or inf values")
    return x


def flip_pair(image: Tensor) -> KnownPair:
    r"""The image and its horizontal mirror: :math:`x' = 1 - x`, :math:`y' = y`.

    Args:
        image (Tensor): (C, H, W) or (1, C, H, W).

    Returns:
        a :class:`KnownPair`.
    """
    x = _image(image)
    return KnownPair(x, x.flip(-1), "flip", (-1.0, 1.0, 1.0, 0.0))


def crop_pair(
    image: Tensor,
    box: Sequence[float] = DEFAULT_CROP,
    size: Optional[Tuple[int, int]] = None,
) -> KnownPair:
    r"""The image and a crop of it resized to ``size`` (a zoom-in).

    Resized bilinearly, antialiased where it shrinks (as Pillow's
    ``BILINEAR``). The crop keeps the pixels ``[round(x0 W), round(x1 W))`` x
    ``[round(y0 H), round(y1 H))``; with :math:`c_0, c_1` its edges in
    normalised coordinates, :math:`x' = (x - c_0) / (c_1 - c_0)` (the same for
    y), and query points outside the crop have no correspondence.

    Args:
        image (Tensor): (C, H, W) or (1, C, H, W).
        box (sequence of 4 floats): (x0, y0, x1, y1) in [0, 1], x0 < x1,
                    y0 < y1. Default: (0.25, 0.25, 1.0, 1.0)
        size (tuple of 2 ints, optional): (H', W') of the support.
                    Default: the image's size

    Returns:
        a :class:`KnownPair`.
    """
    x = _image(image)
    height, width = x.shape[-2:]
    if len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got {box!r}")
    c0, r0 = round(box[0] * width), round(box[1] * height)
    c1, r1 = round(box[2] * width), round(box[3] * height)
    if not (0 <= c0 < c1 <= width and 0 <= r0 < r1 <= height):
        raise ValueError(
            f"box must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 with at "
            f"least one pixel inside, got {tuple(box)}"
        )
    out = (height, width) if size is None else tuple(int(v) for v in size)
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"size must be two positive ints, got {size!r}")
    crop = F.interpolate(
        x[..., r0:r1, c0:c1], size=out, mode="bilinear", antialias=True
    )
    ax, ay = width / (c1 - c0), height / (r1 - r0)
    affine = (ax, -c0 / (c1 - c0), ay, -r0 / (r1 - r0))
    return KnownPair(x, crop, "crop", affine)


def rescale_pair(image: Tensor, scale: float = 0.75) -> KnownPair:
    r"""The image and a copy at another resolution: :math:`x' = x`, :math:`y' = y`.

    The support has ``round(scale * H) x round(scale * W)`` pixels, resampled
    bilinearly, antialiased where it shrinks (as Pillow's ``BILINEAR``), so
    its layer grid (h', w') differs from the query's.

    Args:
        image (Tensor): (C, H, W) or (1, C, H, W).
        scale (float): resolution factor, > 0. Default: 0.75

    Returns:
        a :class:`KnownPair`.
    """
    x = _image(image)
    if not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    size = tuple(max(1, round(scale * v)) for v in x.shape[-2:])
    support = F.interpolate(x, size=size, mode="bilinear", antialias=scale < 1)
    return KnownPair(x, support, "rescale", (1.0, 0.0, 1.0, 0.0))


def known_geometry_pair(image: Tensor, transform: str, **options: object) -> KnownPair:
    r"""One of :func:`flip_pair`, :func:`crop_pair`, :func:`rescale_pair` by name.

    Args:
        image (Tensor): (C, H, W) or (1, C, H, W).
        transform (str): "flip", "crop" or "rescale".
        **options: the chosen function's keyword arguments.

    Returns:
        a :class:`KnownPair`.
    """
    makers = {"flip": flip_pair, "crop": crop_pair, "rescale": rescale_pair}
    if transform not in makers:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    return makers[transform](image, **options)  # type: ignore[operator]


def _grid(grid: Sequence[int], name: str) -> Tuple[int, int]:
    if (
        len(grid) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in grid)
        or min(grid) < 1
    ):
        raise ValueError(f"{name} must be two positive ints (h, w), got {grid!r}")
    return int(grid[0]), int(grid[1])


def true_cells(
    pair: Union[KnownPair, Sequence[float]],
    query_grid: Sequence[int],
    support_grid: Sequence[int],
) -> Tensor:
    r"""The support cell holding the centre of every query cell.

    Query cell (i, j) of an (h, w) grid has its centre at
    :math:`x = (j + \tfrac12)/w`, :math:`y = (i + \tfrac12)/h`; its support
    cell is :math:`(\lfloor y' h' \rfloor, \lfloor x' w' \rfloor)`.

    Args:
        pair (KnownPair or 4 floats): the pair, or its affine
                    :math:`(a_x, b_x, a_y, b_y)`.
        query_grid (tuple of 2 ints): (h, w), the query's layer grid.
        support_grid (tuple of 2 ints): (h', w'), the support's layer grid.

    Returns:
        *Tensor* (h, w, 2) of int64 (y', x') support cells, ``-1`` in both
        entries where the point falls outside the support.
    """
    affine = pair.affine if isinstance(pair, KnownPair) else tuple(pair)
    if len(affine) != 4 or not all(
        isinstance(v, (int, float)) and abs(float(v)) < float("inf") for v in affine
    ):
        raise ValueError(f"pair must be a KnownPair or 4 finite floats, got {pair!r}")
    h, w = _grid(query_grid, "query_grid")
    hs, ws = _grid(support_grid, "support_grid")
    ax, bx, ay, by = (float(v) for v in affine)
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    ys, xs = torch.meshgrid(ay * ys + by, ax * xs + bx, indexing="ij")
    # points on a cell edge belong to the cell after it (half-open cells);
    # EDGE absorbs the rounding of the affine map
    inside = (xs > -EDGE) & (xs < 1 - EDGE) & (ys > -EDGE) & (ys < 1 - EDGE)
    cells = torch.stack(
        [
            torch.floor(ys * hs + EDGE).clamp(0, hs - 1).long(),
            torch.floor(xs * ws + EDGE).clamp(0, ws - 1).long(),
        ],
        dim=-1,
    )
    return torch.where(inside.unsqueeze(-1), cells, torch.full_like(cells, -1))


def correspondence_pck(
    scores: Tensor,
    true_cells: Tensor,
    tolerance: int = 1,
    reduction: str = "mean",
) -> Union[float, Tensor]:
    r"""PCK of point-to-point scores: how often the best match is right.

    For every query cell with a correspondence, the predicted match is the
    support cell (over all K shots) of highest score; it is correct when it is
    in the true shot and within ``tolerance`` cells of the true cell in both
    directions (:math:`\max(|\Delta y|, |\Delta x|) \le` ``tolerance``). Ties
    are shared: a query cell whose maximum is reached at m support cells, n of
    them correct, counts n/m (the expected score of a random tie-break), so
    an all-zero row scores chance level rather than whatever cell comes first.
    Strictly increasing transforms of the scores leave PCK unchanged.

    Args:
        scores (Tensor): (B, h, w, K, h', w') scores of every query cell
                    against every support cell (what ``point_to_point``
                    returns), or (h, w, h', w') for one one-shot pair.
        true_cells (Tensor): integer (B, h, w, 2) true (y', x') cells
                    (K = 1), or (B, h, w, 3) (k, y', x') with the shot;
                    without B for 4-d scores. Negative entries mark query
                    cells without a correspondence; they are skipped.
        tolerance (int): allowed distance in cells. Default: 1
        reduction (str): "mean" (one float over all query cells of all
                    pairs with a correspondence) or "none" (one value per
                    pair). Default: "mean"

    Returns:
        *float* in [0, 1], or a float64 *Tensor* (B,) for ``reduction="none"``.
    """
    scores, true_cells = _batched(scores, true_cells)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0, got {tolerance!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    cells = _shot_cells(true_cells, scores)
    valid = (cells >= 0).all(dim=-1)  # (B, h, w)
    per_pair = valid.flatten(1).sum(dim=1)
    if bool((per_pair == 0).any()):
        raise ValueError("true_cells marks no query cell with a correspondence")
    credit = _shared_credit(scores, cells, tolerance)
    credit = torch.where(valid, credit, torch.zeros_like(credit)).flatten(1)
    if reduction == "none":
        return (credit.sum(1) / per_pair.double()).cpu()
    return float(credit.sum() / per_pair.sum())


def _batched(scores: Tensor, true_cells: Tensor) -> Tuple[Tensor, Tensor]:
    """Checked (B, h, w, K, h', w') scores; (h, w, h', w') gets B = K = 1."""
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise TypeError("scores must be a floating point Tensor")
    if not isinstance(true_cells, Tensor):
        raise TypeError("true_cells must be a Tensor")
    if scores.dim() == 4:
        scores = scores.unsqueeze(0).unsqueeze(3)
        true_cells = true_cells.unsqueeze(0)
    if scores.dim() != 6 or scores.numel() == 0:
        raise ValueError(
            f"scores must be (B, h, w, K, h', w') or (h, w, h', w') and non-empty, "
            f"got {tuple(scores.shape)}"
        )
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contains NaN or inf values")
    return scores, true_cells


def _shot_cells(true_cells: Tensor, scores: Tensor) -> Tensor:
    """Checked (B, h, w, 3) int64 (k, y', x') cells for ``scores``
    (B, h, w, K, h', w'), on their device, from (k, y', x') or, for K = 1,
    (y', x'); a query cell without a correspondence is negative in every
    entry."""
    batch, h, w, shots, hs, ws = scores.shape
    if (
        true_cells.is_floating_point()
        or true_cells.is_complex()
        or (true_cells.dtype == torch.bool)
    ):
        raise ValueError(f"true_cells must hold integers, got {true_cells.dtype}")
    found = tuple(true_cells.shape)
    if found[:-1] != (batch, h, w) or found[-1] not in (2, 3):
        raise ValueError(
            f"true_cells must be {(batch, h, w)} + (2,) or (3,) to match scores "
            f"{tuple(scores.shape)}, got {found}"
        )
    cells = true_cells.to(device=scores.device, dtype=torch.long)
    if cells.shape[-1] == 2:
        if shots != 1:
            raise ValueError(
                f"true_cells must name the shot, (k, y', x'), when scores have "
                f"K = {shots} shots"
            )
        cells = torch.cat([torch.where(cells[..., :1] < 0, -1, 0), cells], dim=-1)
    valid = (cells >= 0).all(dim=-1)
    if bool((cells[valid] >= torch.tensor([shots, hs, ws], device=cells.device)).any()):
        raise ValueError(
            f"true_cells holds cells outside the support grid (K, h', w') = "
            f"{(shots, hs, ws)}"
        )
    return cells


def _shared_credit(scores: Tensor, cells: Tensor, tolerance: int) -> Tensor:
    r"""(B, h, w) float64 credit of each query cell: n/m when its maximum is
    reached at m support cells, n of them in the true shot within
    ``tolerance`` cells (Chebyshev) of the true cell (k, y', x') of ``cells``."""
    batch, h, w, shots, hs, ws = scores.shape
    flat = scores.reshape(batch, h, w, -1)
    best = flat == flat.amax(dim=-1, keepdim=True)  # (B, h, w, K h' w')
    k = torch.arange(shots, device=scores.device).view(shots, 1, 1)
    y = torch.arange(hs, device=scores.device).view(1, hs, 1)
    x = torch.arange(ws, device=scores.device).view(1, 1, ws)

    def near(axis: Tensor, index: int) -> Tensor:
        return (axis - cells[..., index, None, None, None]).abs()

    correct = (
        (near(k, 0) == 0) & (near(y, 1) <= tolerance) & (near(x, 2) <= tolerance)
    ).flatten(-3)
    return (best & correct).sum(-1).double() / best.sum(-1).double()
