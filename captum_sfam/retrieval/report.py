r"""A static HTML report of a retrieval run: ranked lists with maps.

``index.html`` in the run directory shows, for each of the first queries, the
query and its ranked neighbours; each neighbour cell holds the neighbour with
its map drawn over it and, below, the query with its map for that pair, the
similarity, and the label (green frame: same label as the query, red: not).
With contrastive maps a last cell shows why rank 1 rather than rank 2. The
thumbnails are PNG files in ``thumbs/`` linked by relative paths, so the page
opens from disk in a browser, without a server.

Maps are upsampled bilinearly from the layer's resolution to the thumbnail,
min-max scaled per map and coloured blue (low) to red (high).
"""

from __future__ import annotations

import html
import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import quote

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._optional import require_extra
from ..images import to_display
from .data import ImageSource
from .store import MANIFEST, load_maps, read_results

#: thumbnail height in pixels
THUMB = 128
#: colormap anchors (jet-like): value -> RGB
_ANCHORS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLORS = np.array(
    [[0, 0, 0.55], [0, 0.45, 1], [0.1, 0.9, 0.4], [1, 0.85, 0], [0.85, 0, 0]]
)

_STYLE = """
body { font-family: sans-serif; margin: 1em; background: #fafafa; }
table.run { border-collapse: collapse; }
tr.query td { vertical-align: top; padding: 4px; border-bottom: 1px solid #ccc; }
figure { margin: 0; text-align: center; }
figure img { display: block; margin: 2px auto; }
figcaption { font-size: 11px; max-width: 150px; overflow-wrap: anywhere; }
td.hit img.neighbour-map { outline: 3px solid #2a2; }
td.miss img.neighbour-map { outline: 3px solid #c22; }
td.query-cell { background: #eef; }
table.metrics td, table.metrics th { padding: 2px 8px; border: 1px solid #ccc; }
"""


def colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) RGB in [0, 1], blue to red."""
    return np.stack(
        [np.interp(values, _ANCHORS, _COLORS[:, c]) for c in range(3)], axis=-1
    )


def overlay(
    picture: Tensor, layer_map: Optional[Tensor], alpha: float = 0.5
) -> np.ndarray:
    """A (3, H, W) picture with a layer-resolution map (h, w) drawn over it,
    as (H, W, 3) uint8; no map: the picture."""
    rgb = picture.permute(1, 2, 0).numpy()
    if layer_map is not None:
        up = F.interpolate(
            layer_map.float()[None, None], size=picture.shape[-2:], mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()  # fmt: skip
        low, high = float(up.min()), float(up.max())
        scaled = (up - low) / (high - low) if high > low else np.zeros_like(up)
        rgb = (1 - alpha) * rgb + alpha * colorize(scaled)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def _thumbnail(picture: Tensor, height: int) -> Tensor:
    h, w = picture.shape[-2:]
    width = max(1, round(w * height / h))
    return F.interpolate(
        picture[None], size=(height, width), mode="bilinear", antialias=True
    )[0].clamp(0, 1)


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, optimize=False)


def _caption(lines: List[str]) -> str:
    return "<br>".join(html.escape(str(line)) for line in lines if line != "")


def _img(src: str, alt: str, cls: str) -> str:
    return (
        f'<img class="{cls}" src="{quote(src)}" alt="{html.escape(alt)}" '
        f'title="{html.escape(alt)}">'
    )


def write_report(
    out: Path,
    queries: ImageSource,
    gallery: ImageSource,
    limit: int = 100,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    metrics: Optional[Dict[str, float]] = None,
    height: int = THUMB,
) -> Path:
    r"""Write ``index.html`` and its thumbnails for a finished run.

    Args:

        out (Path): the run directory (with ``results.jsonl`` and the maps).
        queries, gallery (ImageSource): the run's images.
        limit (int, optional): the number of queries shown (the first ones).
                    Default: 100
        mean, std (Sequence[float], optional): input normalisation to undo
                    for display (see :func:`captum_sfam.images.to_display`:
                    an image still outside [0, 1] is min-max scaled, with one
                    ``UserWarning`` per report).
                    Default: None
        metrics (dict, optional): mean metrics shown at the top.
                    Default: None
        height (int, optional): thumbnail height in pixels.
                    Default: 128

    Returns:
        *Path* of ``index.html``.
    """
    require_extra("PIL", "pillow")
    out = Path(out)
    thumbs = out / "thumbs"
    thumbs.mkdir(exist_ok=True)
    settings: Dict[str, Any] = {}
    if (out / MANIFEST).is_file():
        settings = json.loads((out / MANIFEST).read_text())
    rows = []
    shown = 0
    pictures = _Pictures(queries, gallery, mean, std, height)
    for record in read_results(out):
        if shown >= limit:
            break
        shown += 1
        rows.append(_row(out, record, pictures))
    title = (
        f"Retrieval explained: {settings.get('member', '?')} maps, "
        f"{settings.get('metric', '?')} similarity, layer "
        f"{settings.get('layer', '?')}"
    )
    intro = (
        f"{settings.get('num_queries', len(queries))} queries against "
        f"{settings.get('num_gallery', len(gallery))} gallery images, top "
        f"{settings.get('k', '?')}; showing the first {shown}. In each neighbour "
        "cell: the neighbour with its map (top), the query with its map for that "
        "pair (bottom). Maps are min-max scaled per image, blue (low) to red "
        "(high); a green frame marks a neighbour with the query's label, red one "
        "without. All results: results.jsonl; maps: maps/*.safetensors."
    )
    metric_table = ""
    if metrics:
        cells = "".join(
            f"<tr><th>{html.escape(name)}</th><td>{value:.4g}</td></tr>"
            for name, value in metrics.items()
        )
        metric_table = f'<table class="metrics">{cells}</table>'
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<h1>{html.escape(title)}</h1>\n<p>{html.escape(intro)}</p>\n"
        f'{metric_table}\n<table class="run">\n'
        + "\n".join(rows)
        + "\n</table>\n</body>\n</html>\n"
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


class _Pictures:
    """Display thumbnails of queries and gallery items; the gallery's are
    kept (up to ``keep``), since neighbours recur across queries."""

    def __init__(self, queries, gallery, mean, std, height, keep: int = 512) -> None:
        self.queries, self.gallery = queries, gallery
        self.mean, self.std, self.height, self.keep = mean, std, height, keep
        self.cache: Dict[int, Tensor] = {}
        self.warned = False

    def _picture(self, image: Tensor) -> Tensor:
        # to_display warns for each image it has to min-max scale: the
        # report passes the first such warning on, not one per thumbnail
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            shown = to_display(image, self.mean, self.std)
        for warning in caught:
            scaled = warning.category is UserWarning
            if not (scaled and self.warned):
                warnings.warn(warning.message, warning.category, stacklevel=2)
            self.warned = self.warned or scaled
        picture = torch.from_numpy(shown).permute(2, 0, 1).float()
        return _thumbnail(picture, self.height)

    def query(self, index: int) -> Tensor:
        return self._picture(self.queries.take([index])[0])

    def items(self, indices: List[int]) -> List[Tensor]:
        missing = [i for i in dict.fromkeys(indices) if i not in self.cache]
        fresh = dict(zip(missing, self.gallery.take(missing))) if missing else {}
        result = [
            self.cache[i] if i in self.cache else self._picture(fresh[i])
            for i in indices
        ]
        for i, picture in zip(indices, result):
            if i not in self.cache and len(self.cache) < self.keep:
                self.cache[i] = picture
        return result


def _row(out: Path, record: Dict[str, Any], pictures: _Pictures) -> str:
    q = int(record["query"])
    neighbours = record["neighbours"]
    maps = load_maps(out, record, dtype=torch.float32)
    query_picture = pictures.query(q)
    items = pictures.items([int(n["index"]) for n in neighbours])
    name = f"q{q:06d}"
    _save_png(overlay(query_picture, None), out / "thumbs" / f"{name}.png")
    label = record.get("label")
    cells = [
        '<td class="query-cell"><figure>'
        + _img(f"thumbs/{name}.png", f"query {q}", "query")
        + "<figcaption>"
        + _caption(
            [f"query {q}", record.get("id", ""), label if label is not None else ""]
        )
        + "</figcaption></figure></td>"
    ]
    for j, item in enumerate(neighbours):
        rank = item["rank"]
        picture = items[j]
        n_file = f"thumbs/{name}-r{rank:02d}-neighbour.png"
        q_file = f"thumbs/{name}-r{rank:02d}-query.png"
        _save_png(overlay(picture, maps["neighbours"][j]), out / n_file)
        _save_png(overlay(query_picture, maps["query"][j]), out / q_file)
        verdict = ""
        if label is not None and "label" in item:
            verdict = " hit" if item["label"] == label else " miss"
        cells.append(
            f'<td class="neighbour{verdict}"><figure>'
            + _img(
                n_file,
                f"rank {rank} neighbour {item['index']} with its map",
                "neighbour-map",
            )
            + _img(q_file, f"query {q} with its map for rank {rank}", "query-map")
            + "<figcaption>"
            + _caption(
                [
                    f"#{rank}  similarity {item['similarity']:.4f}",
                    item.get("id", f"gallery {item['index']}"),
                    item.get("label", ""),
                ]
            )
            + "</figcaption></figure></td>"
        )
    if "contrast" in maps:
        c_file = f"thumbs/{name}-contrast.png"
        _save_png(overlay(query_picture, maps["contrast"]), out / c_file)
        cells.append(
            '<td class="contrast"><figure>'
            + _img(c_file, f"query {q}: rank 1 rather than rank 2", "contrast-map")
            + "<figcaption>why #1 rather than #2</figcaption></figure></td>"
        )
    return f'<tr class="query" id="{name}">' + "".join(cells) + "</tr>"
