r"""Explain a whole retrieval run: every query's top-k, and a map for each match.

:func:`explain_retrieval` embeds the gallery in batches, finds each query's
exact top-k by the model's metric with chunked matrix products (no
queries x gallery matrix is held), then explains every (query, neighbour)
pair with a member of the pair-attribution family, one batch of queries at a
time, re-running the network only on the images of that batch and its
neighbours. Memory is bounded by the batch sizes and the gallery's embedding
table (M x D floats), not by the activations of the gallery. Results stream to
disk (see :mod:`.store`); a rerun resumes after the last finished batch; under
``torchrun`` the work is split over the ranks (see :mod:`.distributed`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Module

from ..functional.similarity import DEFAULT_GALLERY_CHUNK, exact_top_k
from ..methods import REGISTRY, PairAttribution, supports_contrast
from ..similarity import embed
from . import distributed as dist_utils
from .data import ImageSource, SourceType
from .metrics import query_metrics
from .store import (
    EMBEDDINGS,
    MANIFEST,
    MAP_DTYPE,
    RESULTS,
    SUMMARY,
    load_maps,
    load_tensor,
    part_name,
    read_lines,
    read_results,
    remove_run,
    save_tensors,
    shard_name,
    write_json,
    write_lines,
)

#: format version written to run.json
FORMAT_VERSION = 1


@dataclass
class RetrievalRun:
    r"""What :func:`explain_retrieval` did, and how to read it.

    ``metrics`` holds the mean Recall@1, Recall@5 and mAP@k over the queries
    that have a relevant gallery item, when labels are known (empty
    otherwise, and on ranks other than 0). ``pairs_explained`` and
    ``seconds`` count this call on this rank only (a resumed run counts the
    batches it did).
    """

    out: Path
    num_queries: int
    num_gallery: int
    k: int
    metrics: Dict[str, float] = field(default_factory=dict)
    report: Optional[Path] = None
    pairs_explained: int = 0
    seconds: float = 0.0
    timings: Dict[str, float] = field(default_factory=dict)

    def records(self) -> Iterator[Dict[str, Any]]:
        """The lines of ``results.jsonl``, in query order."""
        return read_results(self.out)

    def maps(self, record: Dict[str, Any]) -> Dict[str, Tensor]:
        """The float16 maps of one record (see :func:`.store.load_maps`)."""
        return load_maps(self.out, record)


def _fingerprint(values: Optional[Sequence[Any]]) -> Optional[str]:
    if values is None:
        return None
    digest = hashlib.sha256(json.dumps([str(v) for v in values]).encode())
    return digest.hexdigest()[:16]


def _model_fingerprint(model: Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _layer_name(model: Module, layer: Module) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError("layer is not a submodule of model")


def _build_method(
    member: Union[str, PairAttribution],
    model: Module,
    layer: Module,
    metric: Optional[str],
) -> Tuple[PairAttribution, str, str]:
    """The attribution object, the metric and the member's name."""
    if isinstance(member, PairAttribution):
        if member.layer is not layer:
            raise ValueError("member explains another layer than layer")
        if metric is not None and metric != member.metric:
            raise ValueError(
                f"metric={metric!r} differs from the member's metric {member.metric!r}"
            )
        return member, member.metric, type(member).__name__
    if not isinstance(member, str) or member not in REGISTRY:
        raise ValueError(
            f"member must be a PairAttribution or one of {', '.join(REGISTRY)}, "
            f"got {member!r}"
        )
    metric = "cosine" if metric is None else metric
    return REGISTRY[member].cls(model, layer, metric=metric), metric, member


def _model_device(model: Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _progress(iterable, total: int, desc: str, enabled: bool):
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


def _pair_maps(
    method: PairAttribution,
    images: Tensor,
    neighbours: Tensor,
    gallery: ImageSource,
    device: torch.device,
    relu: bool,
    batch_size: int,
) -> Tuple[Tensor, Tensor]:
    """Maps of each query (n) against each of its k neighbours: query maps
    (n, k, h, w) and neighbour maps (n, k, h', w')."""
    n, k = neighbours.shape
    if method.forward_only:
        # each distinct neighbour of the batch runs through the network once
        unique, inverse = torch.unique(neighbours.flatten().cpu(), return_inverse=True)
        items = gallery.take(unique.tolist()).to(device)
        q_maps, g_maps = method.attribute_pairs(
            images, items, relu_attributions=relu, return_gallery_attributions=True,
            forward_batch_size=batch_size,
        )  # fmt: skip
        rows = torch.arange(n)[:, None]
        columns = inverse.view(n, k)
        return q_maps[rows, columns, 0], g_maps[rows, columns, 0]
    # gradient members: one backward per pair, in batches of pairs
    q_parts, g_parts = [], []
    flat = neighbours.flatten().cpu().tolist()
    for start in range(0, n * k, batch_size):
        pairs = range(start, min(start + batch_size, n * k))
        queries = images[torch.tensor([p // k for p in pairs], device=images.device)]
        support = gallery.take([flat[p] for p in pairs]).to(device)[:, None]
        q_map, g_map = method.attribute(
            queries, support, relu_attributions=relu, return_support_attributions=True
        )
        q_parts.append(q_map[:, 0])
        g_parts.append(g_map[:, 0, 0])
    q_maps, g_maps = torch.cat(q_parts), torch.cat(g_parts)
    return q_maps.view(n, k, *q_maps.shape[1:]), g_maps.view(n, k, *g_maps.shape[1:])


def _contrast_maps(
    method: PairAttribution,
    images: Tensor,
    neighbours: Tensor,
    gallery: ImageSource,
    device: torch.device,
    relu: bool,
) -> Tensor:
    """(n, h, w) maps of each query: why its rank-1 neighbour rather than its
    rank-2 neighbour (the family's ``attribute(..., contrast=...)``)."""
    first = gallery.take(neighbours[:, 0].tolist()).to(device)[:, None]
    second = gallery.take(neighbours[:, 1].tolist()).to(device)[:, None]
    maps = method.attribute(  # type: ignore[call-arg]
        images, first, contrast=second, relu_attributions=relu
    )
    return maps[:, 0]


def _record(
    query: int,
    queries: ImageSource,
    gallery: ImageSource,
    values: Tensor,
    indices: Tensor,
    k: int,
    batch: int,
    row: int,
    relevant: Optional[int],
) -> Dict[str, Any]:
    record: Dict[str, Any] = {"query": query}
    if queries.ids is not None:
        record["id"] = queries.ids[query]
    if queries.labels is not None:
        record["label"] = queries.labels[query]
    neighbours = []
    for rank in range(k):
        index = int(indices[rank])
        item: Dict[str, Any] = {"rank": rank + 1, "index": index}
        if gallery.ids is not None:
            item["id"] = gallery.ids[index]
        if gallery.labels is not None:
            item["label"] = gallery.labels[index]
        item["similarity"] = float(values[rank])
        neighbours.append(item)
    record["neighbours"] = neighbours
    record["maps"] = {"file": shard_name(batch), "row": row}
    if relevant is not None and queries.labels is not None:
        assert gallery.labels is not None
        ranked = [gallery.labels[int(i)] == record["label"] for i in indices]
        record["relevant"] = relevant
        record["metrics"] = query_metrics(ranked, relevant, len(ranked))
    return record


def explain_retrieval(
    model: Module,
    layer: Module,
    queries: SourceType,
    gallery: SourceType,
    out: Union[str, Path],
    member: Union[str, PairAttribution] = "sfam",
    k: int = 5,
    metric: Optional[str] = None,
    batch_size: Optional[int] = None,
    query_ids: Optional[Sequence[Any]] = None,
    gallery_ids: Optional[Sequence[Any]] = None,
    query_labels: Optional[Sequence[Any]] = None,
    gallery_labels: Optional[Sequence[Any]] = None,
    exclude_same_id: bool = True,
    relu_attributions: bool = False,
    contrast: bool = False,
    report: bool = True,
    report_limit: int = 100,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    device: Optional[Union[str, torch.device]] = None,
    num_workers: Optional[int] = None,
    gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
    resume: bool = True,
    progress: bool = False,
) -> RetrievalRun:
    r"""Top-k retrieval of every query and an explanation of every match.

    For each query: its k most similar gallery items by the model's metric
    (exact search), and for each (query, neighbour) pair the member's map of
    the query and of the neighbour, written to ``out`` as they are made:
    ``results.jsonl`` (one line per query), float16 maps at the layer's
    resolution in safetensors shards, ``summary.json`` and a static
    ``index.html`` report (see :mod:`captum_sfam.retrieval.store` for the
    format, :func:`read_results` and :func:`load_maps` to read it).

    Under ``torchrun`` (``torch.distributed`` initialised, see
    :func:`init_distributed`) every rank calls this function with the same
    arguments: the gallery's batches are embedded round-robin over the ranks
    and gathered, the query batches are explained round-robin, each rank
    writes its batches, and rank 0 merges ``results.jsonl`` and writes the
    report. The result equals a one-process run. ``out`` must be on a
    filesystem every rank sees.

    Args:

        model (torch.nn.Module): the embedding model, images (B, C, H, W) ->
                    embeddings (B, D) (more dimensions are flattened), on its
                    device, usually in eval mode.
        layer (torch.nn.Module): the layer of ``model`` to explain.
        queries (Tensor, Dataset or DataLoader): (Q, C, H, W) images, or a
                    map-style dataset of images ((C, H, W) tensors,
                    ``(image, label, ...)`` tuples or ``{"image": ...}``
                    dicts), or a DataLoader over one (its batch size, workers
                    and collate_fn are used; items are keyed by dataset index).
        gallery (Tensor, Dataset or DataLoader): the M gallery images, as
                    ``queries``.
        out (str or Path): the run directory (created).
        member (str or PairAttribution, optional): a key of
                    :data:`captum_sfam.methods.REGISTRY` ("sfam",
                    "simgradcam", "ram", "decomposition", "cgram",
                    "gradfam"), built on ``model`` and ``layer`` with
                    ``metric``; or an attribution object built on them.
                    Forward-only members explain a batch with one
                    ``attribute_pairs`` call; gradient members (CG-RAM,
                    Grad-FAM) with one backward pass per pair.
                    Default: "sfam"
        k (int, optional): neighbours explained per query.
                    Default: 5
        metric (str, optional): "cosine" or "euclidean", the model's metric:
                    it ranks the gallery and parameterises the member.
                    Default: the member object's metric, else "cosine"
        batch_size (int, optional): queries per batch (a batch also loads its
                    neighbours, at most ``batch_size * k`` images, and is the
                    unit written to disk and resumed), gallery images per
                    embedding batch, and images per forward pass.
                    Default: the DataLoader's batch size, else 32
        query_ids, gallery_ids (Sequence, optional): a name per item (a file
                    path, say), written to the results; by default the
                    dataset's ``paths`` attribute if any, else the index.
                    Default: None
        query_labels, gallery_labels (Sequence, optional): a label per item;
                    with both, each query gets Recall@1, Recall@5 and AP@k' with
                    k' = max(k, 5) (the search looks at k' neighbours), and the
                    summary their means. By default the dataset's ``labels``
                    attribute if any.
                    Default: None
        exclude_same_id (bool, optional): a query never retrieves the gallery
                    item with the same id (the same file, when queries and
                    gallery overlap).
                    Default: True
        relu_attributions (bool, optional): ReLU on the maps, as in
                    :meth:`PairAttribution.attribute`.
                    Default: False
        contrast (bool, optional): also write each query's contrastive map,
                    rank 1 against rank 2, when the family's ``attribute`` has
                    a ``contrast=`` argument (ValueError otherwise).
                    Default: False
        report (bool, optional): write ``index.html`` (rank 0).
                    Default: True
        report_limit (int, optional): queries shown in the report (the first
                    ones; ``results.jsonl`` always has all).
                    Default: 100
        mean, std (Sequence[float], optional): the normalisation of the model
                    inputs, undone to draw the report's thumbnails; by default
                    each image is min-max scaled for display.
                    Default: None
        device (str or torch.device, optional): where images go for the
                    forward passes. Default: the model's device
        num_workers (int, optional): DataLoader workers reading datasets.
                    Default: the DataLoader's, else 0
        gallery_chunk (int, optional): gallery rows scored at once by the
                    top-k search.
                    Default: 4096
        resume (bool, optional): keep the finished batches of an earlier run
                    with the same settings in ``out`` and do the rest; False
                    deletes them first.
                    Default: True
        progress (bool, optional): progress bars (tqdm) on rank 0.
                    Default: False

    Returns:
        *RetrievalRun*: the run directory, counts, mean metrics, the report's
        path, and readers of the records and maps.

    Raises:
        ValueError: ``out`` holds a run with other settings (and ``resume``);
                    k larger than the gallery; an unknown member or a metric
                    the member does not support; NaN or inf embeddings.
        TypeError: queries or gallery of an unsupported type.

    Examples::

        >>> net = torchvision.models.resnet50().eval()
        >>> net.fc = torch.nn.Identity()
        >>> run = explain_retrieval(net, net.layer4, queries, gallery, "run",
        ...                         member="sfam", k=5, metric="cosine")
        >>> for record in run.records():
        ...     maps = run.maps(record)  # float16 (k, 7, 7) query/neighbour maps
    """
    start_time = time.perf_counter()
    if not isinstance(model, Module):
        raise TypeError("model must be a torch.nn.Module (the embedding model)")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    method, metric, member_name = _build_method(member, model, layer, metric)
    layer_name = _layer_name(model, layer)
    if contrast and not supports_contrast(method):
        raise ValueError(
            f"contrast=True: {type(method).__name__} has no contrastive map (its "
            "maps do not depend on the support); choose another member"
        )
    if contrast and k < 2:
        raise ValueError("contrast=True needs k >= 2 (rank 1 against rank 2)")
    context = dist_utils.current_context()
    device = torch.device(device) if device is not None else _model_device(model)
    q_source = ImageSource(
        queries, "queries", query_ids, query_labels, batch_size, num_workers
    )
    g_source = ImageSource(
        gallery,
        "gallery",
        gallery_ids,
        gallery_labels,
        q_source.batch_size,
        num_workers,
    )
    batch = q_source.batch_size
    out = Path(out)
    num_q, num_g = len(q_source), len(g_source)

    # which gallery item each query must skip (its own file)
    exclude = None
    if exclude_same_id and q_source.ids is not None and g_source.ids is not None:
        positions = {name: i for i, name in enumerate(g_source.ids)}
        if len(positions) != num_g:
            raise ValueError("gallery ids must be unique")
        exclude = torch.tensor([positions.get(name, -1) for name in q_source.ids])
        if not bool((exclude >= 0).any()):
            exclude = None
    available = num_g - (0 if exclude is None else 1)
    if k > available:
        raise ValueError(f"k = {k} but the gallery has {available} items to rank")
    labelled = q_source.labels is not None and g_source.labels is not None
    k_search = min(max(k, 5), available) if labelled else k
    label_counts = Counter(g_source.labels) if labelled else None

    settings = {
        "format": FORMAT_VERSION,
        "member": member_name,
        "metric": metric,
        "layer": layer_name,
        "k": k,
        "batch_size": batch,
        "num_queries": num_q,
        "num_gallery": num_g,
        "query_ids": _fingerprint(q_source.ids),
        "gallery_ids": _fingerprint(g_source.ids),
        "labels": _fingerprint(
            [q_source.labels, g_source.labels] if labelled else None
        ),
        "exclude_same_id": exclude is not None,
        "relu_attributions": relu_attributions,
        "contrast": contrast,
        "model": _model_fingerprint(model),
    }
    manifest = out / MANIFEST
    if resume and manifest.is_file():
        previous = json.loads(manifest.read_text())
        changed = sorted(key for key in settings if previous.get(key) != settings[key])
        if changed:
            raise ValueError(
                f"{out} holds a run with other settings ({', '.join(changed)}): "
                "pass resume=False to replace it, or another directory"
            )
    dist_utils.barrier(context)
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            remove_run(out)
        write_json(manifest, settings)
    dist_utils.barrier(context)

    timings: Dict[str, float] = {}
    # 1. gallery embeddings: cached, or embedded round-robin and gathered
    tick = time.perf_counter()
    cached = None
    if context.is_main and resume and (out / EMBEDDINGS).is_file():
        cached = load_tensor(out / EMBEDDINGS, "embeddings")
        if cached.shape[0] != num_g:
            cached = None
    if dist_utils.broadcast_flag(context, cached is not None):
        width = dist_utils.all_max(
            context, cached.shape[1] if cached is not None else 0
        )
        embeddings = dist_utils.broadcast_tensor(
            context, cached, (num_g, width), torch.float32
        )
    else:
        mine = context.mine(g_source.num_batches)
        sizes = [len(g_source.batch_indices(b)) for b in range(g_source.num_batches)]
        # this rank's rows, packed in one buffer as they come (no list to join)
        packed: Optional[Tensor] = None
        offset = 0
        with torch.no_grad():
            for _, images in _progress(
                g_source.batches(mine),
                len(mine),
                "gallery",
                progress and context.is_main,
            ):
                rows = _embed_checked(model, images.to(device), "the gallery")
                if packed is None:
                    total = sum(sizes[b] for b in mine)
                    packed = rows.new_empty(total, rows.shape[1], device=context.device)
                packed[offset : offset + rows.shape[0]] = rows
                offset += rows.shape[0]
        width = dist_utils.all_max(context, 0 if packed is None else packed.shape[1])
        embeddings = dist_utils.assemble_rows(context, packed, sizes, width)
        del packed
        if context.is_main:
            save_tensors(out / EMBEDDINGS, {"embeddings": embeddings})
    gallery_table = embeddings.to(device)
    del embeddings, cached
    timings["gallery_embedding_s"] = time.perf_counter() - tick

    # 2. query batches of this rank: search, explain, write
    tick = time.perf_counter()
    todo = [
        b
        for b in context.mine(q_source.num_batches)
        if not (out / part_name(b)).is_file()
    ]
    pairs = 0
    for number, images in _progress(
        q_source.batches(todo), len(todo), "queries", progress and context.is_main
    ):
        indices = q_source.batch_indices(number)
        images = images.to(device)
        query_embeddings = _embed_checked(model, images, "the queries")
        skip = None if exclude is None else exclude[indices]
        values, neighbours = exact_top_k(
            query_embeddings, gallery_table, k_search, metric, gallery_chunk, skip
        )
        values, neighbours = values.cpu(), neighbours.cpu()
        top = neighbours[:, :k]
        q_maps, g_maps = _pair_maps(
            method, images, top, g_source, device, relu_attributions, batch
        )
        tensors = {
            "query_maps": q_maps.to(MAP_DTYPE),
            "neighbour_maps": g_maps.to(MAP_DTYPE),
        }
        if contrast:
            c_maps = _contrast_maps(
                method, images, top, g_source, device, relu_attributions
            )
            tensors["contrast_maps"] = c_maps.to(MAP_DTYPE)
        save_tensors(
            out / shard_name(number),
            tensors,
            metadata={
                "first_query": str(indices[0]),
                "member": member_name,
                "rank": str(context.rank),
            },
        )
        records = []
        for row, query in enumerate(indices):
            relevant = None
            if label_counts is not None:
                label = q_source.labels[query]  # type: ignore[index]
                relevant = label_counts[label]
                if skip is not None and int(skip[row]) >= 0:
                    relevant -= int(g_source.labels[int(skip[row])] == label)  # type: ignore[index]
            records.append(
                _record(
                    query,
                    q_source,
                    g_source,
                    values[row],
                    neighbours[row],
                    k,
                    number,
                    row,
                    relevant,
                )  # fmt: skip
            )
            # the extra neighbours searched for the metrics are not written
            records[-1]["neighbours"] = records[-1]["neighbours"][:k]
        write_lines(out / part_name(number), records)
        pairs += len(indices) * k
    timings["queries_s"] = time.perf_counter() - tick

    # 3. rank 0 merges the parts, sums up and draws the report
    dist_utils.barrier(context)
    result = RetrievalRun(out, num_q, num_g, k, pairs_explained=pairs, timings=timings)
    if context.is_main:
        result.metrics = _merge(out, q_source.num_batches)
        if report:
            from .report import write_report

            tick = time.perf_counter()
            result.report = write_report(
                out, q_source, g_source, limit=report_limit, mean=mean, std=std,
                metrics=result.metrics,
            )  # fmt: skip
            timings["report_s"] = time.perf_counter() - tick
        summary = {
            "queries": num_q,
            "gallery": num_g,
            "k": k,
            "member": member_name,
            "metric": metric,
            "layer": layer_name,
            "world_size": context.world_size,
            "metrics": result.metrics,
            "timings_rank0": timings,
        }
        write_json(out / SUMMARY, summary)
    result.seconds = time.perf_counter() - start_time
    dist_utils.barrier(context)
    return result


def _merge(out: Path, num_batches: int) -> Dict[str, float]:
    """Concatenate the batch parts into results.jsonl; the mean metrics."""
    missing = [b for b in range(num_batches) if not (out / part_name(b)).is_file()]
    if missing:
        raise RuntimeError(
            f"{len(missing)} query batches have no results in {out} (first: "
            f"{part_name(missing[0])}): is {out} shared by every rank?"
        )
    totals: Dict[str, float] = {}
    counted = 0
    tmp = out / f".{RESULTS}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        for b in range(num_batches):
            for record in read_lines(out / part_name(b)):
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
                if record.get("relevant"):
                    counted += 1
                    for name, value in record["metrics"].items():
                        totals[name] = totals.get(name, 0.0) + value
    tmp.replace(out / RESULTS)
    if not counted:
        return {}
    means = {
        name.replace("ap@", "map@"): value / counted for name, value in totals.items()
    }
    means["queries_with_relevant"] = counted
    return means


__all__ = ["RetrievalRun", "exact_top_k", "explain_retrieval", "supports_contrast"]
