r"""How a run finds each query's neighbours: exact search, FAISS, or your system's.

:func:`search_batch` returns, for one batch of queries, the similarities and
gallery indices of their ``k_search`` neighbours and what the records gain
beside them; :func:`annotate` adds that to the batch's records.

- ``"exact"`` (the default): :func:`~captum_sfam.functional.similarity.exact_top_k`.
- ``"faiss"``: an HNSW index (``faiss.IndexHNSWFlat``, 32 links, built once
  per run and rank on the gallery table; inner product on normalised vectors
  for cosine, L2 for Euclidean), for galleries past exact search. The
  similarities are re-scored exactly by the model's metric and the list
  sorted by them. The queries of the first batches (at least
  ``RECALL_CHECK_QUERIES``) are also searched exactly, and their record gets
  ``search_recall``: the share of the exact top-k the index found.
- your system's neighbours (``settings.system``): the given lists, in the
  given order; ``similarity`` is the model's, and each neighbour gains
  ``system_score`` (when given) and ``model_rank`` (its rank by the model's
  similarity among the query's k listed neighbours, ties by the system's
  order).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._optional import require_extra
from ..functional.similarity import COSINE_EPS, exact_top_k, paired_similarity
from .settings import RunSettings
from .timing import section

#: queries of a FAISS run also searched exactly, to measure its recall
RECALL_CHECK_QUERIES = 256
#: HNSW links per node and the search breadth (at least 2 k)
HNSW_LINKS, HNSW_EF_SEARCH = 32, 128

Found = Tuple[Tensor, Tensor, List[Dict[str, Any]]]


def model_ranks(values: Tensor) -> Tensor:
    r"""The rank of each entry of each row by decreasing value, ties to the
    earlier entry: :math:`r_{ij} = 1 + \#\{l : v_{il} > v_{ij}\} + \#\{l < j :
    v_{il} = v_{ij}\}`.

    Args:

        values (Tensor): (n, k) similarities (the model's, of a system's
                    ranked lists in the system's order).

    Returns:
        *Tensor*: (n, k) int64 ranks from 1, each row a permutation of 1..k.
    """
    n, k = values.shape
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(1, k + 1).expand(n, k).contiguous())
    return ranks


def _faiss_index(settings: RunSettings, table: Tensor) -> Any:
    """The run's HNSW index over ``table`` (built on first use, then kept)."""
    if "faiss_index" in settings.notes:
        return settings.notes["faiss_index"]
    require_extra("faiss", "faiss-cpu", "audit")
    import faiss

    with section("search_index"):
        vectors = table.detach().float().cpu()
        if settings.metric == "cosine":
            vectors = F.normalize(vectors, dim=-1, eps=COSINE_EPS)
            kind = faiss.METRIC_INNER_PRODUCT
        else:
            kind = faiss.METRIC_L2
        index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_LINKS, kind)
        index.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * settings.k_search + 2)
        index.add(vectors.numpy())
    settings.notes["faiss_index"] = index
    return index


def _rescored(
    settings: RunSettings, embeddings: Tensor, table: Tensor, indices: Tensor
) -> Tuple[Tensor, Tensor]:
    """The model's similarities of (n, m) candidate lists, each list sorted by
    them (ties by the lower gallery index)."""
    n, m = indices.shape
    chosen = table[indices.flatten().to(table.device)].to(embeddings.device).float()
    query = embeddings.float()[:, None].expand(n, m, -1).reshape(n * m, -1)
    values = paired_similarity(query, chosen, settings.metric).view(n, m).cpu()
    by_index = torch.sort(indices, dim=1).indices
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), indices.gather(1, order)


def _faiss_search(
    settings: RunSettings, table: Tensor, embeddings: Tensor, skip: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    index = _faiss_index(settings, table)
    k = settings.k_search
    wanted = k + (0 if skip is None else 1)
    query = embeddings.detach().float().cpu()
    if settings.metric == "cosine":
        query = F.normalize(query, dim=-1, eps=COSINE_EPS)
    _, found = index.search(query.numpy(), wanted)
    found = torch.from_numpy(found).long()
    rows = []
    for row in range(found.shape[0]):
        keep = [int(i) for i in found[row] if i >= 0]
        if skip is not None:
            keep = [i for i in keep if i != int(skip[row])]
        if len(keep) < k:  # the graph gave too few: this query searched exactly
            one_skip = None if skip is None else skip[row : row + 1]
            _, exact = exact_top_k(
                embeddings[row : row + 1], table, k, settings.metric,
                settings.gallery_chunk, one_skip,
            )  # fmt: skip
            keep = exact[0].cpu().tolist()
        rows.append(keep[:k])
    return _rescored(settings, embeddings, table, torch.tensor(rows, dtype=torch.long))


def search_batch(
    settings: RunSettings,
    gallery_table: Tensor,
    embeddings: Tensor,
    indices: List[int],
    number: int,
) -> Found:
    r"""The neighbours of one batch of queries, by the run's search.

    Args:

        settings (RunSettings): the run.
        gallery_table (Tensor): (M, D) gallery embeddings.
        embeddings (Tensor): (n, D) the batch's query embeddings.
        indices (list[int]): the batch's query indices.
        number (int): the batch's number (a FAISS run checks the first ones).

    Returns:
        *tuple* of **(values, neighbours, extras)**: (n, k_search) float32
        similarities and gallery indices on the CPU, best first (the system's
        order for given neighbours), and per query the fields :func:`annotate`
        adds to its record.
    """
    with section("search"):
        extras: List[Dict[str, Any]] = [{} for _ in indices]
        system = settings.system
        if system is not None:
            neighbours = system.indices[indices]
            n, k = neighbours.shape
            chosen = gallery_table[neighbours.flatten().to(gallery_table.device)]
            query = embeddings.float()[:, None].expand(n, k, -1).reshape(n * k, -1)
            values = paired_similarity(query, chosen.float(), settings.metric)
            values = values.view(n, k).cpu()
            model_rank = model_ranks(values)
            for row, query_index in enumerate(indices):
                fields: List[Dict[str, Any]] = [
                    {"model_rank": int(r)} for r in model_rank[row]
                ]
                if system.scores is not None:
                    for item, score in zip(fields, system.scores[query_index]):
                        item["system_score"] = float(score)
                extras[row]["neighbours"] = fields
            return values, neighbours, extras
        skip = None if settings.exclude is None else settings.exclude[indices]
        if skip is not None:
            skip = skip.to(embeddings.device)
        if settings.search == "faiss":
            values, neighbours = _faiss_search(
                settings, gallery_table, embeddings, skip
            )
            if number * settings.batch_size < RECALL_CHECK_QUERIES:
                _, exact = exact_top_k(
                    embeddings, gallery_table, settings.k_search, settings.metric,
                    settings.gallery_chunk, skip,
                )  # fmt: skip
                k = settings.k
                for row in range(len(indices)):
                    truth = set(exact[row, :k].cpu().tolist())
                    hits = len(truth & set(neighbours[row, :k].tolist()))
                    extras[row]["search_recall"] = hits / k
            return values, neighbours, extras
        values, neighbours = exact_top_k(
            embeddings, gallery_table, settings.k_search, settings.metric,
            settings.gallery_chunk, skip,
        )  # fmt: skip
        return values.cpu(), neighbours.cpu(), extras


def annotate(records: List[Dict[str, Any]], extras: List[Dict[str, Any]]) -> None:
    """Add :func:`search_batch`'s fields to the batch's records, in place:
    record-level fields, and ``neighbours`` fields item by item."""
    for record, extra in zip(records, extras):
        for key, value in extra.items():
            if key == "neighbours":
                for item, fields in zip(record["neighbours"], value):
                    item.update(fields)
            else:
                record[key] = value


__all__ = ["RECALL_CHECK_QUERIES", "annotate", "model_ranks", "search_batch"]
