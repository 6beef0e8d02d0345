r"""The benchmark's tables and files.

:func:`format_table` writes one setting's summary as a Markdown table;
:func:`write` saves a run's report as ``bench.json``, ``bench.csv`` and
``bench.md``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, Optional

from ...metrics.correspondence import TRANSFORMS
from .measures import COLUMNS, Summary

#: the columns of settings (a)-(c), and their headers
HEADERS = {
    "iou": "IoU %",
    "acc50": "Acc@0.5 %",
    "pointing": "Point %",
    "specificity": "Spec.",
    "shift": "Shift",
    "deletion": "Del AUC",
    "insertion": "Ins AUC",
    "c_deletion": "Δ Del AUC",
    "c_insertion": "Δ Ins AUC",
}
#: the columns of setting (d)
PCK_HEADERS = {**{t: f"PCK@1 {t}" for t in TRANSFORMS}, "pck": "PCK@1 mean"}
#: the columns of setting (e), the part-swap game
PART_SWAP_HEADERS = {
    "pointing": "Point %",
    "mass": "Mass %",
    "flip": "Flip % (lower better)",
}
#: the columns shown as percentages
PERCENT = ("iou", "acc50", "pointing", "pck", *TRANSFORMS, "mass", "flip")


def format_table(
    title: str,
    summary: Summary,
    headers: Optional[Dict[str, str]] = None,
) -> str:
    r"""One setting's summary as a Markdown table under its title.

    Args:
        title (str): the line above the table.
        summary: method -> column -> mean (None: shown as ``-``).
        headers (dict, optional): column -> header, in order. Default:
                    :data:`HEADERS`

    Returns:
        the title and the table, one row per method; the :data:`PERCENT`
        columns in percent with one decimal, the others with three.
    """
    headers = HEADERS if headers is None else headers
    lines = [title, "| method | " + " | ".join(headers.values()) + " |"]
    lines.append("|---" * (len(headers) + 1) + "|")
    for method, row in summary.items():
        cells = []
        for c in headers:
            v = row.get(c)
            if v is None:
                cells.append("-")
            elif c in PERCENT:
                cells.append(f"{100 * v:.1f}")
            else:
                cells.append(f"{v:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(report: Dict[str, object], out: Path) -> None:
    r"""Saves a run's report in ``out`` (created if needed).

    Args:
        report (dict): :func:`~captum_sfam.app.bench.command.run`'s report.
        out (Path): the folder; ``bench.json`` (the report), ``bench.csv``
                    (one row per setting and method, :data:`COLUMNS`) and
                    ``bench.md`` (the tables) are written in it.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    with open(out / "bench.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", "method", *COLUMNS])
        for setting, content in report["settings"].items():  # type: ignore[union-attr]
            for method, row in content["methods"].items():
                writer.writerow([setting, method, *[row.get(c) for c in COLUMNS]])
    (out / "bench.md").write_text("\n\n".join(report["tables"]) + "\n")  # type: ignore[arg-type]


__all__ = ["HEADERS", "PART_SWAP_HEADERS", "PCK_HEADERS", "format_table", "write"]
