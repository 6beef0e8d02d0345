r"""A static report of a retrieval run, for auditing it: worst queries first.

``index.html`` in the run directory opens from disk (``file://``, no server)
and shows:

- a summary: Recall@1, Recall@5, Recall@k, mAP@K, and (with labels) the
  Recall@r curve, the ROC and precision–recall curves over all query–gallery
  pairs and the histograms of the similarities of true and false pairs, PNG
  files drawn by matplotlib in ``plots/`` (:mod:`.curves`);
- the ``limit`` worst queries, worst first (:mod:`.order`: by the rank of
  the first true match, then AP, with labels; by the similarity margin of
  rank 1 over rank 2 without), re-sortable in the page (query order, AP,
  first true rank, margin);
- for each query its top-k, each neighbour with its map (green frame: a true
  match, red: a wrong one) and the query's map for the pair; for a wrong
  neighbour ranked above a true match, the contrastive map "why this wrong
  match rather than the true one" (the first true match after it); the true
  matches the query missed
  (ranked after its k neighbours) with their ranks;
- a "point to point" button per pair: the pair's correspondences
  (``pairs/<pair>.js``, loaded when opened, :mod:`.pairs`), where hovering
  or tapping a cell of the query shows where it matches in the neighbour,
  and the other way round (:mod:`.assets`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..._optional import require_extra
from ..data import ImageSource
from ..store import MANIFEST, read_results
from .assets import SCRIPT, STYLE
from .curves import draw, read_samples
from .order import SORTS, first_true_rank, worst
from .page import Rows
from .pictures import THUMB, Pictures, colorize, overlay

#: what the report writes besides index.html
REPORT_FILES = ("report.css", "report.js")
REPORT_DIRS = ("thumbs", "pairs", "plots")


def _statistics(out: Path) -> Tuple[np.ndarray, List[float], Dict[str, List]]:
    """First true ranks, APs and shard rows of the labelled queries."""
    ranks: List[int] = []
    aps: List[float] = []
    rows: Dict[str, List[Tuple[int, int]]] = {}
    for record in read_results(out):
        if not record.get("relevant"):
            continue
        rank = first_true_rank(record)
        if rank is not None:
            ranks.append(rank)
        aps += [v for n, v in record.get("metrics", {}).items() if n.startswith("ap@")]
        where = record["maps"]
        rows.setdefault(where["file"], []).append(
            (int(where["row"]), int(record["relevant"]))
        )
    return np.array(ranks, dtype=np.int64), aps, rows


def _summary(
    out: Path, settings: Dict[str, Any], metrics: Optional[Dict[str, float]]
) -> str:
    k = int(settings.get("k", 0) or 0)
    ranks, aps, rows = _statistics(out)
    numbers: Dict[str, float] = {}
    if len(ranks):
        for r in sorted({1, 5, k} - {0}):
            numbers[f"recall@{r}"] = float((ranks <= r).mean())
        numbers["mAP@K (K = max(k, 5))"] = float(np.mean(aps)) if aps else 0.0
        numbers["queries with a true match"] = float(len(ranks))
    elif metrics:
        numbers.update(metrics)
    gallery = int(settings.get("num_gallery", 0) or 0)
    samples = read_samples(out, rows, gallery) if rows else None
    upto = max(10, k, int(np.percentile(ranks, 90)) if len(ranks) else 0)
    files, extra = (
        draw(out / "plots", ranks, min(upto, max(gallery, 1)), samples)
        if (len(ranks))
        else ({}, {})
    )
    names = {
        "roc_auc": "ROC AUC (all pairs)",
        "pairs_ap": "precision-recall AP (all pairs)",
    }
    numbers.update({names[key]: value for key, value in extra.items()})
    cells = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{value:.4g}</td></tr>"
        for name, value in numbers.items()
    )
    table = f'<table class="metrics">{cells}</table>' if cells else ""
    plots = "".join(
        f'<img class="plot" id="plot-{key}" src="plots/{name}" alt="{key}">'
        for key, name in files.items()
    )
    if not plots:
        plots = "<p>No labels: Recall, ROC and precision-recall need labels.</p>"
    return f'<section id="summary">{table}<div class="plots">{plots}</div></section>'


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
    r"""Write ``index.html``, its pictures, plots and pair files for a run.

    Args:

        out (Path): the run directory (with ``results.jsonl`` and the maps).
        queries, gallery (ImageSource): the run's images.
        limit (int, optional): the number of queries shown: the worst ones
                    (``order.worst``).
                    Default: 100
        mean, std (Sequence[float], optional): input normalisation to undo
                    for display (see :func:`captum_sfam.images.to_display`:
                    an image still outside [0, 1] is min-max scaled, with one
                    ``UserWarning`` per report).
                    Default: None
        metrics (dict, optional): the run's mean metrics, shown when the
                    records have no labels to recompute them from.
                    Default: None
        height (int, optional): thumbnail height in pixels.
                    Default: 128

    Returns:
        *Path* of ``index.html``.
    """
    require_extra("PIL", "pillow")
    out = Path(out)
    (out / "thumbs").mkdir(exist_ok=True)
    settings: Dict[str, Any] = {}
    if (out / MANIFEST).is_file():
        settings = json.loads((out / MANIFEST).read_text())
    records, total = worst(out, limit)
    rows = Rows(out, Pictures(queries, gallery, mean, std, height))
    body = "\n".join(rows.row(record, place) for place, record in enumerate(records))
    title = (
        f"Retrieval explained: {settings.get('member', '?')} maps, "
        f"{settings.get('metric', '?')} similarity, layer "
        f"{settings.get('layer', '?')}"
    )
    intro = (
        f"{total} queries against {settings.get('num_gallery', len(gallery))} "
        f"gallery images, top {settings.get('k', '?')}; showing the worst "
        f"{len(records)}, worst first. In each neighbour cell: the neighbour "
        "with its map (top), the query with its map for that pair (bottom); a "
        "wrong neighbour ranked above a true match adds the query's contrastive "
        "map (dashed red): why this wrong match rather than the first true match "
        "after it. Maps are min-max scaled per image, blue (low) to red (high); a "
        "green frame marks a neighbour with the query's label, red one without. "
        "'point to point' opens the pair's correspondences. All results: "
        "results.jsonl; maps: maps/*.safetensors."
    )
    options = "".join(
        f'<option value="{key}" data-ascending="{int(up)}">{html.escape(text)}</option>'
        for key, text, up in SORTS
    )
    (out / "report.css").write_text(STYLE, encoding="utf-8")
    (out / "report.js").write_text(SCRIPT, encoding="utf-8")
    viewer = (
        '<div id="viewer" hidden><div class="title" id="viewer-title"></div>'
        '<div class="stages"><div class="stage">'
        '<img id="viewer-query" class="viewer-image" alt="query">'
        '<canvas id="viewer-query-overlay"></canvas></div><div class="stage">'
        '<img id="viewer-neighbour" class="viewer-image" alt="neighbour">'
        '<canvas id="viewer-neighbour-overlay"></canvas></div></div>'
        '<div class="title" id="viewer-status"></div>'
        '<button id="viewer-close" type="button">close</button></div>'
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        '<link rel="stylesheet" href="report.css">\n</head>\n<body>\n'
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(intro)}</p>\n"
        f"{_summary(out, settings, metrics)}\n"
        f'<p><label>Order: <select id="sort">{options}</select></label></p>\n'
        f'<table class="run"><tbody>\n{body}\n</tbody></table>\n{viewer}\n'
        '<script src="report.js"></script>\n</body>\n</html>\n'
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["REPORT_DIRS", "REPORT_FILES", "colorize", "overlay", "write_report"]
