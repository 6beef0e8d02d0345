r"""The on-disk format of a retrieval run, and its reader.

A run directory holds, readable without pickle:

- ``run.json``: the settings of the run (checked on resume);
- ``results.jsonl``: one JSON line per query, in query order::

      {"query": 3, "id": "queries/cat/1.jpg", "label": "cat",
       "neighbours": [{"rank": 1, "index": 17, "id": "gallery/cat/4.jpg",
                       "label": "cat", "similarity": 0.91}, ...],
       "maps": {"file": "maps/batch-000000.safetensors", "row": 3},
       "metrics": {"recall@1": 1.0, "recall@5": 1.0, "ap@5": 1.0}}

  ``id`` and ``label`` are present when the run knows them (file paths and
  folder names, say); ``metrics`` when labels are known;
- ``maps/batch-NNNNNN.safetensors``: the maps of one batch of queries at the
  layer's resolution in float16: ``query_maps`` (n, k, h, w), the query's map
  for each of its k neighbours; ``neighbour_maps`` (n, k, h', w'), each
  neighbour's map; ``contrast_maps`` (n, h, w) when the run made them;
- ``parts/batch-NNNNNN.jsonl``: the lines of one batch, written after its
  maps; a batch whose part exists is done, so a rerun resumes after it;
- ``gallery_embeddings.safetensors``: the gallery's embeddings (M, D), float32;
  while the gallery is embedded, ``gallery/batches-FFFFFF-CCCCCC.safetensors``
  hold its finished chunks (C batches from batch F; removed once the whole
  table is written);
- ``summary.json``: counts, timings, unreadable files skipped and mean
  metrics; ``index.html``: the report.

Every safetensors file records a SHA-256 of its tensors in its metadata
(``sha256``): :func:`check_tensors` and :func:`check_lines` tell a whole file
from a damaged one when a run resumes.

safetensors files are memory-mapped by :func:`load_maps`: reading one query's
maps reads those rows only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import torch
from torch import Tensor

from .._optional import require_extra
from .timing import section

PathLike = Union[str, Path]

#: the dtype maps are stored in
MAP_DTYPE = torch.float16
RESULTS = "results.jsonl"
MANIFEST = "run.json"
SUMMARY = "summary.json"
EMBEDDINGS = "gallery_embeddings.safetensors"
MAPS_DIR = "maps"
PARTS_DIR = "parts"
GALLERY_DIR = "gallery"
#: every name a run writes (``resume=False`` removes these and nothing else)
RUN_FILES = (RESULTS, MANIFEST, SUMMARY, EMBEDDINGS, "index.html")
RUN_FILES += ("report.css", "report.js")  # the report's (.report)
RUN_DIRS = (MAPS_DIR, PARTS_DIR, GALLERY_DIR, "thumbs", "pairs", "plots")


def shard_name(batch: int) -> str:
    return f"{MAPS_DIR}/batch-{batch:06d}.safetensors"


def part_name(batch: int) -> str:
    return f"{PARTS_DIR}/batch-{batch:06d}.jsonl"


def chunk_name(first: int, count: int) -> str:
    """The checkpoint of ``count`` gallery batches from batch ``first``."""
    return f"{GALLERY_DIR}/batches-{first:06d}-{count:06d}.safetensors"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so a
    reader (or a rerun after a crash) sees the whole file or none of it."""
    with section("write"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(value, indent=1) + "\n").encode())


def write_lines(path: Path, records: List[Dict[str, Any]]) -> None:
    """Write JSON lines atomically."""
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    _atomic_write_bytes(path, text.encode())


def read_lines(path: Path) -> List[Dict[str, Any]]:
    """The JSON lines of ``path``.

    Raises:
        ValueError: a line is not JSON (the message names the file and line).
    """
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: damaged JSON line ({error}); delete "
                    "the file and rerun to recompute it"
                ) from None
    return records


def tensors_digest(tensors: Dict[str, Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors``."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def save_tensors(
    path: Path, tensors: Dict[str, Tensor], metadata: Optional[Dict[str, str]] = None
) -> None:
    """Write named tensors as a safetensors file, atomically (a temporary file
    renamed; written straight to disk, with no in-memory copy of the file),
    with their :func:`tensors_digest` as metadata ``sha256``."""
    require_extra("safetensors", "safetensors")
    from safetensors.torch import save_file

    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    with section("write"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        metadata = {**(metadata or {}), "sha256": tensors_digest(cpu)}
        save_file(cpu, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def check_tensors(path: Path, rows: Dict[str, int]) -> Optional[str]:
    r"""What is wrong with a safetensors file a run wrote, or None.

    Args:

        path (Path): the file.
        rows (dict[str, int]): the tensors it must hold and their number of
                    rows (first dimension).

    Returns:
        *str* or *None*: the problem (not a safetensors file, truncated, a
        tensor missing or of another length, a checksum that differs from
        the one recorded at write), or None for a whole file.
    """
    require_extra("safetensors", "safetensors")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get("sha256")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # noqa: BLE001 - any failure to parse is damage
        return f"unreadable ({type(error).__name__}: {error})"
    for name, count in rows.items():
        if name not in tensors:
            return f"no tensor {name!r}"
        if tensors[name].dim() == 0 or tensors[name].shape[0] != count:
            return f"{name!r} has shape {tuple(tensors[name].shape)}, not {count} rows"
    if recorded is not None and recorded != tensors_digest(tensors):
        return "checksum differs from the one recorded at write"
    return None


def check_lines(path: Path, queries: List[int]) -> Optional[str]:
    """What is wrong with a batch's part (its lines must be the records of
    ``queries``, in order), or None for a whole part."""
    try:
        found = [record.get("query") for record in read_lines(path)]
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        return f"unreadable ({error})"
    if found != list(queries):
        return f"holds the records of queries {found}, not {list(queries)}"
    return None


def load_tensor(path: Path, name: str) -> Tensor:
    require_extra("safetensors", "safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(name)


def read_results(out: PathLike) -> Iterator[Dict[str, Any]]:
    r"""The records of ``results.jsonl`` of a finished run, in query order.

    Args:

        out (str or Path): the run directory.

    Returns:
        *Iterator[dict]*: one dict per query (see the module docstring),
        read lazily line by line.
    """
    path = Path(out) / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"no {RESULTS} in {out}: the run has not finished")
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def load_maps(
    out: PathLike,
    record: Dict[str, Any],
    dtype: Optional[torch.dtype] = None,
) -> Dict[str, Tensor]:
    r"""The maps of one query of a run, read from its memory-mapped shard.

    Args:

        out (str or Path): the run directory.
        record (dict): the query's record from :func:`read_results`.
        dtype (torch.dtype, optional): convert the maps to this dtype
                    (they are stored as float16).
                    Default: None (float16)

    Returns:
        *dict[str, Tensor]*: ``"query"`` (k, h, w), the query's map for each
        neighbour, best first; ``"neighbours"`` (k, h', w'), each neighbour's
        map; ``"contrast"`` (h, w) when the run made contrastive maps;
        ``"points"`` (k, h, w, h', w'), each pair's point-to-point scores;
        ``"wrong_contrast"`` (k, h, w), why each wrong neighbour ranked
        above a true match rather than the first true match after it (zero
        elsewhere), when there is one.
        Layer resolution: upsample with ``LayerAttribution.interpolate``.

    Examples::

        >>> for record in read_results("run"):
        ...     maps = load_maps("run", record)
        ...     best = maps["neighbours"][0]  # the rank-1 neighbour's map
    """
    require_extra("safetensors", "safetensors")
    from safetensors import safe_open

    where = record["maps"]
    row = int(where["row"])
    names = {"query": "query_maps", "neighbours": "neighbour_maps"}
    names["contrast"] = "contrast_maps"
    names["points"] = "point_maps"  # (k, h, w, h', w'): see .maps.point_maps
    names["wrong_contrast"] = "wrong_contrast_maps"  # (k, h, w): .audit
    result = {}
    with safe_open(str(Path(out) / where["file"]), framework="pt") as handle:
        present = set(handle.keys())
        for key, name in names.items():
            if name in present:
                value = handle.get_slice(name)[row : row + 1][0]
                result[key] = value if dtype is None else value.to(dtype)
    return result


def remove_temporaries(out: Path) -> List[Path]:
    """Delete the temporary files (``.NAME.tmp-PID``) a killed process left in
    ``out`` and its run folders; returns them."""
    found = []
    for folder in (out, *(out / name for name in RUN_DIRS)):
        if folder.is_dir():
            found += [p for p in folder.glob(".*.tmp*") if p.is_file()]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def remove_run(out: Path) -> None:
    """Delete what a run wrote in ``out`` (its known file names only)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        folder = out / name
        if folder.is_dir():
            for child in folder.iterdir():
                if child.is_file():
                    child.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()
