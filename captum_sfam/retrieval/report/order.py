r"""Which queries the report shows, worst first.

Each record of ``results.jsonl`` gets the keys the page sorts by
(:func:`sort_keys`): its place in the query set, its AP, the rank of its
first true match and its similarity margin (rank 1 minus rank 2). The
default order (:func:`badness`), worst first:

- labelled queries with a true match in the gallery: the first true match's
  rank, highest first; ties by AP, lowest first; then by margin, smallest
  first; then in query order;
- then labelled queries whose label the gallery lacks (nothing to find), in
  query order;
- without labels: by margin, smallest first (the most ambiguous first; a
  query with one neighbour has no margin and comes last).

:func:`worst` keeps the worst ``limit`` of a run's records reading
``results.jsonl`` twice and holding only the keys and the kept records.
"""

from __future__ import annotations

import heapq
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..store import read_results

#: the page's sort orders: (key, label, worst first = ascending?)
SORTS = (
    ("worst", "worst first", True),
    ("order", "query order", True),
    ("ap", "AP, lowest first", True),
    ("first_true_rank", "first true match's rank, highest first", False),
    ("margin", "similarity margin, smallest first", True),
)


def average_precision(record: Dict[str, Any]) -> Optional[float]:
    """The record's AP@K (``metrics["ap@K"]``) when it has a true match."""
    if not record.get("relevant"):
        return None
    for name, value in record.get("metrics", {}).items():
        if name.startswith("ap@"):
            return float(value)
    return None


def first_true_rank(record: Dict[str, Any]) -> Optional[int]:
    """The rank of the record's first true match: ``first_true`` when the run
    audited it, else the first neighbour sharing the query's label, else one
    past the list; None without labels or true match."""
    if not record.get("relevant"):
        return None
    if "first_true" in record:
        return int(record["first_true"]["rank"])
    label, neighbours = record.get("label"), record["neighbours"]
    for item in neighbours:
        if "label" in item and item["label"] == label:
            return int(item["rank"])
    return len(neighbours) + 1


def margin(record: Dict[str, Any]) -> Optional[float]:
    """Similarity of rank 1 minus rank 2 (None with one neighbour)."""
    neighbours = record["neighbours"]
    if len(neighbours) < 2:
        return None
    return float(neighbours[0]["similarity"]) - float(neighbours[1]["similarity"])


def sort_keys(record: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """The page's sort keys of one record (None: unknown, sorted last)."""
    return {
        "order": int(record["query"]),
        "ap": average_precision(record),
        "first_true_rank": first_true_rank(record),
        "margin": margin(record),
    }


def badness(record: Dict[str, Any]) -> Tuple[float, ...]:
    """The default order's key: smaller is worse (see the module)."""
    keys = sort_keys(record)
    gap = keys["margin"]
    gap_key = math.inf if gap is None else gap
    query = float(keys["order"])  # type: ignore[arg-type]
    rank, ap = keys["first_true_rank"], keys["ap"]
    if rank is not None:
        return (0.0, -float(rank), math.inf if ap is None else ap, gap_key, query)
    if "label" in record:  # labelled, but nothing of its label in the gallery
        return (1.0, 0.0, 0.0, 0.0, query)
    return (0.0, 0.0, 0.0, gap_key, query)


def worst(out: Path, limit: int) -> Tuple[List[Dict[str, Any]], int]:
    r"""The ``limit`` worst records of a finished run, worst first.

    Args:

        out (Path): the run directory.
        limit (int): how many to keep.

    Returns:
        *tuple* of **(records, total)**: the kept records in the default
        order, and the number of queries in the run.
    """
    keys = []
    total = 0
    for position, record in enumerate(read_results(out)):
        keys.append((badness(record), position))
        total += 1
    chosen = heapq.nsmallest(limit, keys)
    where = {position: place for place, (_, position) in enumerate(chosen)}
    kept: List[Optional[Dict[str, Any]]] = [None] * len(chosen)
    for position, record in enumerate(read_results(out)):
        if position in where:
            kept[where[position]] = record
    return [r for r in kept if r is not None], total


__all__ = [
    "SORTS",
    "average_precision",
    "badness",
    "first_true_rank",
    "margin",
    "sort_keys",
    "worst",
]
