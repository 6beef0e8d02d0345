r"""Figures for pair explanations, built on ``captum.attr.visualization``.

Captum's ``visualize_image_attr`` takes numpy arrays in channels-last layout;
:func:`to_hwc` turns a layer-resolution map into that layout at the image's
size (bilinear, as in the SFAM paper). :func:`visualize_pair` draws the query
and each support image with their maps; :func:`compare_methods` draws one row
per method. Both return matplotlib figures (no pyplot state is touched) and
save them when given a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from captum.attr import LayerAttribution
from torch import Tensor

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


def _image(image: ArrayLike) -> np.ndarray:
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else image
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.max() > 1.0:
        array = array / 255.0
    return np.clip(array, 0.0, 1.0)


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


def visualize_pair(
    query_image: ArrayLike,
    query_map: Tensor,
    support_images: Sequence[ArrayLike],
    support_maps: Optional[Tensor] = None,
    method: str = "SFAM",
    similarity: Optional[float] = None,
    sign: str = "positive",
    path: Union[None, str, Path] = None,
):
    r"""Query and support images with their maps, one figure.

    Args:
        query_image: (H, W, 3) or (3, H, W) image, values in [0, 1] or [0, 255].
        query_map (Tensor): the query's map, (1, h, w) or (1, 1, h, w).
        support_images: the K support images.
        support_maps (Tensor, optional): (K, 1, h', w') maps of the support
                    images; without them only the originals are shown.
        method (str): name shown in the title.
        similarity (float, optional): the pair's similarity, shown in the title.
        sign (str): Captum's sign ("positive", "absolute_value", "all").
        path: where to save the figure (PNG), if given.

    Returns:
        a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    columns = 2 + len(support_images)
    fig = Figure(figsize=(3 * columns, 3.4))
    axes = fig.subplots(1, columns)
    query = _image(query_image)
    axes[0].imshow(query)
    axes[0].set_title("query")
    axes[0].axis("off")
    _draw(axes[1], query_map, query, "query map", sign)
    for k, support in enumerate(support_images):
        image = _image(support)
        if support_maps is None:
            axes[2 + k].imshow(image)
            axes[2 + k].set_title(f"support {k}")
            axes[2 + k].axis("off")
        else:
            _draw(axes[2 + k], support_maps[k], image, f"support {k} map", sign)
    title = (
        method if similarity is None else f"{method}   similarity = {similarity:.3f}"
    )
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def compare_methods(
    query_image: ArrayLike,
    support_images: Sequence[ArrayLike],
    results: Dict[str, Tuple[Tensor, Optional[Tensor]]],
    sign: str = "positive",
    title: Optional[str] = None,
    path: Union[None, str, Path] = None,
):
    r"""A grid: one row per method, the query's map then each support's map.

    Args:
        query_image, support_images: as in :func:`visualize_pair`.
        results: method name -> (query map (1, h, w), support maps (K, 1, h', w')
                    or None).
        sign (str): Captum's sign.
        title (str, optional): figure title.
        path: where to save the figure (PNG), if given.

    Returns:
        a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    rows, columns = len(results), 1 + len(support_images)
    fig = Figure(figsize=(2.6 * columns, 2.6 * rows + 0.4))
    axes = np.atleast_2d(np.asarray(fig.subplots(rows, columns), dtype=object))
    if columns == 1:
        axes = axes.reshape(rows, 1)
    query = _image(query_image)
    supports = [_image(s) for s in support_images]
    for row, (name, (query_map, support_maps)) in enumerate(results.items()):
        _draw(axes[row, 0], query_map, query, f"{name}: query", sign)
        axes[row, 0].title.set_fontsize(9)
        for k, image in enumerate(supports):
            ax = axes[row, 1 + k]
            if support_maps is None:
                ax.imshow(image)
                ax.set_title(f"support {k}")
                ax.axis("off")
            else:
                _draw(ax, support_maps[k], image, f"support {k}", sign)
            ax.title.set_fontsize(9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


__all__ = ["compare_methods", "to_hwc", "visualize_pair"]
