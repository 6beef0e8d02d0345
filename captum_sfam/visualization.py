r"""Figures for pair explanations, built on ``captum.attr.visualization``.

Captum's ``visualize_image_attr`` takes numpy arrays in channels-last layout;
:func:`to_hwc` turns a layer-resolution map into that layout at the image's
size (bilinear, as in the SFAM paper). :func:`visualize_pair` draws the query
and each support image with their maps; :func:`compare_methods` draws one row
per method. Both return matplotlib figures (no pyplot state is touched) and
save them when given a path. Both take the normalisation the model used
(``mean=``/``std=`` or ``denormalize=``) and draw the image a person sees
(:func:`captum_sfam.images.to_display`); a float image outside [0, 1] without
it is min-max scaled with a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from captum.attr import LayerAttribution
from torch import Tensor

from .images import to_display

ArrayLike = Union[np.ndarray, Tensor]


def to_hwc(attribution: Tensor, size: Tuple[int, int]) -> np.ndarray:
    """A map (h, w), (1, h, w) or (1, 1, h, w) -> numpy (H, W, 1), bilinear."""
    attr = attribution.detach().float().cpu()
    while attr.dim() < 4:
        attr = attr.unsqueeze(0)
    if attr.shape[0] != 1 or attr.shape[1] != 1:
        raise ValueError(f"expected one map, got shape {tuple(attribution.shape)}")
    up = LayerAttribution.interpolate(attr, tuple(size), interpolate_mode="bilinear")
    return up[0].permute(1, 2, 0).numpy()


Normalization = Optional[Sequence[float]]


def _draw(ax, attribution: Tensor, image: np.ndarray, title: str, sign: str) -> None:
    from captum.attr import visualization as viz

    hwc = to_hwc(attribution, image.shape[:2])
    try:
        viz.visualize_image_attr(
            hwc,
            image,
            method="blended_heat_map",
            sign=sign,
            plt_fig_axis=(ax.figure, ax),
            use_pyplot=False,
            title=title,
        )
    except AssertionError:  # Captum cannot scale an all-zero map
        ax.imshow(image)
        ax.set_title(f"{title}\n(no {sign} attribution)")
    ax.axis("off")


def _panel(
    ax, image: np.ndarray, attribution: Optional[Tensor], title: str, sign: str
) -> None:
    """The image alone (no attribution) or with its map blended over it."""
    if attribution is None:
        ax.imshow(image)
        ax.set_title(title)
        ax.axis("off")
    else:
        _draw(ax, attribution, image, title, sign)


def _finish(fig, path: Union[None, str, Path]):
    """Lays the figure out and saves it (PNG at 100 dpi) when given a path."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def visualize_pair(
    query_image: ArrayLike,
    query_map: Tensor,
    support_images: Sequence[ArrayLike],
    support_maps: Optional[Tensor] = None,
    method: str = "SFAM",
    similarity: Optional[float] = None,
    sign: str = "positive",
    path: Union[None, str, Path] = None,
    mean: Normalization = None,
    std: Normalization = None,
    denormalize: Optional[Callable[[ArrayLike], ArrayLike]] = None,
):
    r"""Query and support images with their maps, one figure.

    Pass the images as the model took them together with the normalisation
    it used (``mean=``/``std=``, or ``denormalize=``): the figure shows the
    image a person sees. A float image outside [0, 1] without them is shown
    min-max scaled, with a ``UserWarning`` naming these arguments.

    Args:
        query_image: (H, W, 3), (3, H, W) or (1, 3, H, W) image: a model input
                    (with ``mean``/``std`` or ``denormalize``), floats in
                    [0, 1], or an integer image (uint8 in [0, 255]).
        query_map (Tensor): the query's map, (1, h, w) or (1, 1, h, w).
        support_images: the K support images.
        support_maps (Tensor, optional): (K, 1, h', w') maps of the support
                    images; without them only the originals are shown.
        method (str): name shown in the title.
        similarity (float, optional): the pair's similarity, shown in the title.
        sign (str): Captum's sign ("positive", "absolute_value", "all").
        path: where to save the figure (PNG), if given.
        mean (sequence of float, optional): the per-channel mean the model's
                    inputs were normalised with; the image is drawn as
                    ``image * std + mean``. Default: None
        std (sequence of float, optional): the per-channel standard
                    deviation, given with ``mean``. Default: None
        denormalize (Callable, optional): instead of ``mean``/``std``, maps
                    each image as passed to an image in [0, 1] (any layout
                    accepted here). Default: None

    Returns:
        a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    columns = 2 + len(support_images)
    fig = Figure(figsize=(3 * columns, 3.4))
    axes = fig.subplots(1, columns)
    query = to_display(query_image, mean, std, denormalize, stacklevel=3)
    _panel(axes[0], query, None, "query", sign)
    _draw(axes[1], query_map, query, "query map", sign)
    for k, support in enumerate(support_images):
        image = to_display(support, mean, std, denormalize, stacklevel=3)
        if support_maps is None:
            _panel(axes[2 + k], image, None, f"support {k}", sign)
        else:
            _panel(axes[2 + k], image, support_maps[k], f"support {k} map", sign)
    title = (
        method if similarity is None else f"{method}   similarity = {similarity:.3f}"
    )
    fig.suptitle(title)
    return _finish(fig, path)


def compare_methods(
    query_image: ArrayLike,
    support_images: Sequence[ArrayLike],
    results: Dict[str, Tuple[Tensor, Optional[Tensor]]],
    sign: str = "positive",
    title: Optional[str] = None,
    path: Union[None, str, Path] = None,
    mean: Normalization = None,
    std: Normalization = None,
    denormalize: Optional[Callable[[ArrayLike], ArrayLike]] = None,
):
    r"""A grid: one row per method, the query's map then each support's map.

    Args:
        query_image, support_images: as in :func:`visualize_pair`; pass the
                    model's normalisation with ``mean``/``std`` or
                    ``denormalize`` to draw model inputs.
        results: method name -> (query map (1, h, w), support maps (K, 1, h', w')
                    or None).
        sign (str): Captum's sign.
        title (str, optional): figure title.
        path: where to save the figure (PNG), if given.
        mean, std, denormalize: the model's normalisation, as in
                    :func:`visualize_pair`. Default: None

    Returns:
        a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    rows, columns = len(results), 1 + len(support_images)
    fig = Figure(figsize=(2.6 * columns, 2.6 * rows + 0.4))
    axes = np.atleast_2d(np.asarray(fig.subplots(rows, columns), dtype=object))
    if columns == 1:
        axes = axes.reshape(rows, 1)
    query = to_display(query_image, mean, std, denormalize, stacklevel=3)
    supports = []
    for support in support_images:  # a loop, so warnings point at the caller
        supports.append(to_display(support, mean, std, denormalize, stacklevel=3))
    for row, (name, (query_map, support_maps)) in enumerate(results.items()):
        _draw(axes[row, 0], query_map, query, f"{name}: query", sign)
        axes[row, 0].title.set_fontsize(9)
        for k, image in enumerate(supports):
            ax = axes[row, 1 + k]
            attribution = None if support_maps is None else support_maps[k]
            _panel(ax, image, attribution, f"support {k}", sign)
            ax.title.set_fontsize(9)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def _best_matches(
    scores: Tensor, matches: int, mutual: bool
) -> Tuple[Tensor, List[int], Tensor, Tensor]:
    """The ``matches`` best (mutual) matches of a (h, w[, 1], h', w') score grid:
    the (h, w, h', w') grid, the chosen query cells (flat, best first), and
    each query cell's best support cell (flat) and score."""
    grid = scores.detach().float().cpu()
    if grid.dim() == 5 and grid.shape[2] == 1:
        grid = grid[:, :, 0]
    if grid.dim() != 4:
        raise ValueError(
            "scores must be (h, w, h', w') or (h, w, 1, h', w'), got "
            f"{tuple(scores.shape)}"
        )
    if not isinstance(matches, int) or matches < 1:
        raise ValueError(f"matches must be a positive int, got {matches!r}")
    h, w, hs, ws = grid.shape
    flat = grid.reshape(h * w, hs * ws)
    best_score, best = flat.max(dim=1)
    keep = np.ones(h * w, dtype=bool)
    if mutual:
        back = flat.argmax(dim=0)
        keep = (back[best] == np.arange(h * w)).numpy()
    order = [int(c) for c in np.argsort(-best_score.numpy(), kind="stable")]
    chosen = [c for c in order if keep[c]][:matches]
    return grid, chosen, best, best_score


def visualize_correspondences(
    query_image: ArrayLike,
    support_image: ArrayLike,
    scores: Tensor,
    matches: int = 20,
    mutual: bool = True,
    title: Optional[str] = None,
    path: Union[None, str, Path] = None,
):
    r"""The best point-to-point matches as lines between the two images.

    Each query cell (i, j) is matched to its best-scoring support cell; with
    ``mutual=True`` only mutual nearest neighbours are kept (the query cell is
    also the support cell's best match). The ``matches`` highest-scoring
    matches are drawn from cell centre to cell centre, coloured by score.

    Args:
        query_image, support_image: (H, W, 3) or (3, H, W) images, values in
                    [0, 1] or [0, 255].
        scores (Tensor): one pair's ``point_to_point`` scores, (h, w, h', w')
                    or (h, w, 1, h', w') (e.g. ``method.point_to_point(q,
                    s)[0]`` for a one-shot support).
        matches (int): how many matches to draw (the best ones).
                    Default: 20
        mutual (bool): keep mutual nearest neighbours only.
                    Default: True
        title (str, optional): figure title.
        path: where to save the figure (PNG), if given.

    Returns:
        a ``matplotlib.figure.Figure``.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import ConnectionPatch

    grid, chosen, best, best_score = _best_matches(scores, matches, mutual)
    h, w, hs, ws = grid.shape
    query = to_display(query_image, stacklevel=3)
    support = to_display(support_image, stacklevel=3)
    fig = Figure(figsize=(8, 4.4))
    ax_q, ax_s = fig.subplots(1, 2)
    _panel(ax_q, query, None, "query", "positive")
    _panel(ax_s, support, None, "support", "positive")
    cmap = colormaps["viridis"]
    values = best_score[chosen] if chosen else best_score[:0]
    low = float(values.min()) if chosen else 0.0
    span = float(values.max()) - low if chosen else 0.0
    (qh, qw), (sh, sw) = query.shape[:2], support.shape[:2]
    for cell in chosen:
        i, j = divmod(cell, w)
        x, y = divmod(int(best[cell]), ws)
        start = ((j + 0.5) * qw / w, (i + 0.5) * qh / h)
        end = ((y + 0.5) * sw / ws, (x + 0.5) * sh / hs)
        level = (float(best_score[cell]) - low) / span if span > 0 else 1.0
        colour = cmap(level)
        fig.add_artist(
            ConnectionPatch(
                xyA=start, coordsA=ax_q.transData, xyB=end, coordsB=ax_s.transData,
                color=colour, linewidth=1.2,
            )
        )  # fmt: skip
        ax_q.plot(*start, "o", color=colour, markersize=3)
        ax_s.plot(*end, "o", color=colour, markersize=3)
    fig.suptitle(title or f"{len(chosen)} best {'mutual ' if mutual else ''}matches")
    return _finish(fig, path)


__all__ = [
    "compare_methods",
    "to_hwc",
    "visualize_correspondences",
    "visualize_pair",
]
