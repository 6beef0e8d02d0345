r"""The stages of a retrieval run, in the order :func:`.run.explain_retrieval`
calls them.

1. :func:`prepare_directory`: check ``run.json`` against an earlier run (when
   resuming) and write it;
2. :func:`embed_gallery`: the gallery's embedding table, read back or
   embedded in checkpointed chunks round-robin over the ranks
   (:mod:`.gallery`);
3. :func:`explain_queries`: this rank's unfinished query batches (a damaged
   part or shard is named and redone), each by :func:`explain_batch`
   (search by :mod:`.search`, maps by :func:`.maps.save_maps`, lines);
4. :func:`finish` (rank 0): :func:`merge_results`, the report and
   ``summary.json``.

Every stage reads the run from one :class:`.settings.RunSettings`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar

from torch import Tensor
from torch.nn import Module

from . import distributed as dist_utils
from . import timing
from .audit import annotate as audit_annotate
from .audit import audit_batch
from .gallery import embed_checked, embed_gallery, repaired
from .maps import save_maps
from .metrics import mean_query_metrics, query_metrics
from .report import write_report
from .search import annotate, search_batch
from .settings import RunSettings
from .store import (
    MANIFEST,
    RESULTS,
    SUMMARY,
    check_lines,
    check_tensors,
    part_name,
    read_lines,
    remove_run,
    remove_temporaries,
    shard_name,
    write_json,
    write_lines,
)
from .timing import section

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
    return embed_checked(model, images, name)


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
        remove_temporaries(out)  # a killed process's half-written files
        if not settings.resume:
            remove_run(out)
        write_json(manifest, current)
    dist_utils.barrier(context)


# ------------------------------------------------------ 2. the gallery ------
# embed_gallery: see .gallery (checkpointed chunks, resumed, repaired)


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
    values, neighbours, extras = search_batch(
        settings, gallery_table, embeddings, indices, number
    )
    with section("audit"):  # labelled queries' true matches (.audit)
        audits = audit_batch(
            settings, indices, embeddings, gallery_table, neighbours, settings.k
        )
    with section("maps"):
        top = neighbours[:, : settings.k]
        save_maps(settings, number, indices[0], images, top, audits)
    records = [
        _record(settings, query, (number, row), values[row], neighbours[row])
        for row, query in enumerate(indices)
    ]
    annotate(records, extras)
    for record, audit, row in zip(records, audits, top.tolist()):
        audit_annotate(settings, record, audit, row)
    write_lines(settings.out / part_name(number), records)
    return len(indices) * settings.k


def _finished(settings: RunSettings, number: int) -> bool:
    """Whether batch ``number`` has a whole part and a whole shard; a damaged
    one is named in a warning and both are removed (the batch is redone)."""
    out = settings.out
    part, shard = out / part_name(number), out / shard_name(number)
    if not part.is_file():
        return False
    queries = settings.queries.batch_indices(number)
    problem, damaged = check_lines(part, queries), part
    if problem is None:
        rows = {"query_maps": len(queries), "neighbour_maps": len(queries)}
        problem, damaged = check_tensors(shard, rows), shard
    if problem is None:
        return True
    repaired(settings, damaged, problem, f"explaining batch {number} again")
    part.unlink()
    shard.unlink(missing_ok=True)
    return False


def explain_queries(settings: RunSettings, gallery_table: Tensor) -> int:
    r"""Explain this rank's query batches (round-robin) that are not finished:
    no part yet, or a damaged part or shard (named in a warning, redone).

    Returns:
        *int*: the pairs explained by this call on this rank.
    """
    queries = settings.queries
    mine = settings.context.mine(queries.num_batches)
    todo = [b for b in mine if not (settings.resume and _finished(settings, b))]
    pairs = 0
    batches = _progress(
        queries.batches(todo), len(todo), "queries", settings.show_progress
    )
    for number, images in batches:
        pairs += explain_batch(settings, gallery_table, number, images)
    return pairs


# ------------------------------------------------------ 4. the results ------
def _copy_records(
    handle: Any, out: Path, num_batches: int, recalls: List[float]
) -> Iterator[Dict[str, float]]:
    """Write the lines of every part to ``handle``, in batch order, yielding
    the metrics of each query with a relevant gallery item as it passes (and
    collecting the FAISS checks' ``search_recall`` in ``recalls``)."""
    for b in range(num_batches):
        for record in read_lines(out / part_name(b)):
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")
            if "search_recall" in record:
                recalls.append(record["search_recall"])
            if record.get("relevant"):
                yield record["metrics"]


def merge_results(
    out: Path, num_batches: int, recalls: Optional[List[float]] = None
) -> Dict[str, float]:
    r"""Concatenate the batch parts into ``results.jsonl`` (atomically).

    Args:

        out (Path): the run directory.
        num_batches (int): the number of query batches.
        recalls (list, optional): receives the records' ``search_recall``.

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
        kept = [] if recalls is None else recalls
        copied = _copy_records(handle, out, num_batches, kept)
        means, counted = mean_query_metrics(copied)
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
    recalls: List[float] = []
    metrics = merge_results(settings.out, settings.queries.num_batches, recalls)
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
    summary.update(_audit_summary(settings, recalls))
    write_json(settings.out / SUMMARY, summary)
    return metrics, report


def _audit_summary(settings: RunSettings, recalls: List[float]) -> Dict[str, Any]:
    """The summary's fields on where the neighbours came from, the files left
    out or repaired, and the time per kind of work (:mod:`.timing`)."""
    system = settings.system
    found: Dict[str, Any] = {
        "neighbours": "system" if system is not None else settings.search,
        "skipped_images": settings.skipped,
        "repaired": settings.notes.get("repaired", []),
    }
    if system is not None:
        found["neighbours_file"] = system.source
        found["system_scores"] = system.scores is not None
    if recalls:
        found["search_recall"] = {
            "k": settings.k,
            "recall_at_k_vs_exact": sum(recalls) / len(recalls),
            "queries_checked": len(recalls),
        }
    clock = timing.current()
    if clock is not None:
        found["time_by_kind_rank0"] = clock.totals()
    return found


__all__: List[str] = [
    "embed_gallery",
    "explain_batch",
    "explain_queries",
    "finish",
    "merge_results",
    "prepare_directory",
]
