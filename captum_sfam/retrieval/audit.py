r"""What an auditor asks of each labelled query: where is its first true match,
which true matches did it miss, and which wrong matches rank above a true one.

With labels on both sides, for a batch of queries, :func:`audit_batch` scans
the gallery's embedding table twice in chunks (memory flat in the gallery
size, as the search):

1. every true match's similarity (same label, the query's own item
   excluded), keeping each query's ``k_list + MISSED_LIMIT`` best;
2. the rank of each kept true match among the whole gallery:
   :math:`1 + \#\{m : s(q, m) > s(q, t)\} + \#\{m < t : s(q, m) = s(q, t)\}`
   (ties go to the lower gallery index, as the search's).

A true match that is in the explained list keeps its place in the list; one
beyond it is a *missed* true match, with its rank (never better than the
list's length + 1). It also draws, for the report's curves, a sample of
similarities: up to ``SCORE_SAMPLE`` true pairs per query (evenly over their
sorted similarities) and the query against ``SCORE_SAMPLE`` gallery items
drawn once per run (seed 0) that do not share its label (the negatives).
Similarities are the metric's: cosine, or negative squared Euclidean
distance, computed as :func:`captum_sfam.functional.similarity_matrix`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..functional.similarity import COSINE_EPS
from .settings import RunSettings

#: true matches beyond the explained list kept per query (the best ranked)
MISSED_LIMIT = 10
#: similarities sampled per query and kind (true pairs, negatives)
SCORE_SAMPLE = 256


@dataclass
class QueryAudit:
    r"""One labelled query's true matches.

    ``first_true`` is (rank, gallery index, similarity) of its best-ranked
    true match (None when the gallery has none); ``missed`` the true matches
    beyond the explained list, best first (at most ``MISSED_LIMIT``);
    ``true_matches`` every ranked true match, best first (the listed ones and
    the best ``L + MISSED_LIMIT`` by similarity); ``positives`` and
    ``negatives`` the sampled similarities (float32).
    """

    first_true: Optional[Tuple[int, int, float]]
    missed: List[Tuple[int, int, float]] = field(default_factory=list)
    true_matches: List[Tuple[int, int, float]] = field(default_factory=list)
    positives: Tensor = field(default_factory=lambda: torch.zeros(0))
    negatives: Tensor = field(default_factory=lambda: torch.zeros(0))


def _label_codes(settings: RunSettings) -> Tuple[Tensor, Tensor, Tensor]:
    """Integer codes of the gallery's and the queries' labels (-1: a query
    label the gallery lacks) and the run's negative sample of gallery rows,
    made once per run (kept in ``settings.notes``)."""
    if "audit_codes" in settings.notes:
        return settings.notes["audit_codes"]
    gallery, queries = settings.gallery.labels, settings.queries.labels
    assert gallery is not None and queries is not None
    codes: Dict[object, int] = {}
    g = torch.tensor([codes.setdefault(label, len(codes)) for label in gallery])
    q = torch.tensor([codes.get(label, -1) for label in queries])
    generator = torch.Generator().manual_seed(0)
    sample = torch.randperm(len(gallery), generator=generator)[:SCORE_SAMPLE]
    settings.notes["audit_codes"] = (g, q, sample.sort().values)
    return settings.notes["audit_codes"]


def similarities(queries: Tensor, gallery: Tensor, metric: str) -> Tensor:
    """(n, D) x (c, D) -> (n, c) float32 similarities by ``metric``."""
    q, g = queries.float(), gallery.float()
    if metric == "cosine":
        q = F.normalize(q, dim=-1, eps=COSINE_EPS)
        return q @ F.normalize(g, dim=-1, eps=COSINE_EPS).T
    # exact per pair (no expanded form): equal items get equal values
    distances = torch.cdist(q, g, compute_mode="donot_use_mm_for_euclid_dist")
    return -(distances * distances)


def _even(values: Tensor, count: int) -> Tensor:
    """At most ``count`` of the sorted ``values``, evenly spaced."""
    values = values.sort().values
    if values.numel() <= count:
        return values
    picks = torch.linspace(0, values.numel() - 1, count).round().long()
    return values[picks]


def audit_batch(
    settings: RunSettings,
    query_indices: Sequence[int],
    embeddings: Tensor,
    gallery_table: Tensor,
    listed: Tensor,
    k: int,
) -> List[Optional[QueryAudit]]:
    r"""The true matches of a batch of labelled queries (see the module).

    Args:

        settings (RunSettings): the run (labels on both sides).
        query_indices (Sequence[int]): the batch's query indices (n).
        embeddings (Tensor): (n, D) query embeddings.
        gallery_table (Tensor): (M, D) gallery embeddings.
        listed (Tensor): (n, L) each query's ranked gallery indices, best
                    first (the searched list; its first k are explained).
        k (int): the explained neighbours; a true match ranked after them
                    is missed.

    Returns:
        *list*: a :class:`QueryAudit` per query; None for every query when
        the run has no labels.
    """
    if settings.label_counts is None:
        return [None] * len(query_indices)
    g_codes, q_codes, sample = _label_codes(settings)
    device = embeddings.device
    rows = torch.as_tensor(list(query_indices), dtype=torch.long)
    codes = q_codes[rows].to(device)
    skip = (
        torch.full_like(rows, -1)
        if settings.exclude is None
        else settings.exclude[rows].long()
    ).to(device)
    keep = listed.shape[1] + MISSED_LIMIT
    best_v, best_i, positives = _best_true_matches(
        settings, embeddings, gallery_table, codes, skip, g_codes, keep
    )
    above = _gallery_places(settings, embeddings, gallery_table, skip, best_v, best_i)
    negatives = similarities(
        embeddings,
        gallery_table[sample.to(gallery_table.device)].to(device),
        settings.metric,
    )
    negative_ok = (g_codes[sample].to(device)[None] != codes[:, None]) & (
        sample.to(device)[None] != skip[:, None]
    )
    results: List[Optional[QueryAudit]] = []
    for row in range(len(rows)):
        found = torch.isfinite(best_v[row])
        places = {int(g): r + 1 for r, g in enumerate(listed[row].tolist())}
        ranked = []
        for value, item, count in zip(
            best_v[row][found].tolist(),
            best_i[row][found].tolist(),
            above[row][found].tolist(),
        ):
            rank = places.get(item, max(count + 1, listed.shape[1] + 1))
            ranked.append((rank, item, value))
        ranked += _listed_true(
            settings, embeddings[row], gallery_table, listed[row], codes[row],
            skip[row], {r[1] for r in ranked},
        )  # fmt: skip
        ranked.sort()
        audit = QueryAudit(
            first_true=ranked[0] if ranked else None,
            missed=[r for r in ranked if r[0] > k][:MISSED_LIMIT],
            true_matches=ranked,
            positives=_even(torch.cat(positives[row]).float().cpu(), SCORE_SAMPLE),
            negatives=negatives[row][negative_ok[row]].float().cpu(),
        )
        results.append(audit)
    return results


def _best_true_matches(
    settings: RunSettings,
    embeddings: Tensor,
    gallery_table: Tensor,
    codes: Tensor,
    skip: Tensor,
    g_codes: Tensor,
    keep: int,
) -> Tuple[Tensor, Tensor, List[List[Tensor]]]:
    """Pass 1, chunk by chunk over the gallery: the ``keep`` most similar
    true matches of each query, (n, <=keep) similarities (-inf past the
    true matches) and gallery indices, and every true match's similarity
    (per query, a list of chunks)."""
    n, device, chunk = embeddings.shape[0], embeddings.device, settings.gallery_chunk
    best_v = embeddings.new_empty(n, 0, dtype=torch.float32)
    best_i = torch.empty(n, 0, dtype=torch.long, device=device)
    positives: List[List[Tensor]] = [[] for _ in range(n)]
    for start in range(0, gallery_table.shape[0], chunk):
        scores = similarities(
            embeddings, gallery_table[start : start + chunk].to(device), settings.metric
        )
        index = torch.arange(start, start + scores.shape[1], device=device)
        true = (g_codes[start : start + chunk].to(device)[None] == codes[:, None]) & (
            index[None] != skip[:, None]
        )
        for row in range(n):
            positives[row].append(scores[row][true[row]])
        masked = scores.masked_fill(~true, -torch.inf)
        values = torch.cat([best_v, masked], dim=1)
        indices = torch.cat([best_i, index.expand(n, -1)], dim=1)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices
        order = order[:, : min(keep, values.shape[1])]
        best_v, best_i = values.gather(1, order), indices.gather(1, order)
    return best_v, best_i, positives


def _gallery_places(
    settings: RunSettings,
    embeddings: Tensor,
    gallery_table: Tensor,
    skip: Tensor,
    best_v: Tensor,
    best_i: Tensor,
) -> Tensor:
    """Pass 2: how many gallery items rank above each kept true match (ties
    to the lower index; the query's own item skipped), (n, <=keep)."""
    device, chunk = embeddings.device, settings.gallery_chunk
    above = torch.zeros_like(best_i)
    for start in range(0, gallery_table.shape[0], chunk):
        scores = similarities(
            embeddings, gallery_table[start : start + chunk].to(device), settings.metric
        )
        index = torch.arange(start, start + scores.shape[1], device=device)
        scores = scores.masked_fill(index[None] == skip[:, None], -torch.inf)
        s, t = scores[:, None, :], best_v[:, :, None]
        beats = (s > t) | ((s == t) & (index[None, None] < best_i[:, :, None]))
        above += beats.sum(dim=-1)
    return above


def _listed_true(
    settings: RunSettings,
    embedding: Tensor,
    gallery_table: Tensor,
    listed: Tensor,
    code: Tensor,
    skip: Tensor,
    known: set,
) -> List[Tuple[int, int, float]]:
    """True matches in the query's list that the similarity scan did not
    keep (a system's list can hold true matches the model ranks far down),
    with their list rank."""
    g_codes = _label_codes(settings)[0]
    extra = [
        (rank, int(item))
        for rank, item in enumerate(listed.tolist(), start=1)
        if int(g_codes[int(item)]) == int(code)
        and int(item) != int(skip)
        and int(item) not in known
    ]
    if not extra:
        return []
    rows = gallery_table[
        torch.tensor([i for _, i in extra], device=gallery_table.device)
    ]
    values = similarities(embedding[None], rows.to(embedding.device), settings.metric)[
        0
    ]
    return [(rank, item, float(v)) for (rank, item), v in zip(extra, values.tolist())]


Match = Tuple[int, int, float]


def wrong_above_true(
    settings: RunSettings, query: int, top: Sequence[int], audit: Optional[QueryAudit]
) -> List[Tuple[int, Match]]:
    r"""Each explained wrong neighbour of ``query`` ranked above a true match,
    with the true match to contrast it with: the first true match ranked
    after it.

    Args:

        settings (RunSettings): the run.
        query (int): the query's index.
        top (Sequence[int]): its explained neighbours (gallery indices, best
                    first).
        audit (QueryAudit, optional): its true matches.

    Returns:
        *list* of **(rank, true match)**: the wrong neighbour's rank (from 1)
        and the (rank, gallery index, similarity) of the true match after
        it; empty without labels or true match.
    """
    if audit is None or not audit.true_matches:
        return []
    labels = settings.gallery.labels
    label = settings.queries.labels[query]  # type: ignore[index]
    assert labels is not None
    pairs = []
    for rank, item in enumerate(top, start=1):
        if labels[int(item)] == label:
            continue
        after = [t for t in audit.true_matches if t[0] > rank]
        if after:
            pairs.append((rank, after[0]))
    return pairs


def _item(settings: RunSettings, match: Tuple[int, int, float]) -> Dict[str, Any]:
    rank, index, similarity = match
    gallery = settings.gallery
    item: Dict[str, Any] = {"rank": rank, "index": index}
    if gallery.ids is not None:
        item["id"] = gallery.ids[index]
    if gallery.labels is not None:
        item["label"] = gallery.labels[index]
    item["similarity"] = similarity
    return item


def annotate(
    settings: RunSettings,
    record: Dict[str, Any],
    audit: Optional[QueryAudit],
    top: Sequence[int],
) -> None:
    r"""Add a labelled query's audit to its ``results.jsonl`` line.

    ``first_true``: its best-ranked true match (``rank``, ``index``, ``id``,
    ``label``, ``similarity``); ``missed``: the true matches ranked after its
    k explained neighbours ``top``, best first (at most ``MISSED_LIMIT``,
    same fields); ``wrong_above_true``: ``ranks`` of the explained wrong
    neighbours ranked above a true match, ``true`` the true match each is
    contrasted with (the first ranked after it, same fields), and either
    ``maps: true`` (the shard's ``wrong_contrast_maps`` hold their
    contrastive maps) or ``refusal``, why the member has none. Nothing is
    added without labels.
    """
    if audit is None or audit.first_true is None:
        return
    record["first_true"] = _item(settings, audit.first_true)
    record["missed"] = [_item(settings, match) for match in audit.missed]
    pairs = wrong_above_true(settings, record["query"], top, audit)
    if pairs:
        refusal = getattr(settings.method, "contrast_refusal", None)
        wrong: Dict[str, Any] = {
            "ranks": [rank for rank, _ in pairs],
            "true": [_item(settings, match) for _, match in pairs],
        }
        wrong.update({"maps": True} if refusal is None else {"refusal": refusal})
        record["wrong_above_true"] = wrong


__all__ = [
    "annotate",
    "MISSED_LIMIT",
    "QueryAudit",
    "SCORE_SAMPLE",
    "audit_batch",
    "similarities",
    "wrong_above_true",
]
