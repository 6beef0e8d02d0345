r"""Your system's neighbours: read the (query, neighbour) pairs a run explains.

An auditor explains the ranked lists a production system returned (a FAISS
index, a vector database, a log), not a search of ours. :func:`read_neighbours`
reads them from a file or from Python values and resolves every id against
the run's query and gallery ids:

- JSON lines, one per query:
  ``{"query": "cat/1.jpg", "neighbours": ["cat/4.jpg", "dog/2.jpg"],
  "scores": [0.93, 0.71]}`` (``scores`` optional, same length);
- CSV, one row per pair: ``query,neighbour,rank[,score]`` (a header row with
  these names is optional; ranks 1..k per query, any row order);
- in Python: a list of such dicts, or a mapping ``{query id: [neighbour
  ids]}``.

An id matches an item whose id is equal, or whose path ends with it
(``cat/1.jpg`` matches ``/data/queries/cat/1.jpg`` when no other item's path
ends so); without ids, items are named by their index. Every query of the run
needs one list, and every list the same length k.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .data import ImageSource

NeighboursType = Union[str, Path, Sequence[Mapping[str, Any]], Mapping[Any, Sequence]]
_AMBIGUOUS = -1


@dataclass(frozen=True)
class SystemNeighbours:
    r"""The system's ranked lists, resolved to the run's indices.

    ``indices`` (Q, k) are gallery indices, row i the list of query i, in the
    system's order; ``scores`` (Q, k) float64 the system's scores, or None;
    ``source`` names where they came from (a file, or "neighbours=").
    """

    indices: Tensor
    scores: Optional[Tensor]
    source: str

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


class _Names:
    """Resolves ids to the indices of one source (exact id, else a unique
    path suffix; integers without ids)."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source
        self.exact: Dict[str, int] = {}
        self.suffix: Dict[Tuple[str, ...], int] = {}
        if source.ids is None:
            return
        for index, name in enumerate(source.ids):
            self.exact.setdefault(name, index)
            parts = PurePosixPath(name.replace("\\", "/")).parts
            for start in range(len(parts)):
                key = parts[start:]
                self.suffix[key] = index if key not in self.suffix else _AMBIGUOUS

    def resolve(self, name: Any, where: str) -> int:
        text = str(name).strip()
        if self.source.ids is None:
            if text.lstrip("-").isdigit() and 0 <= int(text) < len(self.source):
                return int(text)
            raise ValueError(
                f"{where}: unknown {self.source.name} item {name!r} (the run names "
                f"its {self.source.name} by index, 0 to {len(self.source) - 1})"
            )
        if text in self.exact:
            return self.exact[text]
        key = PurePosixPath(text.replace("\\", "/")).parts
        index = self.suffix.get(key)
        if index == _AMBIGUOUS:
            raise ValueError(
                f"{where}: {self.source.name} id {name!r} matches several items; "
                "give more of its path"
            )
        if index is None:
            for left_out, reason in self.source.unreadable_ids.items():
                if PurePosixPath(left_out.replace("\\", "/")).parts[-len(key) :] == key:
                    raise ValueError(
                        f"{where}: {self.source.name} id {name!r} is an unreadable "
                        f"image the run left out ({reason}); repair the file or "
                        "drop it from the lists"
                    )
            raise ValueError(
                f"{where}: unknown {self.source.name} id {name!r} (not an id of the "
                f"run, nor the end of one, e.g. {self.source.ids[0]!r})"
            )
        return index


def _json_lines(path: Path) -> Iterator[Tuple[str, Mapping[str, Any]]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not a JSON line ({error})") from None


def _csv_rows(path: Path) -> Iterator[Tuple[str, Mapping[str, Any]]]:
    """One ``{"query", "neighbours", "scores"}`` per query, ordered by rank."""
    lists: Dict[str, List[Tuple[int, str, Optional[str], str]]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            where = f"{path}, line {number}"
            if not row or not "".join(row).strip():
                continue
            if number == 1 and [c.strip().lower() for c in row[:3]] == [
                "query", "neighbour", "rank",
            ]:  # fmt: skip
                continue
            if len(row) not in (3, 4):
                raise ValueError(
                    f"{where}: expected query,neighbour,rank[,score], got {row}"
                )
            try:
                rank = int(row[2])
            except ValueError:
                raise ValueError(
                    f"{where}: rank {row[2]!r} is not a whole number"
                ) from None
            score = row[3] if len(row) == 4 else None
            lists.setdefault(row[0].strip(), []).append((rank, row[1], score, where))
    for query, pairs in lists.items():
        pairs.sort(key=lambda p: p[0])
        ranks = [p[0] for p in pairs]
        if ranks != list(range(1, len(pairs) + 1)):
            raise ValueError(
                f"{pairs[0][3]}: query {query!r} has ranks {ranks}, not 1 to "
                f"{len(pairs)}"
            )
        scores = [p[2] for p in pairs]
        item: Dict[str, Any] = {"query": query, "neighbours": [p[1] for p in pairs]}
        if all(s is not None for s in scores):
            try:
                item["scores"] = [float(s) for s in scores]  # type: ignore[arg-type]
            except ValueError as error:
                raise ValueError(f"{pairs[0][3]}: query {query!r}: {error}") from None
        yield pairs[0][3], item


def _entries(source: NeighboursType) -> Tuple[str, Iterator[Tuple[str, Any]]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"neighbours: no such file {str(path)!r}")
        with open(path, encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "")
        reader = _json_lines if first.lstrip().startswith("{") else _csv_rows
        return str(path), reader(path)
    if isinstance(source, Mapping):
        items = [{"query": q, "neighbours": list(n)} for q, n in source.items()]
        return "neighbours=", (
            (f"neighbours=[{q!r}]", i) for q, i in zip(source, items)
        )
    if isinstance(source, Sequence):
        return "neighbours=", ((f"neighbours[{i}]", e) for i, e in enumerate(source))
    raise TypeError(
        "neighbours must be a file (JSON lines or CSV), a list of "
        f"{{'query', 'neighbours'[, 'scores']}} dicts or a mapping, got "
        f"{type(source).__name__}"
    )


def read_neighbours(
    source: NeighboursType, queries: ImageSource, gallery: ImageSource
) -> SystemNeighbours:
    r"""The system's ranked lists of every query, as gallery indices.

    Args:

        source (str, Path, list or dict): the file or values (see the module
                    docstring).
        queries (ImageSource): the run's queries (their ids name them).
        gallery (ImageSource): the run's gallery.

    Returns:
        *SystemNeighbours*: (Q, k) indices in query order, the scores if given.

    Raises:
        ValueError: an unknown or ambiguous id, a query listed twice, a
                    neighbour twice in one list, lists of different lengths,
                    scores on some lists only or of another length, or a
                    query of the run without a list; each names the file and
                    line (or the list's position).
    """
    name, entries = _entries(source)
    q_names, g_names = _Names(queries), _Names(gallery)
    rows: Dict[int, Tuple[List[int], Optional[List[float]], str]] = {}
    k: Optional[int] = None
    scored: Optional[bool] = None
    for where, entry in entries:
        if not isinstance(entry, Mapping) or "query" not in entry:
            raise ValueError(
                f"{where}: expected an object with 'query' and 'neighbours'"
            )
        listed = entry.get("neighbours")
        if not isinstance(listed, (list, tuple)) or not listed:
            raise ValueError(f"{where}: 'neighbours' must be a non-empty list of ids")
        query = q_names.resolve(entry["query"], where)
        if query in rows:
            raise ValueError(
                f"{where}: query {entry['query']!r} is listed again (first at "
                f"{rows[query][2]})"
            )
        indices = [g_names.resolve(n, where) for n in listed]
        if len(set(indices)) != len(indices):
            raise ValueError(f"{where}: a neighbour appears twice in the list")
        k = len(indices) if k is None else k
        if len(indices) != k:
            raise ValueError(
                f"{where}: {len(indices)} neighbours, the lists before have {k}: "
                "every query needs the same number"
            )
        scores = entry.get("scores")
        if scored is None:
            scored = scores is not None
        if (scores is not None) != scored:
            raise ValueError(f"{where}: scores on some lists only")
        if scores is not None:
            if not isinstance(scores, (list, tuple)) or len(scores) != k:
                raise ValueError(f"{where}: 'scores' must be a list of {k} numbers")
            scores = [float(s) for s in scores]
        rows[query] = (indices, scores, where)
    missing = [q for q in range(len(queries)) if q not in rows]
    if missing:
        raise ValueError(
            f"{name}: no neighbours for {len(missing)} of the {len(queries)} "
            f"queries (first: {queries.item_id(missing[0])!r}); list every query, "
            "or run on the listed queries only"
        )
    indices = torch.tensor([rows[q][0] for q in range(len(queries))], dtype=torch.long)
    scores_t = None
    if scored:
        scores_t = torch.tensor(
            [rows[q][1] for q in range(len(queries))], dtype=torch.float64
        )
        if not bool(torch.isfinite(scores_t).all()):
            raise ValueError(f"{name}: the scores hold NaN or inf")
    return SystemNeighbours(indices, scores_t, name)


__all__ = ["NeighboursType", "SystemNeighbours", "read_neighbours"]
