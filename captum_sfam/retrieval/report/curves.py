r"""The report's summary: Recall@k, mAP, ROC and precision–recall curves and
the similarity histograms of true and false pairs, drawn by matplotlib.

The curves are over all (query, gallery item) pairs of the labelled queries
(the verification view, one threshold for every query, as fastreid's ROC),
estimated from the similarities each run batch sampled
(:mod:`..audit`: up to 256 true pairs and 256 random false pairs per
query): a sampled pair of query i stands for ``R_i / p_i`` true pairs or
``(M - R_i) / n_i`` false pairs (R_i true matches, p_i and n_i sampled, M
the gallery), so the curves are those of the whole query x gallery matrix
up to sampling. Recall@r is the share of labelled queries whose first true
match ranks r or better (exact: the run ranks every first true match).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..._optional import require_extra

Curve = Tuple[np.ndarray, np.ndarray]
#: the curves read the samples of at most this many queries (evenly spaced)
MAX_CURVE_QUERIES = 20_000


def roc_curve(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> Curve:
    r"""Weighted ROC: (false positive rates, true positive rates), from the
    threshold above every score down to below every score (ties share a
    point).

    Args:
        scores (np.ndarray): (P,) similarities.
        positive (np.ndarray): (P,) bool, a true pair.
        weights (np.ndarray): (P,) how many pairs each stands for (> 0).
    """
    order = np.argsort(-scores, kind="stable")
    s, pos, w = scores[order], positive[order], weights[order]
    tp = np.cumsum(np.where(pos, w, 0.0))
    fp = np.cumsum(np.where(pos, 0.0, w))
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each tie
    tpr = np.r_[0.0, tp[last] / max(tp[-1], 1e-300)]
    fpr = np.r_[0.0, fp[last] / max(fp[-1], 1e-300)]
    return fpr, tpr


def precision_recall(
    scores: np.ndarray, positive: np.ndarray, weights: np.ndarray
) -> Curve:
    """Weighted precision–recall: (recalls, precisions) at each distinct
    threshold, highest first."""
    order = np.argsort(-scores, kind="stable")
    s, pos, w = scores[order], positive[order], weights[order]
    tp = np.cumsum(np.where(pos, w, 0.0))
    fp = np.cumsum(np.where(pos, 0.0, w))
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    return tp[last] / max(tp[-1], 1e-300), tp[last] / (tp[last] + fp[last])


def area(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area under y(x)."""
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def recall_at(ranks: np.ndarray, upto: int) -> np.ndarray:
    """Recall@r for r = 1..upto: the share of ``ranks`` (first true matches)
    that are <= r."""
    r = np.arange(1, upto + 1)
    if len(ranks) == 0:
        return np.zeros(upto)
    return (ranks[None, :] <= r[:, None]).mean(axis=1)


@dataclass
class Samples:
    """The sampled similarities of a run, with the pairs each stands for."""

    scores: List[np.ndarray] = field(default_factory=list)
    positive: List[np.ndarray] = field(default_factory=list)
    weights: List[np.ndarray] = field(default_factory=list)

    def add(self, values: np.ndarray, is_true: bool, stands_for: float) -> None:
        if len(values):
            self.scores.append(values.astype(np.float64))
            self.positive.append(np.full(len(values), is_true))
            self.weights.append(np.full(len(values), stands_for / len(values)))

    def arrays(self) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if not self.scores:
            return None
        positive = np.concatenate(self.positive)
        if positive.all() or not positive.any():
            return None
        return np.concatenate(self.scores), positive, np.concatenate(self.weights)


def read_samples(
    out: Path, rows: Dict[str, List[Tuple[int, int]]], gallery: int
) -> Samples:
    r"""The sampled similarities of the labelled queries.

    Args:
        out (Path): the run directory.
        rows (dict): shard file -> [(row, R)] of each labelled query (at
                    most ``MAX_CURVE_QUERIES`` of them are read, evenly
                    spaced in query order, so memory stays bounded).
        gallery (int): M, the gallery's size.
    """
    from safetensors import safe_open

    samples = Samples()
    total = sum(len(wanted) for wanted in rows.values())
    step = max(1, -(-total // MAX_CURVE_QUERIES))  # every step-th query
    seen = 0
    for name, wanted in rows.items():
        wanted = [w for i, w in enumerate(wanted, start=seen) if i % step == 0]
        seen += len(rows[name])
        if not wanted:
            continue
        with safe_open(str(out / name), framework="np") as handle:
            keys = set(handle.keys())
            if "positive_offsets" not in keys:
                continue
            parts = {
                kind: (handle.get_tensor(f"{kind}_similarities"),
                       handle.get_tensor(f"{kind}_offsets"))
                for kind in ("positive", "negative")
            }  # fmt: skip
        for row, relevant in wanted:
            for kind, stands_for in (
                ("positive", relevant),
                ("negative", gallery - relevant),
            ):
                values, offsets = parts[kind]
                samples.add(
                    values[offsets[row] : offsets[row + 1]],
                    kind == "positive",
                    stands_for,
                )
    return samples


def _figure(title: str, xlabel: str, ylabel: str):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.4, 2.7), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def draw(
    folder: Path, ranks: np.ndarray, upto: int, samples: Samples
) -> Tuple[Dict[str, str], Dict[str, float]]:
    r"""Draw the summary's plots as PNG files in ``folder``.

    Args:
        folder (Path): where the files go (created).
        ranks (np.ndarray): the first true match's rank of each labelled
                    query with one.
        upto (int): the last r of the Recall@r curve.
        samples (Samples): the sampled similarities.

    Returns:
        *tuple* of **(files, numbers)**: plot name -> file name in ``folder``,
        and ``roc_auc`` and ``pairs_ap`` (the area under the
        precision–recall curve) when there were true and false pairs.
    """
    require_extra("matplotlib", "matplotlib")
    folder.mkdir(parents=True, exist_ok=True)
    files: Dict[str, str] = {}
    numbers: Dict[str, float] = {}
    if len(ranks):
        figure, axes = _figure("Recall@r (first true match by rank r)", "r", "Recall@r")
        r = np.arange(1, upto + 1)
        axes.step(r, recall_at(ranks, upto), where="post")
        axes.set_ylim(0, 1.02)
        figure.savefig(folder / "recall.png")
        files["recall"] = "recall.png"
    arrays = samples.arrays()
    if arrays is None:
        return files, numbers
    scores, positive, weights = arrays
    fpr, tpr = roc_curve(scores, positive, weights)
    numbers["roc_auc"] = area(fpr, tpr)
    figure, axes = _figure(
        "ROC, all query-gallery pairs", "false positive rate", "true positive rate"
    )
    axes.plot(fpr, tpr, label=f"AUC {numbers['roc_auc']:.3f}")
    axes.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    axes.legend(loc="lower right")
    figure.savefig(folder / "roc.png")
    files["roc"] = "roc.png"
    recall, precision = precision_recall(scores, positive, weights)
    numbers["pairs_ap"] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    figure, axes = _figure("Precision-recall, all pairs", "recall", "precision")
    axes.plot(recall, precision, label=f"AP {numbers['pairs_ap']:.3f}")
    axes.set_ylim(0, 1.02)
    axes.legend(loc="upper right")
    figure.savefig(folder / "pr.png")
    files["pr"] = "pr.png"
    figure, axes = _figure(
        "Similarities of true and false pairs", "similarity", "density"
    )
    bins = np.linspace(scores.min(), scores.max(), 41)
    for flag, name, colour in (
        (True, "true pairs", "tab:green"),
        (False, "false pairs", "tab:red"),
    ):
        chosen = positive == flag
        axes.hist(scores[chosen], bins=bins, weights=weights[chosen], density=True,
                  alpha=0.5, color=colour, label=name)  # fmt: skip
    axes.legend()
    figure.savefig(folder / "similarities.png")
    files["similarities"] = "similarities.png"
    return files, numbers


__all__ = [
    "Samples",
    "area",
    "draw",
    "precision_recall",
    "read_samples",
    "recall_at",
    "roc_curve",
]
