r"""The settings of a retrieval run, checked once before any work.

:meth:`RunSettings.build` turns the arguments of
:func:`~captum_sfam.retrieval.explain_retrieval` into one frozen object: the
attribution member built on the model, the query and gallery sources, the
gallery item each query must skip, how many neighbours the search keeps (or
your system's lists, :mod:`.neighbours`), the unreadable files left out, and
what the run writes. The stages of :mod:`.stages` read everything from it;
:meth:`RunSettings.manifest` is the ``run.json`` a resumed run must match.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Module

from ..methods import REGISTRY, PairAttribution, supports_contrast
from . import distributed as dist_utils
from .data import ImageSource, SourceType
from .metrics import RECALL_AT
from .neighbours import NeighboursType, SystemNeighbours, read_neighbours

#: the searches a run can do (your system's neighbours need none)
SEARCHES = ("exact", "faiss")
#: unreadable files named in the error of a strict run
_NAMED = 10

#: format version written to run.json
FORMAT_VERSION = 1


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


def _model_device(model: Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


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


def _check_member(
    model: Module,
    layer: Module,
    member: Union[str, PairAttribution],
    k: int,
    metric: Optional[str],
    contrast: bool,
) -> Tuple[PairAttribution, str, str, str]:
    """The attribution object, the metric, the member's and the layer's names,
    once the model, k and the contrast option are checked."""
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
    return method, metric, member_name, layer_name


def gallery_exclusions(
    queries: ImageSource, gallery: ImageSource, exclude_same_id: bool
) -> Optional[Tensor]:
    r"""The gallery item each query must not retrieve: the one with its id.

    Args:

        queries (ImageSource): the query set.
        gallery (ImageSource): the gallery; its ids must be unique.
        exclude_same_id (bool): False: no exclusion.

    Returns:
        *Tensor* or *None*: (Q,) the gallery index of each query's id, -1 where
        the gallery has no such id; None when nothing is excluded (no ids, no
        shared id, or ``exclude_same_id`` False).

    Raises:
        ValueError: two gallery items share an id.
    """
    if not exclude_same_id or queries.ids is None or gallery.ids is None:
        return None
    positions = {name: i for i, name in enumerate(gallery.ids)}
    if len(positions) != len(gallery):
        raise ValueError("gallery ids must be unique")
    exclude = torch.tensor([positions.get(name, -1) for name in queries.ids])
    return exclude if bool((exclude >= 0).any()) else None


def unreadable_files(
    sources: Sequence[ImageSource], strict: bool
) -> List[Dict[str, Any]]:
    r"""Leave the unreadable files out of ``sources`` (see
    :meth:`.data.ImageSource.drop_unreadable`), or refuse them.

    Returns:
        *list[dict]*: the files left out, ``{"source", "index", "id",
        "reason"}`` each.

    Raises:
        ValueError: ``strict`` and a file is unreadable (the message names
                    them), before any embedding.
    """
    skipped = [item for source in sources for item in source.drop_unreadable()]
    if strict and skipped:
        named = "; ".join(f"{s['id']} ({s['reason']})" for s in skipped[:_NAMED])
        more = f" and {len(skipped) - _NAMED} more" if len(skipped) > _NAMED else ""
        raise ValueError(
            f"strict=True: {len(skipped)} unreadable image file(s): {named}{more}; "
            "remove or replace them, or pass strict=False to skip them"
        )
    return skipped


@dataclass(frozen=True, eq=False)
class RunSettings:
    r"""Everything one retrieval run reads, checked once by :meth:`build`.

    ``k_search`` neighbours are searched per query (``max(k, 5)`` when labels
    give metrics, at most the rankable gallery) and the first ``k`` are
    explained and written. ``exclude`` is :func:`gallery_exclusions`'s
    result; ``label_counts`` counts the gallery's labels (None without
    labels on both sides).
    ``system`` holds your system's ranked lists when the run explains them
    (then ``k_search == k`` and nothing is excluded); ``search`` is "exact"
    or "faiss" otherwise. ``skipped`` lists the unreadable files left out;
    ``notes`` is the run's scratch space (a FAISS index, repaired files).
    """

    out: Path
    model: Module
    method: PairAttribution
    member: str
    metric: str
    layer: str
    k: int
    k_search: int
    queries: ImageSource
    gallery: ImageSource
    exclude: Optional[Tensor]
    label_counts: Optional[Counter]
    relu_attributions: bool
    contrast: bool
    report: bool
    report_limit: int
    mean: Optional[Sequence[float]]
    std: Optional[Sequence[float]]
    device: torch.device
    gallery_chunk: int
    resume: bool
    progress: bool
    context: dist_utils.Context
    search: str = "exact"
    system: Optional[SystemNeighbours] = None
    strict: bool = False
    skipped: List[Dict[str, Any]] = field(default_factory=list)
    notes: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        model: Module,
        layer: Module,
        queries: SourceType,
        gallery: SourceType,
        out: Union[str, Path],
        *,
        member: Union[str, PairAttribution],
        k: Optional[int],
        metric: Optional[str],
        batch_size: Optional[int],
        query_ids: Optional[Sequence[Any]],
        gallery_ids: Optional[Sequence[Any]],
        query_labels: Optional[Sequence[Any]],
        gallery_labels: Optional[Sequence[Any]],
        exclude_same_id: bool,
        relu_attributions: bool,
        contrast: bool,
        report: bool,
        report_limit: int,
        mean: Optional[Sequence[float]],
        std: Optional[Sequence[float]],
        device: Optional[Union[str, torch.device]],
        num_workers: Optional[int],
        gallery_chunk: int,
        resume: bool,
        progress: bool,
        neighbours: Optional[NeighboursType] = None,
        search: str = "exact",
        strict: bool = False,
    ) -> RunSettings:
        r"""Check the arguments of ``explain_retrieval`` and build the settings.

        Args are those of :func:`~captum_sfam.retrieval.explain_retrieval`;
        nothing is read from or written to ``out``.

        Returns:
            *RunSettings*: the checked settings of this rank's run.

        Raises:
            ValueError, TypeError: as ``explain_retrieval``.
        """
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
        if neighbours is not None and search != "exact":
            raise ValueError(
                "neighbours= gives the pairs: leave search at 'exact' (no search)"
            )
        method, metric, member_name, layer_name = _check_member(
            model, layer, member, 5 if k is None else k, metric, False
        )
        context = dist_utils.current_context()
        q_source = ImageSource(
            queries, "queries", query_ids, query_labels, batch_size, num_workers
        )
        g_source = ImageSource(
            gallery, "gallery", gallery_ids, gallery_labels, q_source.batch_size,
            num_workers,
        )  # fmt: skip
        device = torch.device(device) if device is not None else _model_device(model)
        for source in (q_source, g_source):
            source.pin_memory = device.type == "cuda"
        skipped = unreadable_files((q_source, g_source), strict)
        system = None
        if neighbours is not None:
            system = read_neighbours(neighbours, q_source, g_source)
            if k is not None and k != system.k:
                raise ValueError(
                    f"k = {k} but {system.source} lists {system.k} neighbours per "
                    f"query: pass k={system.k} or k=None"
                )
            k = system.k
        k = 5 if k is None else k
        _check_member(model, layer, method, k, metric, contrast)
        # a batch's neighbours (and a true match each) decoded once for all
        # its maps: memory bounded by the batch, not the gallery
        g_source.cache_size = q_source.batch_size * (k + 1)
        exclude = None
        if system is None:
            exclude = gallery_exclusions(q_source, g_source, exclude_same_id)
        available = len(g_source) - (0 if exclude is None else 1)
        if k > available:
            raise ValueError(f"k = {k} but the gallery has {available} items to rank")
        labelled = q_source.labels is not None and g_source.labels is not None
        if system is not None or not labelled:
            k_search = k
        else:
            k_search = min(max(k, *RECALL_AT), available)
        return cls(
            out=Path(out), model=model, method=method, member=member_name,
            metric=metric, layer=layer_name, k=k,
            k_search=k_search,
            queries=q_source, gallery=g_source, exclude=exclude,
            label_counts=Counter(g_source.labels) if labelled else None,
            relu_attributions=relu_attributions, contrast=contrast, report=report,
            report_limit=report_limit, mean=mean, std=std,
            device=device, gallery_chunk=gallery_chunk, resume=resume,
            progress=progress, context=context, search=search, system=system,
            strict=strict, skipped=skipped,
        )  # fmt: skip

    @property
    def batch_size(self) -> int:
        """Queries per batch, gallery images per embedding batch, images per
        forward pass."""
        return self.queries.batch_size

    @property
    def show_progress(self) -> bool:
        """Whether this rank draws progress bars (rank 0 only)."""
        return self.progress and self.context.is_main

    def relevant(self, query: int) -> Optional[int]:
        """Gallery items with the label of query ``query``, its excluded item
        left out; None without labels."""
        if self.label_counts is None:
            return None
        label = self.queries.labels[query]  # type: ignore[index]
        count = self.label_counts[label]
        skipped = -1 if self.exclude is None else int(self.exclude[query])
        if skipped >= 0:
            count -= int(self.gallery.labels[skipped] == label)  # type: ignore[index]
        return count

    def manifest(self) -> Dict[str, Any]:
        """The settings a resumed run must share (``run.json``): fingerprints
        of the ids, labels and model weights, not the values."""
        labelled = self.label_counts is not None
        labels = [self.queries.labels, self.gallery.labels] if labelled else None
        manifest: Dict[str, Any] = {
            "format": FORMAT_VERSION,
            "member": self.member,
            "metric": self.metric,
            "layer": self.layer,
            "k": self.k,
            "batch_size": self.batch_size,
            "num_queries": len(self.queries),
            "num_gallery": len(self.gallery),
            "query_ids": _fingerprint(self.queries.ids),
            "gallery_ids": _fingerprint(self.gallery.ids),
            "labels": _fingerprint(labels),
            "exclude_same_id": self.exclude is not None,
            "relu_attributions": self.relu_attributions,
            "contrast": self.contrast,
            "model": _model_fingerprint(self.model),
        }
        # new keys only when used: earlier runs' run.json still match
        if self.search != "exact":
            manifest["search"] = self.search
        if self.system is not None:
            digest = hashlib.sha256(self.system.indices.numpy().tobytes())
            if self.system.scores is not None:
                digest.update(self.system.scores.numpy().tobytes())
            manifest["neighbours"] = digest.hexdigest()[:16]
        return manifest


__all__ = [
    "FORMAT_VERSION",
    "SEARCHES",
    "RunSettings",
    "gallery_exclusions",
    "unreadable_files",
]
