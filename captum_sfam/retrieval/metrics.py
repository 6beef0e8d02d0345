r"""Retrieval metrics of a query set against a gallery, from ranked lists.

:func:`captum_sfam.metrics.recall_at_k` scores one set against itself
(leave-one-out) from embeddings; a retrieval run ranks a query set against a
separate gallery and keeps each query's top k', so its metrics are computed
from the ranked labels:

- Recall@r: 1 when a same-label item is among the first r neighbours;
- AP@K (as open-metric-learning's ``map@k``):
  :math:`\frac{1}{\min(R, K)} \sum_{i \le K} P@i \cdot rel_i`, with R the
  number of gallery items sharing the query's label; it equals the full
  average precision when K >= R. mAP@K is its mean over the queries with
  R >= 1.
"""

from __future__ import annotations

from typing import Dict, Iterable, Sequence, Tuple

#: Recall@r reported for every r <= the number of neighbours searched
RECALL_AT = (1, 5)


def average_precision_at_k(hits: Sequence[bool], relevant: int, k: int) -> float:
    r"""AP@k of one ranked list.

    Args:
        hits (Sequence[bool]): whether each ranked item (best first) is
                    relevant; at least ``k`` long, or all the gallery.
        relevant (int): relevant items in the whole gallery, R >= 1.
        k (int): cutoff.

    Returns:
        *float* in [0, 1].
    """
    if relevant < 1:
        raise ValueError("AP needs at least one relevant item")
    found, total = 0, 0.0
    for i, hit in enumerate(hits[:k], start=1):
        if hit:
            found += 1
            total += found / i
    return total / min(relevant, k)


def query_metrics(hits: Sequence[bool], relevant: int, k: int) -> Dict[str, float]:
    """Recall@1, Recall@5 (when k >= 5) and AP@k of one query; all zero when
    the gallery has no relevant item (such queries are left out of means)."""
    metrics = {f"recall@{r}": float(any(hits[:r])) for r in RECALL_AT if r <= k}
    metrics[f"ap@{k}"] = average_precision_at_k(hits, relevant, k) if relevant else 0.0
    return metrics


def mean_query_metrics(
    per_query: Iterable[Dict[str, float]],
) -> Tuple[Dict[str, float], int]:
    r"""The mean of each metric over queries, AP@K reported as mAP@K.

    Args:
        per_query (Iterable[dict[str, float]]): the :func:`query_metrics` of
                    each query that has a relevant gallery item (queries
                    without one are left out of the means), all with the same
                    names; read once, in order.

    Returns:
        *tuple[dict[str, float], int]* of **(means, count)**: the mean of each
        metric (``ap@K`` named ``map@K``), empty when ``per_query`` is, and
        the number of queries averaged.
    """
    totals: Dict[str, float] = {}
    counted = 0
    for metrics in per_query:
        counted += 1
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + value
    means = {
        name.replace("ap@", "map@"): value / counted for name, value in totals.items()
    }
    return means, counted


def mean_retrieval_metrics(
    ranked_labels: Sequence[Sequence[object]],
    query_labels: Sequence[object],
    gallery_labels: Sequence[object],
) -> Dict[str, float]:
    r"""Mean Recall@1/5 and mAP@K over queries with a relevant gallery item.

    Args:
        ranked_labels (Sequence[Sequence]): each query's top-K gallery labels,
                    best first (K the same for all).
        query_labels (Sequence): each query's label.
        gallery_labels (Sequence): every gallery item's label (for R).

    Returns:
        *dict[str, float]*: ``recall@1``, ``recall@5`` (if K >= 5),
        ``map@K``; empty when no query has a relevant item.
    """
    if len(ranked_labels) != len(query_labels):
        raise ValueError("one ranked list per query label is needed")
    counts: Dict[object, int] = {}
    for label in gallery_labels:
        counts[label] = counts.get(label, 0) + 1
    per_query = (
        query_metrics([item == label for item in ranked], counts[label], len(ranked))
        for ranked, label in zip(ranked_labels, query_labels)
        if counts.get(label, 0)
    )
    return mean_query_metrics(per_query)[0]
