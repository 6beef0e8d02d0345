r"""One small script file per explained pair, loaded when the pair is opened.

``pairs/qNNNNNN-rKK.js`` (query NNNNNN, rank KK) calls
``sfamPair("qNNNNNN-rKK", {"h", "w", "h2", "w2", "s"})``: the pair's
point-to-point scores at the layer's resolution, ``s`` row-major over
(h, w, h', w') (query cell, then neighbour cell), rounded to four
significant digits of the largest magnitude. A ``<script>`` tag loads it
from disk where ``fetch`` of a ``file://`` URL is refused.
"""

from __future__ import annotations

import json
import math
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
    largest = float(np.abs(values).max()) if values.size else 0.0
    digits = 4 - int(math.floor(math.log10(largest))) if largest > 0 else 4
    rounded = np.round(values, max(0, digits))
    data = {"h": h, "w": w, "h2": h2, "w2": w2, "s": rounded.tolist()}
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
