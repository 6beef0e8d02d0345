r"""Benchmark of every pair-attribution method, with ground truth, offline.

    python -m captum_sfam.app.bench [--episodes 100] [--pairs 100] [--scenes 40]
                                    [--photo-pairs 20] [--pck-photos 5]
                                    [--out bench-results] [--seed 0] [--quick]
    captum-sfam bench ...       (or python -m captum_sfam.bench, an alias)

Four settings (see README for the last numbers):

(a) Euclidean few-shot: the prototypical network of :mod:`captum_sfam.demo.trained`
    on 5-way 1-shot episodes of the synthetic test classes; each episode's
    query is explained against the support of the class the model predicts.
(b) Cosine retrieval: the multi-similarity model; each query of the synthetic
    test set is explained against its top-1 gallery image.
(c) The ImageNet EfficientNet-Lite0 (offline) on two-object composites of
    scikit-image photos, each explained against a second view of one object.
(d) Correspondences: the same network on scikit-image photos paired with
    their mirrored, cropped and rescaled copies (geometry known by
    construction); PCK at one cell of every forward-only member's
    ``point_to_point``, in each reading.

Every pair of (a)-(c) also has a contrast: (a) the runner-up class, (b) the
rank-2 gallery image, (c) the other object. Each method that takes
``contrast=`` gets a second row, "<method> (contrast)", whose maps explain
"why the support and not the contrast" (Captum's LayerGradCam through a
:class:`~captum_sfam.SimilarityTarget` with ``contrast_support``), and every
row is also scored by contrastive deletion/insertion of the margin
:math:`s(q, S) - s(q, S')`.

Methods: the family (SFAM, similarity Grad-CAM, CG-RAM, Grad-FAM, RAM,
Decomposition for cosine) plus Captum's LayerGradCam and IntegratedGradients
through :class:`~captum_sfam.SimilarityTarget`. Metrics (``captum_sfam.metrics``):
localisation IoU and accuracy at IoU >= 0.5 over correctly decided samples
(threshold 0.2, the paper's protocol), pointing game, pair specificity and
shift on two-object scenes (for contrast rows: the support of one object with
the other as contrast), deletion / insertion AUC of the pair similarity and of
the margin over the contrast (lower / higher is better), PCK (d). No method is
tuned on these numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
from torch import Tensor
from torch.nn import Module

from .._optional import require_extra
from ..methods import READINGS, REGISTRY, PairAttribution, supports_contrast
from ..metrics import (
    box_from_map,
    box_iou,
    deletion_insertion,
    pair_specificity,
    pointing_game,
)
from ..metrics.correspondence import (
    TRANSFORMS,
    correspondence_pck,
    known_geometry_pair,
    true_cells,
)
from ..metrics.localization import BOX_THRESHOLD
from ..metrics.retrieval import nearest_neighbours, recall_at_k
from ..similarity import (
    SimilarityTarget,
    embed,
    paired_similarity,
    prototypes,
    similarity_matrix,
)

Explainer = Callable[[Tensor, Tensor], Tensor]  # (1,C,H,W), (K,C,H,W) -> (H, W)
#: (1,C,H,W), support (K,C,H,W), contrast (K',C,H,W) -> (H, W)
ContrastExplainer = Callable[[Tensor, Tensor, Tensor], Tensor]
#: the suffix of the rows whose maps explain a support against a contrast
CONTRAST = " (contrast)"
#: images embedded per forward pass
EMBED_BATCH = 256
#: (a) N-way 1-shot episodes
WAYS = 5
COLUMNS = [
    "iou",
    "acc50",
    "pointing",
    "specificity",
    "shift",
    "deletion",
    "insertion",
    "c_deletion",
    "c_insertion",
    "pck",
]


def explainers(
    model: Module, layer: Module, metric: str, ig_steps: int = 32
) -> Dict[str, Explainer]:
    """Every method as ``f(query, support) -> (H, W)`` map at image size."""

    def family(cls: type) -> Explainer:
        method = cls(model, layer, metric=metric)

        def run(query: Tensor, support: Tensor) -> Tensor:
            attr = method.attribute(query, support)
            up = LayerAttribution.interpolate(attr, query.shape[-2:], "bilinear")
            return up[0, 0]

        return run

    def target(support: Tensor) -> SimilarityTarget:
        return SimilarityTarget.from_support(model, support[None], metric=metric)

    def gradcam(query: Tensor, support: Tensor) -> Tensor:
        attr = LayerGradCam(target(support), layer).attribute(query, target=0)
        up = LayerAttribution.interpolate(attr.detach(), query.shape[-2:], "bilinear")
        return up[0, 0]

    def integrated_gradients(query: Tensor, support: Tensor) -> Tensor:
        attr = IntegratedGradients(target(support)).attribute(
            query, target=0, n_steps=ig_steps, internal_batch_size=ig_steps
        )
        return attr.detach()[0].abs().sum(0)

    out = {
        member.display_name: family(member.cls)
        for member in REGISTRY.values()
        if metric in member.supported_metrics
    }
    out["Captum LayerGradCam"] = gradcam
    out["Captum IntegratedGradients"] = integrated_gradients
    return out


def contrast_explainers(
    model: Module, layer: Module, metric: str
) -> Dict[str, ContrastExplainer]:
    """Every method with a contrastive map as ``f(query, support, contrast)``."""

    def family(method: PairAttribution) -> ContrastExplainer:
        def run(query: Tensor, support: Tensor, contrast: Tensor) -> Tensor:
            attr = method.attribute(query, support, contrast=contrast)
            up = LayerAttribution.interpolate(attr, query.shape[-2:], "bilinear")
            return up[0, 0].detach()

        return run

    def gradcam(query: Tensor, support: Tensor, contrast: Tensor) -> Tensor:
        target = SimilarityTarget.from_support(
            model, support[None], metric=metric, contrast_support=contrast[None]
        )
        attr = LayerGradCam(target, layer).attribute(query, target=0)
        up = LayerAttribution.interpolate(attr.detach(), query.shape[-2:], "bilinear")
        return up[0, 0]

    members = {
        member.display_name: member.cls(model, layer, metric=metric)
        for member in REGISTRY.values()
        if metric in member.supported_metrics
    }  # default settings: RAM "self" and Grad-FAM have no contrastive map
    out = {
        name + CONTRAST: family(method)
        for name, method in members.items()
        if supports_contrast(method)
    }
    out["Captum LayerGradCam" + CONTRAST] = gradcam
    return out


def _score_fn(
    model: Module, support: Tensor, metric: str
) -> Callable[[Tensor], Tensor]:
    ref = prototypes(model, support[None])

    def score(batch: Tensor) -> Tensor:
        emb = embed(model, batch)
        return paired_similarity(emb, ref.expand_as(emb), metric)

    return score


def margin_fn(
    model: Module, support: Tensor, contrast: Tensor, metric: str
) -> Callable[[Tensor], Tensor]:
    r"""Images (B, C, H, W) -> :math:`s(q, S) - s(q, S')` (B,), both prototypes
    embedded once: :func:`~captum_sfam.metrics.deletion_insertion` with it is
    :func:`~captum_sfam.metrics.contrastive_deletion_insertion` (tested)."""
    refs = prototypes(model, torch.stack([support, contrast]))

    def score(batch: Tensor) -> Tensor:
        emb = embed(model, batch)
        sims = similarity_matrix(emb, refs, metric)
        return sims[:, 0] - sims[:, 1]

    return score


class Tally:
    """Per-method lists of metric values."""

    def __init__(self, methods: Iterable[str]) -> None:
        self.values = {m: {c: [] for c in COLUMNS} for m in methods}

    def add(self, method: str, column: str, value: float) -> None:
        self.values[method][column].append(float(value))

    def summary(self) -> Dict[str, Dict[str, Optional[float]]]:
        out = {}
        for method, cols in self.values.items():
            row = {}
            for c, vals in cols.items():
                row[c] = float(np.mean(vals)) if vals else None
                row[c + "_n"] = len(vals)
            out[method] = row
        return out


Pair = Tuple[Tensor, Tensor, Tensor, Tuple, bool]
Scene = Tuple[Tensor, Tensor, Tensor, Tuple, Tuple]


def evaluate(
    model: Module,
    layer: Module,
    metric: str,
    pairs: Sequence[Pair],
    scenes: Sequence[Scene],
    steps: int,
    progress: bool,
    label: str,
    ig_steps: int = 32,
) -> Dict[str, Dict[str, Optional[float]]]:
    r"""Run every method on decided pairs and on two-object scenes.

    ``pairs``: (query (1,C,H,W), support (K,C,H,W), contrast (K',C,H,W),
    query box, correct). ``scenes``: (scene (1,C,H,W), support of A, support
    of B, box A, box B). Plain maps explain the query against the support;
    "(contrast)" rows explain it against the support relative to the contrast
    (on scenes: A against B, and B against A).
    """
    require_extra("tqdm", "tqdm")
    from tqdm.auto import tqdm

    plain = explainers(model, layer, metric, ig_steps)
    contrastive = contrast_explainers(model, layer, metric)

    def maps(query: Tensor, support: Tensor, contrast: Tensor) -> Dict[str, Tensor]:
        out = {name: explain(query, support) for name, explain in plain.items()}
        for name, explain in contrastive.items():
            out[name] = explain(query, support, contrast)
        return out

    tally = Tally([*plain, *contrastive])
    bar = tqdm(total=len(pairs) + len(scenes), desc=label, disable=not progress)
    for query, support, contrast, box, correct in pairs:
        score = _score_fn(model, support, metric)
        margin = margin_fn(model, support, contrast, metric)
        for name, saliency in maps(query, support, contrast).items():
            if correct:
                iou = box_iou(box_from_map(saliency, BOX_THRESHOLD), box)
                tally.add(name, "iou", iou)
                tally.add(name, "acc50", iou >= 0.5)
                tally.add(name, "pointing", pointing_game(saliency, box))
            curves = deletion_insertion(score, query, saliency, steps=steps)
            tally.add(name, "deletion", curves["deletion_auc"])
            tally.add(name, "insertion", curves["insertion_auc"])
            curves = deletion_insertion(margin, query, saliency, steps=steps)
            tally.add(name, "c_deletion", curves["deletion_auc"])
            tally.add(name, "c_insertion", curves["insertion_auc"])
        bar.update(1)
    for scene, support_a, support_b, box_a, box_b in scenes:
        for_a, for_b = (
            maps(scene, support_a, support_b),
            maps(scene, support_b, support_a),
        )
        for name in for_a:
            spec = pair_specificity(for_a[name], for_b[name], box_a, box_b)
            tally.add(name, "specificity", spec["specificity"])
            tally.add(name, "shift", spec["shift"])
        bar.update(1)
    bar.close()
    return tally.summary()


def correspondence_setting(
    model: Module, layer: Module, photos: Sequence[Tensor]
) -> Dict[str, Dict[str, Optional[float]]]:
    r"""(d) PCK at one cell of every forward-only member's ``point_to_point``,
    in each reading it offers, on each photo paired with its mirrored, cropped
    and rescaled copy; a "chance" row scores constant maps."""
    pairs = [known_geometry_pair(photo, t) for photo in photos for t in TRANSFORMS]
    rows: Dict[str, Dict[str, List[float]]] = {}

    def add(name: str, transform: str, value: float) -> None:
        row = rows.setdefault(name, {t: [] for t in TRANSFORMS})
        row[transform].append(value)

    chance_done = set()
    for member in REGISTRY.values():
        if not member.forward_only or "cosine" not in member.supported_metrics:
            continue
        method = member.cls(model, layer, metric="cosine")
        default = method.correspondence_reading
        for reading in READINGS:
            name = member.display_name
            name += f" ({reading}{', default' if reading == default else ''})"
            for index, kp in enumerate(pairs):
                scores = method.point_to_point(kp.query, kp.support, reading=reading)
                cells = true_cells(kp, scores.shape[1:3], scores.shape[-2:])[None]
                add(name, kp.transform, correspondence_pck(scores, cells))
                if index not in chance_done:  # constant maps: ties shared
                    chance_done.add(index)
                    zeros = torch.zeros_like(scores)
                    add("chance", kp.transform, correspondence_pck(zeros, cells))
    rows["chance"] = rows.pop("chance", {t: [] for t in TRANSFORMS})  # last
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for name, row in rows.items():
        summary: Dict[str, Optional[float]] = {
            t: float(np.mean(v)) if v else None for t, v in row.items()
        }
        every = [x for v in row.values() for x in v]
        summary["pck"] = float(np.mean(every)) if every else None
        summary["pck_n"] = len(every)
        out[name] = summary
    return out


# ------------------------------------------------------------ settings -----
def fewshot_setting(args: argparse.Namespace, model: Module):
    from ..demo.synthetic import ShapesFewShot, TwoObjectScenes

    data = ShapesFewShot("test", seed=0)
    gen = torch.Generator().manual_seed(args.seed)
    pool = data.images_per_class // 2  # shots from the first half, queries after
    pairs, decided = [], 0
    for _ in range(args.episodes):
        classes = torch.randperm(len(data.classes), generator=gen)[:WAYS].tolist()
        shots = [
            data.images_of(c)[int(torch.randint(0, pool, (1,), generator=gen))]
            for c in classes
        ]
        truth = int(torch.randint(0, WAYS, (1,), generator=gen))
        query_id = data.images_of(classes[truth])[
            pool + int(torch.randint(0, pool, (1,), generator=gen))
        ]
        support = torch.stack([data[i][0] for i in shots])
        query, _, box = data[query_id]
        scores = similarity_matrix(
            embed(model, query[None]), embed(model, support), "euclidean"
        )
        predicted, runner_up = scores[0].topk(2).indices.tolist()
        decided += predicted == truth
        pairs.append(
            (
                query[None],
                support[predicted : predicted + 1],
                support[runner_up : runner_up + 1],
                box,
                predicted == truth,
            )
        )
    scenes = _scenes(TwoObjectScenes(data, args.scenes, seed=args.seed + 7), data)
    return pairs, scenes, {"accuracy_5way_1shot": decided / max(len(pairs), 1)}


def _scenes(two, data) -> List:
    out = []
    for i in range(len(two)):
        scene, (a, b), (box_a, box_b) = two[i]
        sa = data[data.images_of(a)[i % data.images_per_class]][0]
        sb = data[data.images_of(b)[i % data.images_per_class]][0]
        out.append((scene[None], sa[None], sb[None], box_a, box_b))
    return out


def retrieval_setting(args: argparse.Namespace, model: Module):
    from ..demo.synthetic import ShapesFewShot, TwoObjectScenes

    data = ShapesFewShot("test", images_per_class=10, seed=0)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data.label(i) for i in range(len(data))])
    emb = torch.cat([embed(model, chunk) for chunk in images.split(EMBED_BATCH)])
    metric = getattr(model, "metric", "cosine")
    nearest = nearest_neighbours(emb, metric, k=2)
    recall = recall_at_k(emb, labels, metric)
    gen = torch.Generator().manual_seed(args.seed)
    queries = torch.randperm(len(data), generator=gen)[: args.pairs].tolist()
    pairs = []
    for q in queries:
        _, _, box = data[q]
        hit, second = nearest[q].tolist()  # rank 1 against rank 2
        pairs.append(
            (
                images[q][None],
                images[hit][None],
                images[second][None],
                box,
                bool(labels[hit] == labels[q]),
            )
        )
    scenes = _scenes(TwoObjectScenes(data, args.scenes, seed=args.seed + 11), data)
    return pairs, scenes, {"recall_at_1": recall}


def photo_setting(args: argparse.Namespace):
    from ..demo.pretrained import (
        efficientnet_lite0,
        preprocess,
        sample_images,
        second_view,
        side_by_side,
    )

    model = efficientnet_lite0(embedding=True)
    photos = sample_images()
    names = ["cat", "coffee", "astronaut", "rocket", "motorcycle_left"]
    pairs, scenes = [], []
    for a in names:
        for b in names:
            if a == b:
                continue
            composite, (box_a, box_b) = side_by_side(photos[a], photos[b])
            scene = preprocess(composite)
            sa, sb = (
                preprocess(second_view(photos[a])),
                preprocess(second_view(photos[b])),
            )
            scenes.append((scene, sa, sb, box_a, box_b))
            pairs.append((scene, sa, sb, box_a, True))
    return model, model.bn2, pairs[: args.photo_pairs], scenes[: args.photo_pairs]


# ------------------------------------------------------------ report -------
HEADERS = {
    "iou": "IoU %",
    "acc50": "Acc@0.5 %",
    "pointing": "Point %",
    "specificity": "Spec.",
    "shift": "Shift",
    "deletion": "Del AUC",
    "insertion": "Ins AUC",
    "c_deletion": "Δ Del AUC",
    "c_insertion": "Δ Ins AUC",
}
PCK_HEADERS = {**{t: f"PCK@1 {t}" for t in TRANSFORMS}, "pck": "PCK@1 mean"}
PERCENT = ("iou", "acc50", "pointing", "pck", *TRANSFORMS)


def format_table(
    title: str,
    summary: Dict[str, Dict[str, Optional[float]]],
    headers: Optional[Dict[str, str]] = None,
) -> str:
    headers = HEADERS if headers is None else headers
    lines = [title, "| method | " + " | ".join(headers.values()) + " |"]
    lines.append("|---" * (len(headers) + 1) + "|")
    for method, row in summary.items():
        cells = []
        for c in headers:
            v = row.get(c)
            if v is None:
                cells.append("-")
            elif c in PERCENT:
                cells.append(f"{100 * v:.1f}")
            else:
                cells.append(f"{v:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fewshot(args: argparse.Namespace):
    from ..demo.trained import protonet

    model = protonet(steps=args.train_steps)
    pairs, scenes, info = fewshot_setting(args, model)
    title = (
        f"(a) Euclidean ProtoNet, 5-way 1-shot, {len(pairs)} episodes (5-way 1-shot "
        f"accuracy {info['accuracy_5way_1shot']:.1%}); {len(scenes)} two-object scenes"
    )
    return model, model.layer, "euclidean", pairs, scenes, info, title, {}


def _retrieval(args: argparse.Namespace):
    from ..demo.trained import cosine_embedder

    model = cosine_embedder(steps=args.train_steps)
    pairs, scenes, info = retrieval_setting(args, model)
    title = (
        f"(b) cosine multi-similarity model, top-1 retrieval pairs, {len(pairs)} "
        f"queries (Recall@1 {info['recall_at_1']:.1%}); {len(scenes)} scenes"
    )
    return model, model.layer, "cosine", pairs, scenes, info, title, {}


def _photos(args: argparse.Namespace):
    model, layer, pairs, scenes = photo_setting(args)
    title = (
        f"(c) ImageNet EfficientNet-Lite0 on {len(scenes)} two-object photo "
        "composites (localisation: the supported object's half)"
    )
    # 224 px images: fewer deletion steps and IG steps keep the run short
    options = {"steps": max(8, args.steps // 2), "ig_steps": 16}
    return model, layer, "cosine", pairs, scenes, {}, title, options


def _correspondence(args: argparse.Namespace):
    from ..demo.pretrained import efficientnet_lite0, preprocess, sample_images

    model = efficientnet_lite0(embedding=True)
    photos = sample_images()
    names = ["cat", "coffee", "astronaut", "rocket", "motorcycle_left"]
    chosen = [preprocess(photos[n]) for n in names[: args.pck_photos]]
    summary = correspondence_setting(model, model.bn2, chosen)
    title = (
        f"(d) EfficientNet-Lite0 point-to-point correspondences, PCK % at one cell "
        f"(7 x 7 grid), {len(chosen)} photos x {{{', '.join(TRANSFORMS)}}}"
    )
    return summary, {"photos": names[: args.pck_photos]}, title


SETTINGS = {"fewshot": _fewshot, "retrieval": _retrieval, "photos": _photos}
LABELS = {
    "fewshot": "(a) few-shot",
    "retrieval": "(b) retrieval",
    "photos": "(c) photos",
}
CHOICES = [*SETTINGS, "correspondence"]


def run(args: argparse.Namespace) -> Dict[str, object]:
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    report: Dict[str, object] = {"args": vars(args).copy(), "settings": {}}
    texts = []
    for key in [k for k in SETTINGS if k in args.settings]:
        model, layer, metric, pairs, scenes, info, title, options = SETTINGS[key](args)
        summary = evaluate(
            model,
            layer,
            metric,
            pairs,
            scenes,
            options.get("steps", args.steps),
            not args.no_progress,
            LABELS[key],
            ig_steps=options.get("ig_steps", 32),
        )
        report["settings"][key] = {"model": info, "methods": summary}
        texts.append(format_table(title, summary))
    if "correspondence" in args.settings:
        summary, info, title = _correspondence(args)
        report["settings"]["correspondence"] = {"model": info, "methods": summary}
        texts.append(format_table(title, summary, PCK_HEADERS))
    report["seconds"] = time.perf_counter() - start
    report["tables"] = texts
    return report


def write(report: Dict[str, object], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    with open(out / "bench.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", "method", *COLUMNS])
        for setting, content in report["settings"].items():  # type: ignore[union-attr]
            for method, row in content["methods"].items():
                writer.writerow([setting, method, *[row.get(c) for c in COLUMNS]])
    (out / "bench.md").write_text("\n\n".join(report["tables"]) + "\n")  # type: ignore[arg-type]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=100, help="(a) episodes")
    parser.add_argument("--pairs", type=int, default=100, help="(b) retrieval queries")
    parser.add_argument("--scenes", type=int, default=40, help="two-object scenes")
    parser.add_argument("--photo-pairs", type=int, default=20, help="(c) composites")
    parser.add_argument(
        "--pck-photos", type=int, default=5, help="(d) photos (1 to 5), 3 pairs each"
    )
    parser.add_argument(
        "--steps", type=int, default=16, help="deletion/insertion steps"
    )
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument(
        "--settings",
        nargs="+",
        default=CHOICES,
        choices=CHOICES,
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--quick", action="store_true", help="seconds: a smoke run")


def main_args(args: argparse.Namespace) -> int:
    if args.quick:
        args.episodes, args.pairs, args.scenes, args.photo_pairs = 3, 3, 2, 2
        args.pck_photos = 1
        args.steps, args.train_steps = (
            4,
            args.train_steps if args.train_steps < 200 else 3,
        )
    report = run(args)
    write(report, args.out)
    print("\n\n".join(report["tables"]))  # type: ignore[arg-type]
    print(
        f"\n{report['seconds']:.0f} s; wrote {args.out}/bench.json, bench.csv, bench.md"
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m captum_sfam.app.bench", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return main_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
