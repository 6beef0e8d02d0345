r"""One small script file per explained pair, loaded when the pair is opened.

``pairs/qNNNNNN-rKK.js`` (query NNNNNN, rank KK) calls
``sfamPair("qNNNNNN-rKK", {"h", "w", "h2", "w2", "low", "high", "u8"})``:
the pair's point-to-point scores at the layer's resolution, row-major over
(h, w, h', w') (query cell, then neighbour cell), quantised to 256 levels
between their ``low`` and ``high`` and base64-encoded (``u8``): a score is
``low + (high - low) * byte / 255`` (the page min-max scales each cell's
row or column, so 1/255 of the pair's range is the precision; 38 KB for a
14 x 14 layer). A ``<script>`` tag loads it from disk where ``fetch`` of a
``file://`` URL is refused.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from torch import Tensor

#: the folder of the pair files
PAIRS = "pairs"


def pair_id(query: int, rank: int) -> str:
    """The name of the pair (query ``query``, neighbour of rank ``rank``)."""
    return f"q{query:06d}-r{rank:02d}"


def write_pair(out: Path, query: int, rank: int, scores: Tensor) -> str:
    r"""Write the pair file of one (query, neighbour) pair.

    Args:
        out (Path): the run directory.
        query (int): the query's index.
        rank (int): the neighbour's rank (from 1).
        scores (Tensor): (h, w, h', w') point-to-point scores.

    Returns:
        *str*: the pair's id (its file is ``pairs/<id>.js``).
    """
    h, w, h2, w2 = scores.shape
    values = scores.float().numpy().astype(np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    levels = np.round((values - low) / span * 255).astype(np.uint8)
    data = {
        "h": h, "w": w, "h2": h2, "w2": w2, "low": low, "high": high,
        "u8": base64.b64encode(levels.tobytes()).decode("ascii"),
    }  # fmt: skip
    identifier = pair_id(query, rank)
    folder = out / PAIRS
    folder.mkdir(exist_ok=True)
    text = (
        f"sfamPair({json.dumps(identifier)}, "
        f"{json.dumps(data, separators=(',', ':'))});\n"
    )
    (folder / f"{identifier}.js").write_text(text, encoding="utf-8")
    return identifier


__all__ = ["PAIRS", "pair_id", "write_pair"]
