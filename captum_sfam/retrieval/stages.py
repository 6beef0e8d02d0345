r"""The stages of a retrieval run, in the order :func:`.run.explain_retrieval`
calls them.

1. :func:`prepare_directory`: check ``run.json`` against an earlier run (when
   resuming) and write it;
2. :func:`embed_gallery`: the gallery's embedding table, read back or
   embedded round-robin over the ranks;
3. :func:`explain_queries`: this rank's unfinished query batches, each by
   :func:`explain_batch` (search, maps by :func:`.maps.save_maps`, lines);
4. :func:`finish` (rank 0): :func:`merge_results`, the report and
   ``summary.json``.

Every stage reads the run from one :class:`.settings.RunSettings`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar

import torch
from torch import Tensor
from torch.nn import Module

from ..functional.similarity import exact_top_k
from ..similarity import embed
from . import distributed as dist_utils
from .maps import save_maps
from .metrics import mean_query_metrics, query_metrics
from .report import write_report
from .settings import RunSettings
from .store import (
    EMBEDDINGS,
    MANIFEST,
    RESULTS,
    SUMMARY,
    load_tensor,
    part_name,
    read_lines,
    remove_run,
    save_tensors,
    shard_name,
    write_json,
    write_lines,
)

T = TypeVar("T")


def _progress(
    iterable: Iterable[T], total: int, desc: str, enabled: bool
) -> Iterable[T]:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="batch")


def _embed_checked(model: Module, images: Tensor, name: str) -> Tensor:
    embeddings = embed(model, images).float()
    if not bool(torch.isfinite(embeddings).all()):
        raise ValueError(f"the model gives NaN or inf embeddings for {name}")
    return embeddings


# ------------------------------------------------------ 1. the directory ----
def prepare_directory(settings: RunSettings) -> None:
    r"""Make ``out`` ready for the run, on every rank together.

    With ``resume``, an earlier ``run.json`` must hold the same settings; rank
    0 then creates ``out`` (emptied of an earlier run's files unless
    ``resume``) and writes ``run.json``.

    Raises:
        ValueError: ``out`` holds a run with other settings (and ``resume``).
    """
    out, context = settings.out, settings.context
    manifest, current = out / MANIFEST, settings.manifest()
    if settings.resume and manifest.is_file():
        previous = json.loads(manifest.read_text())
        changed = sorted(key for key in current if previous.get(key) != current[key])
        if changed:
            raise ValueError(
                f"{out} holds a run with other settings ({', '.join(changed)}): "
                "pass resume=False to replace it, or another directory"
            )
    dist_utils.barrier(context)
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not settings.resume:
            remove_run(out)
        write_json(manifest, current)
    dist_utils.barrier(context)


# ------------------------------------------------------ 2. the gallery ------
def _cached_embeddings(settings: RunSettings) -> Optional[Tensor]:
    """Rank 0: an earlier run's table when resuming and it has one row per
    gallery item; None elsewhere."""
    path = settings.out / EMBEDDINGS
    if not (settings.context.is_main and settings.resume and path.is_file()):
        return None
    cached = load_tensor(path, "embeddings")
    return cached if cached.shape[0] == len(settings.gallery) else None


def _embed_gallery_batches(settings: RunSettings) -> Tensor:
    """Embed this rank's gallery batches (round-robin) and assemble the whole
    (M, D) table on every rank."""
    context, gallery = settings.context, settings.gallery
    mine = context.mine(gallery.num_batches)
    sizes = [len(gallery.batch_indices(b)) for b in range(gallery.num_batches)]
    # this rank's rows, packed in one buffer as they come (no list to join)
    packed: Optional[Tensor] = None
    offset = 0
    batches = _progress(
        gallery.batches(mine), len(mine), "gallery", settings.show_progress
    )
    with torch.no_grad():
        for _, images in batches:
            rows = _embed_checked(
                settings.model, images.to(settings.device), "the gallery"
            )
            if packed is None:
                total = sum(sizes[b] for b in mine)
                packed = rows.new_empty(total, rows.shape[1], device=context.device)
            packed[offset : offset + rows.shape[0]] = rows
            offset += rows.shape[0]
    width = dist_utils.all_max(context, 0 if packed is None else packed.shape[1])
    return dist_utils.assemble_rows(context, packed, sizes, width)


def embed_gallery(settings: RunSettings) -> Tensor:
    r"""The gallery's embedding table, the same on every rank.

    Read from ``gallery_embeddings.safetensors`` when resuming a run that
    wrote it (rank 0 reads, every rank receives); else embedded in batches,
    round-robin over the ranks, and saved by rank 0.

    Returns:
        *Tensor*: (M, D) float32 embeddings on ``settings.device``.

    Raises:
        ValueError: the model gives NaN or inf embeddings.
    """
    context = settings.context
    cached = _cached_embeddings(settings)
    if dist_utils.broadcast_flag(context, cached is not None):
        width = dist_utils.all_max(
            context, cached.shape[1] if cached is not None else 0
        )
        embeddings = dist_utils.broadcast_tensor(
            context, cached, (len(settings.gallery), width), torch.float32
        )
    else:
        embeddings = _embed_gallery_batches(settings)
        if context.is_main:
            save_tensors(settings.out / EMBEDDINGS, {"embeddings": embeddings})
    return embeddings.to(settings.device)


# ------------------------------------------------------ 3. the queries ------
def _record(
    settings: RunSettings,
    query: int,
    location: Tuple[int, int],
    values: Tensor,
    indices: Tensor,
) -> Dict[str, Any]:
    """The ``results.jsonl`` line of ``query``: its first k of the searched
    neighbours (``values``, ``indices``), the (batch, row) of its maps, and
    its metrics over all of them when labels are known."""
    queries, gallery = settings.queries, settings.gallery
    record: Dict[str, Any] = {"query": query}
    if queries.ids is not None:
        record["id"] = queries.ids[query]
    if queries.labels is not None:
        record["label"] = queries.labels[query]
    neighbours = []
    for rank in range(settings.k):
        index = int(indices[rank])
        item: Dict[str, Any] = {"rank": rank + 1, "index": index}
        if gallery.ids is not None:
            item["id"] = gallery.ids[index]
        if gallery.labels is not None:
            item["label"] = gallery.labels[index]
        item["similarity"] = float(values[rank])
        neighbours.append(item)
    record["neighbours"] = neighbours
    record["maps"] = {"file": shard_name(location[0]), "row": location[1]}
    relevant = settings.relevant(query)
    if relevant is not None:
        assert gallery.labels is not None
        ranked = [gallery.labels[int(i)] == record["label"] for i in indices]
        record["relevant"] = relevant
        record["metrics"] = query_metrics(ranked, relevant, len(ranked))
    return record


def explain_batch(
    settings: RunSettings, gallery_table: Tensor, number: int, images: Tensor
) -> int:
    r"""Search, explain and write query batch ``number``.

    Finds each query's exact top ``k_search`` in ``gallery_table`` (its
    excluded item skipped), writes the maps of its first k neighbours to the
    batch's shard, then the batch's lines to its part (the part's presence
    marks the batch done).

    Args:

        settings (RunSettings): the run.
        gallery_table (Tensor): (M, D) gallery embeddings.
        number (int): the batch's number in the query source.
        images (Tensor): the batch's images.

    Returns:
        *int*: the pairs explained (queries x k).
    """
    indices = settings.queries.batch_indices(number)
    images = images.to(settings.device)
    embeddings = _embed_checked(settings.model, images, "the queries")
    skip = None if settings.exclude is None else settings.exclude[indices]
    values, neighbours = exact_top_k(
        embeddings, gallery_table, settings.k_search, settings.metric,
        settings.gallery_chunk, skip,
    )  # fmt: skip
    values, neighbours = values.cpu(), neighbours.cpu()
    save_maps(settings, number, indices[0], images, neighbours[:, : settings.k])
    records = [
        _record(settings, query, (number, row), values[row], neighbours[row])
        for row, query in enumerate(indices)
    ]
    write_lines(settings.out / part_name(number), records)
    return len(indices) * settings.k


def explain_queries(settings: RunSettings, gallery_table: Tensor) -> int:
    r"""Explain this rank's query batches (round-robin) that have no part yet.

    Returns:
        *int*: the pairs explained by this call on this rank.
    """
    out, queries = settings.out, settings.queries
    todo = [
        b
        for b in settings.context.mine(queries.num_batches)
        if not (out / part_name(b)).is_file()
    ]
    pairs = 0
    batches = _progress(
        queries.batches(todo), len(todo), "queries", settings.show_progress
    )
    for number, images in batches:
        pairs += explain_batch(settings, gallery_table, number, images)
    return pairs


# ------------------------------------------------------ 4. the results ------
def _copy_records(
    handle: Any, out: Path, num_batches: int
) -> Iterator[Dict[str, float]]:
    """Write the lines of every part to ``handle``, in batch order, yielding
    the metrics of each query with a relevant gallery item as it passes."""
    for b in range(num_batches):
        for record in read_lines(out / part_name(b)):
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")
            if record.get("relevant"):
                yield record["metrics"]


def merge_results(out: Path, num_batches: int) -> Dict[str, float]:
    r"""Concatenate the batch parts into ``results.jsonl`` (atomically).

    Args:

        out (Path): the run directory.
        num_batches (int): the number of query batches.

    Returns:
        *dict[str, float]*: the mean metrics of the queries with a relevant
        gallery item (:func:`.metrics.mean_query_metrics`) and their number,
        ``queries_with_relevant``; empty when there is none.

    Raises:
        RuntimeError: a batch has no part (a rank wrote elsewhere).
    """
    missing = [b for b in range(num_batches) if not (out / part_name(b)).is_file()]
    if missing:
        raise RuntimeError(
            f"{len(missing)} query batches have no results in {out} (first: "
            f"{part_name(missing[0])}): is {out} shared by every rank?"
        )
    tmp = out / f".{RESULTS}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        means, counted = mean_query_metrics(_copy_records(handle, out, num_batches))
    tmp.replace(out / RESULTS)
    if counted:
        means["queries_with_relevant"] = counted
    return means


def finish(
    settings: RunSettings, timings: Dict[str, float]
) -> Tuple[Dict[str, float], Optional[Path]]:
    r"""Rank 0's last stage: merge the parts, draw the report (when asked;
    its time is added to ``timings`` as ``report_s``) and write
    ``summary.json``.

    Returns:
        *tuple* of **(metrics, report)**: the mean metrics, and the path of
        ``index.html`` or None.
    """
    metrics = merge_results(settings.out, settings.queries.num_batches)
    report = None
    if settings.report:
        tick = time.perf_counter()
        report = write_report(
            settings.out, settings.queries, settings.gallery,
            limit=settings.report_limit, mean=settings.mean, std=settings.std,
            metrics=metrics,
        )  # fmt: skip
        timings["report_s"] = time.perf_counter() - tick
    summary = {
        "queries": len(settings.queries),
        "gallery": len(settings.gallery),
        "k": settings.k,
        "member": settings.member,
        "metric": settings.metric,
        "layer": settings.layer,
        "world_size": settings.context.world_size,
        "metrics": metrics,
        "timings_rank0": timings,
    }
    write_json(settings.out / SUMMARY, summary)
    return metrics, report


__all__: List[str] = [
    "embed_gallery",
    "explain_batch",
    "explain_queries",
    "finish",
    "merge_results",
    "prepare_directory",
]
