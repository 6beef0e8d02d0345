r"""Explain a whole retrieval run: every query's top-k, and a map for each match.

:func:`explain_retrieval` embeds the gallery in batches, finds each query's
exact top-k by the model's metric with chunked matrix products (no
queries x gallery matrix is held), then explains every (query, neighbour)
pair with a member of the pair-attribution family, one batch of queries at a
time, re-running the network only on the images of that batch and its
neighbours. Memory is bounded by the batch sizes and the gallery's embedding
table (M x D floats), not by the activations of the gallery. Results stream to
disk (see :mod:`.store`); a rerun resumes after the last finished batch; under
``torchrun`` the work is split over the ranks (see :mod:`.distributed`). The
arguments are checked once into a :class:`.settings.RunSettings`; the work is
done by the stages of :mod:`.stages`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.nn import Module

from ..functional.similarity import DEFAULT_GALLERY_CHUNK, exact_top_k
from ..methods import PairAttribution, supports_contrast
from . import distributed as dist_utils
from . import stages, timing
from .data import SourceType
from .neighbours import NeighboursType
from .settings import RunSettings
from .store import load_maps, read_results


@dataclass
class RetrievalRun:
    r"""What :func:`explain_retrieval` did, and how to read it.

    ``metrics`` holds the mean Recall@1, Recall@5 and mAP@k over the queries
    that have a relevant gallery item, when labels are known (empty
    otherwise, and on ranks other than 0). ``pairs_explained`` and
    ``seconds`` count this call on this rank only (a resumed run counts the
    batches it did). ``skipped`` lists the unreadable image files left out
    (``{"source", "index", "id", "reason"}`` each, as ``summary.json``'s
    ``skipped_images``); ``timings`` holds the seconds per stage and per kind
    of work (``read_s``, ``embed_s``, ``search_s``, ``maps_s``,
    ``write_s``, ...: see :mod:`.timing`).
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
    skipped: List[Dict[str, Any]] = field(default_factory=list)

    def records(self) -> Iterator[Dict[str, Any]]:
        """The lines of ``results.jsonl``, in query order."""
        return read_results(self.out)

    def maps(self, record: Dict[str, Any]) -> Dict[str, Tensor]:
        """The float16 maps of one record (see :func:`.store.load_maps`)."""
        return load_maps(self.out, record)


def explain_retrieval(
    model: Module,
    layer: Module,
    queries: SourceType,
    gallery: SourceType,
    out: Union[str, Path],
    member: Union[str, PairAttribution] = "sfam",
    k: Optional[int] = None,
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
    neighbours: Optional[NeighboursType] = None,
    search: str = "exact",
    strict: bool = False,
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
                    Default: 5, or the length of the lists of ``neighbours``
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
                    the members' ``attribute``.
                    Default: False
        contrast (bool, optional): also write each query's contrastive map,
                    rank 1 against rank 2, when the family's ``attribute`` has
                    a ``contrast=`` argument (ValueError otherwise).
                    Default: False
        report (bool, optional): write ``index.html`` (rank 0).
                    Default: True
        report_limit (int, optional): queries shown in the report: the
                    worst ones, worst first (by the rank of the first true
                    match, then AP, with labels; by the margin of rank 1 over
                    rank 2 without; see :mod:`.report`); ``results.jsonl``
                    always has all.
                    Default: 100
        mean, std (Sequence[float], optional): the normalisation of the model
                    inputs, undone to draw the report's thumbnails (by
                    :func:`captum_sfam.images.to_display`); an image that is
                    still outside [0, 1] is min-max scaled, with one
                    ``UserWarning`` per report.
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
        neighbours (str, Path, list or dict, optional): your system's ranked
                    lists, explained instead of a search of ours: a JSON lines
                    file (``{"query": id, "neighbours": [ids], "scores":
                    [...]}``), a CSV file (``query,neighbour,rank[,score]``),
                    or such dicts, or ``{query id: [neighbour ids]}`` (see
                    :mod:`captum_sfam.retrieval.neighbours`). Exactly those
                    pairs are explained, in the given order (``rank`` is the
                    system's); each neighbour keeps ``similarity`` (the
                    model's), ``model_rank`` and ``system_score``. No
                    exclusion applies. Every query needs a list, all of one
                    length.
                    Default: None (search)
        search (str, optional): "exact" (chunked exact search) or "faiss"
                    (an HNSW index, the ``audit`` extra; its recall against
                    exact search is measured on the first 256 queries and
                    written to ``summary.json``).
                    Default: "exact"
        strict (bool, optional): an unreadable image file (empty, truncated,
                    not an image; found by a cheap scan of the headers of an
                    :class:`ImageFiles` dataset) is a ValueError before any
                    embedding; False: such files are left out, listed in
                    ``summary.json`` (``skipped_images``) and counted in one
                    ``UserWarning`` at the end of the run.
                    Default: False

    Returns:
        *RetrievalRun*: the run directory, counts, mean metrics, the report's
        path, and readers of the records and maps.

    Raises:
        ValueError: ``out`` holds a run with other settings (and ``resume``);
                    k larger than the gallery; an unknown member or a metric
                    the member does not support; NaN or inf embeddings; an
                    unknown id in ``neighbours`` (the message names the file
                    and line); unreadable images with ``strict``.
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
    with timing.running(timing.Clock()):
        settings = RunSettings.build(
            model, layer, queries, gallery, out, member=member, k=k, metric=metric,
            batch_size=batch_size, query_ids=query_ids, gallery_ids=gallery_ids,
            query_labels=query_labels, gallery_labels=gallery_labels,
            exclude_same_id=exclude_same_id, relu_attributions=relu_attributions,
            contrast=contrast, report=report, report_limit=report_limit,
            mean=mean, std=std, device=device, num_workers=num_workers,
            gallery_chunk=gallery_chunk, resume=resume, progress=progress,
            neighbours=neighbours, search=search, strict=strict,
        )  # fmt: skip
        result = _run(settings)
    result.seconds = time.perf_counter() - start_time
    if settings.skipped:
        first = settings.skipped[0]
        warnings.warn(
            f"{len(settings.skipped)} unreadable image file(s) left out (first: "
            f"{first['id']}: {first['reason']}); listed in "
            f"{settings.out / 'summary.json'} under 'skipped_images' (strict=True "
            "refuses them)",
            UserWarning,
            stacklevel=2,
        )
    return result


def _run(settings: RunSettings) -> RetrievalRun:
    """The stages, in order, on the current clock."""
    stages.prepare_directory(settings)
    timings: Dict[str, float] = {}
    tick = time.perf_counter()
    gallery_table = stages.embed_gallery(settings)
    timings["gallery_embedding_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    pairs = stages.explain_queries(settings, gallery_table)
    timings["queries_s"] = time.perf_counter() - tick
    dist_utils.barrier(settings.context)
    result = RetrievalRun(
        settings.out, len(settings.queries), len(settings.gallery), settings.k,
        pairs_explained=pairs, timings=timings, skipped=settings.skipped,
    )  # fmt: skip
    if settings.context.is_main:
        result.metrics, result.report = stages.finish(settings, timings)
    clock = timing.current()
    if clock is not None:
        timings.update(clock.totals())
    dist_utils.barrier(settings.context)
    return result


__all__ = ["RetrievalRun", "exact_top_k", "explain_retrieval", "supports_contrast"]
