r"""``captum-sfam bench --settings image-text``: image–text ground truth.

The trained synthetic two-tower model (:mod:`captum_sfam.demo.two_tower`)
on two-object scenes of the *test* classes (unseen attribute combinations).

Image side: each scene is explained against the caption of each of its two
objects ("a red striped disc"), the text embeddings as ``references=``. A
map is scored on the object its phrase names: pointing (its arg-max in the
object's box), mass (the share of its positive mass in that box) and the
share in the other object's box. Methods: every gradient member of the
registry with ``references=`` (and ``contrast=`` the other phrase: "why
this phrase and not that one"), Captum's ``LayerGradCam`` and
``IntegratedGradients`` through a :class:`~captum_sfam.SimilarityTarget`
whose references are the text embeddings, and random maps (chance). The
forward-only members are not applicable: they weigh channels with the other
side's activations at the same layer, which a text does not have.

Text side: a single-object image of each object against the scene's
caption (both phrases, in random order). The words that name the pictured
object should outrank the other object's (words the two phrases share are
left out): "rank" is the share of (own word, other word) pairs ordered so
(ties count half), "top" the share of texts whose highest-scoring attribute
word is the pictured object's. Methods: :func:`text_token_scores`
(integrated gradients on the token embeddings), Captum's
``LayerGradientXActivation`` on the token embeddings and random scores
(chance).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import captum
import torch
from captum.attr import (
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    LayerGradientXActivation,
)
from torch import Tensor

from ...methods import REGISTRY
from ...metrics import pointing_game
from ...similarity import SimilarityTarget

#: (1, 3, H, W) scene, (R, D) text embeddings, reference index, contrast
#: index or None -> (H, W) map at image size
MapFn = Callable[[Tensor, Tensor, int, Optional[int]], Tensor]
#: the image-side columns and their headers
IMAGE_HEADERS = {"pointing": "Point %", "mass": "Mass %", "other": "Other %"}
#: the text-side columns and their headers
TEXT_HEADERS = {"rank": "Rank %", "top": "Top %", "delta": "delta / gap"}
#: the note on the members that cannot take a text
NOT_APPLICABLE = (
    "not applicable image-text (forward-only: their channel weights need the "
    "other side's activations at the explained layer, which a text has not)"
)


def _up(attr: Tensor, size: Tuple[int, int]) -> Tensor:
    return LayerAttribution.interpolate(attr.detach().float(), size, "bilinear")[0, 0]


def image_methods(tower: Any, ig_steps: int = 32) -> Tuple[Dict[str, MapFn], Dict]:
    r"""Every image-side method as a :data:`MapFn`, and the members left out.

    Returns:
        (name -> map function, member display name -> why it is left out).
    """
    model, layer = tower.image_model, tower.default_layer
    out: Dict[str, MapFn] = {}
    left_out: Dict[str, str] = {}
    for member in REGISTRY.values():
        if member.forward_only:
            left_out[member.display_name] = NOT_APPLICABLE
            continue
        try:
            method = member.cls(model, layer, metric="cosine")
        except (TypeError, ValueError) as error:
            left_out[member.display_name] = f"not built on this model: {error}"
            continue

        def run(scene, refs, j, k, method=method):
            kwargs = {} if k is None else {"contrast": k}
            attr = method.attribute(scene, references=refs, target=j, **kwargs)
            return _up(attr, scene.shape[-2:])

        out[member.display_name] = run
        if getattr(method, "contrast_refusal", None) is None:
            out[member.display_name + " (contrast)"] = run

    from ...image_text import LayerMultiBlockGrad

    multi = LayerMultiBlockGrad(model, tower.map_layers, metric="cosine")

    def multiblock(scene, refs, j, k):
        kwargs = {} if k is None else {"contrast": k}
        attr = multi.attribute(scene, references=refs, target=j, **kwargs)
        return _up(attr, scene.shape[-2:])

    blocks = f"Multi-block gradient ({len(tower.map_layers)} blocks)"
    out[blocks] = multiblock
    out[blocks + " (contrast)"] = multiblock

    def gradcam(scene, refs, j, k):
        contrast = None if k is None else refs[k : k + 1]
        target = SimilarityTarget(model, refs, "cosine", contrast=contrast)
        return _up(
            LayerGradCam(target, layer).attribute(scene, target=j), scene.shape[-2:]
        )

    def integrated(scene, refs, j, k):
        target = SimilarityTarget(model, refs, "cosine")
        attr = IntegratedGradients(target).attribute(
            scene, target=j, n_steps=ig_steps, internal_batch_size=ig_steps
        )
        return attr.detach()[0].abs().sum(0)

    out["Captum LayerGradCam"] = gradcam
    out["Captum LayerGradCam (contrast)"] = gradcam
    out["Captum IntegratedGradients"] = integrated
    return out, left_out


def _mass(m: Tensor, box: Tuple) -> float:
    positive = m.clamp(min=0)
    total = float(positive.sum())
    if total <= 0:
        return 0.0
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return float(positive[y0:y1, x0:x1].sum()) / total


def _mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def image_side(
    tower: Any, scenes: List, captions: List, ig_steps: int, seed: int
) -> Tuple[Dict[str, Dict[str, Optional[float]]], Dict[str, str]]:
    """Pointing and mass of every method's maps on the named object."""
    methods, left_out = image_methods(tower, ig_steps)
    gen = torch.Generator().manual_seed(seed)
    rows: Dict[str, Dict[str, List[float]]] = {}
    for (scene, boxes), (text_a, text_b) in zip(scenes, captions):
        refs = tower.encode_text([text_a, text_b])
        size = scene.shape[-2:]
        for j in (0, 1):
            box, other = boxes[j], boxes[1 - j]
            maps = {
                "random": _up(torch.rand(1, 1, 8, 8, generator=gen), size),
            }
            for name, fn in methods.items():
                if name in left_out:
                    continue
                k = (1 - j) if name.endswith("(contrast)") else None
                try:
                    maps[name] = fn(scene, refs, j, k)
                except TypeError as error:  # a member without references= yet
                    left_out[name] = f"no references= yet: {error}"
            for name, m in maps.items():
                row = rows.setdefault(name, {c: [] for c in IMAGE_HEADERS})
                row["pointing"].append(float(pointing_game(m, box)))
                row["mass"].append(_mass(m, box))
                row["other"].append(_mass(m, other))
    order = [n for n in methods if n in rows] + ["random"]
    summary = {n: {c: _mean(v) for c, v in rows[n].items()} for n in order}
    return summary, {k: v for k, v in left_out.items() if k not in summary}


def _word_ranks(tokens: List[str], scores: Tensor, own: set, other: set):
    """(rank share, top hit) of the own words over the other object's."""
    own_s = [float(s) for t, s in zip(tokens, scores) if t in own]
    other_s = [float(s) for t, s in zip(tokens, scores) if t in other]
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a in own_s for b in other_s]
    words = [(float(s), t) for t, s in zip(tokens, scores) if t in own | other]
    top = max(words)[1] in own
    return sum(pairs) / len(pairs), float(top)


def _gradient_x_embedding(tower: Any, image: Tensor, caption: str) -> Tensor:
    """Captum's ``LayerGradientXActivation`` on the token embeddings, the
    model's own score as the output: (L,) scores of one text."""
    ids = tower.tokenize([caption])
    emb = tower.encode_image(image)

    def forward(token_ids: Tensor, image_emb: Tensor) -> Tensor:
        return tower.metric(image_emb, tower.text_model(token_ids))

    attr = LayerGradientXActivation(forward, tower.token_embedding).attribute(
        ids, additional_forward_args=(emb,)
    )
    return attr.detach()[0].sum(-1)[: len(tower.tokens(ids)[0])]


def text_side(
    tower: Any, items: List, ig_steps: int, seed: int
) -> Dict[str, Dict[str, Optional[float]]]:
    """How often the pictured object's words outrank the other object's."""
    from ...image_text.text import text_token_scores

    gen = torch.Generator().manual_seed(seed + 1)
    rows: Dict[str, Dict[str, List[float]]] = {}
    for image, caption, own, other in items:
        runs = {
            "text_token_scores (IG on token embeddings)": text_token_scores(
                tower, image, caption, n_steps=ig_steps
            ),
        }
        results = {}
        for name, res in runs.items():
            gap = float((res.score - res.baseline_score).abs()[0])
            delta = abs(float(res.delta[0])) / max(gap, 1e-12)
            results[name] = (res.tokens[0], res.scores[0], delta)
        tokens = runs[next(iter(runs))].tokens[0]
        results["Captum LayerGradientXActivation (token embeddings)"] = (
            tokens,
            _gradient_x_embedding(tower, image, caption),
            None,
        )
        results["random"] = (tokens, torch.rand(len(tokens), generator=gen), None)
        for name, (toks, scores, delta) in results.items():
            rank, top = _word_ranks(toks, scores, own, other)
            row = rows.setdefault(name, {c: [] for c in TEXT_HEADERS})
            row["rank"].append(rank)
            row["top"].append(top)
            if delta is not None:
                row["delta"].append(delta)
    return {n: {c: _mean(v) for c, v in r.items()} for n, r in rows.items()}


def _data(args: argparse.Namespace):
    """The scenes (image, boxes) and their phrase pairs; the text-side items."""
    from ...demo.synthetic import ShapesFewShot, TwoObjectScenes
    from ...demo.two_tower import phrase, phrase_words, scene_caption

    data = ShapesFewShot("test", images_per_class=10, seed=0)
    two = TwoObjectScenes(data, args.scenes, seed=args.seed + 13)
    gen = torch.Generator().manual_seed(args.seed)
    scenes, captions, items = [], [], []
    for i in range(len(two)):
        scene, (a, b), boxes = two[i]
        ca, cb = data.classes[a], data.classes[b]
        scenes.append((scene[None], boxes))
        captions.append((phrase(ca), phrase(cb)))
        wa, wb = set(phrase_words(ca)), set(phrase_words(cb))
        first, second = (
            (ca, cb) if bool(torch.rand(1, generator=gen) < 0.5) else (cb, ca)
        )
        caption = scene_caption(first, second)
        for label, own, other in ((a, wa - wb, wb - wa), (b, wb - wa, wa - wb)):
            image = data[data.images_of(label)[i % data.images_per_class]][0]
            items.append((image[None], caption, own, other))
    return scenes, captions, items


def format_tables(result: Dict[str, Any]) -> List[str]:
    """The image-side and text-side tables as Markdown."""
    out = []
    for key, headers, title in (
        ("methods", IMAGE_HEADERS, result["image_title"]),
        ("text", TEXT_HEADERS, result["text_title"]),
    ):
        lines = [title, "| method | " + " | ".join(headers.values()) + " |"]
        lines.append("|---" * (len(headers) + 1) + "|")
        for name, row in result[key].items():
            cells = []
            for c in headers:
                v = row.get(c)
                if v is None:
                    cells.append("-")
                else:
                    cells.append(f"{v:.3f}" if c == "delta" else f"{100 * v:.1f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if key == "methods":
            reasons: Dict[str, List[str]] = {}
            for name, why in result["not_applicable"].items():
                reasons.setdefault(why, []).append(name)
            for why, names in reasons.items():
                lines.append(f"\n{', '.join(names)}: {why}.")
        out.append("\n".join(lines))
    return out


def image_text_setting(args: argparse.Namespace) -> Dict[str, Any]:
    r"""Runs the image-text setting.

    Args:
        args (argparse.Namespace): ``scenes``, ``seed`` and ``out``; the
                    record is also written to ``args.out/image-text.json``.

    Returns:
        ``{"model": info, "methods": image rows, "text": text rows,
        "not_applicable": ..., "tables": [...], ...}``.
    """
    from ...demo.two_tower import retrieval_accuracy, synthetic_two_tower

    began = time.perf_counter()
    tower = synthetic_two_tower()
    scenes, captions, items = _data(args)
    ig_steps = 32
    image_rows, left_out = image_side(tower, scenes, captions, ig_steps, args.seed)
    text_rows = text_side(tower, items, ig_steps, args.seed)
    info = {"retrieval_top1_test": retrieval_accuracy(tower, "test", 2)["top1"]}
    result: Dict[str, Any] = {
        "model": info,
        "methods": image_rows,
        "text": text_rows,
        "not_applicable": left_out,
        "image_title": (
            f"(f) image-text, image side: synthetic two-tower model (test-class "
            f"image -> caption top-1 {info['retrieval_top1_test']:.1%}, chance "
            f"0.4%), {len(scenes)} two-object scenes x 2 phrases"
        ),
        "text_title": (
            f"(f) image-text, text side: {len(items)} single-object images "
            "against the two-object caption; the pictured object's words "
            "against the other's"
        ),
    }
    result["tables"] = format_tables(result)
    result["seconds"] = time.perf_counter() - began
    command = (
        f"captum-sfam bench --settings image-text --scenes {args.scenes} "
        f"--seed {args.seed} --out {args.out}"
    )
    record(result, Path(args.out) / "image-text.json", command)
    return result


def record(result: Dict[str, Any], path: Path, command: str) -> None:
    """``result`` as JSON with the date, the versions and the command."""
    data = {
        "date": date.today().isoformat(),
        "command": command,
        "machine": {
            "torch": torch.__version__,
            "captum": captum.__version__,
            "python": platform.python_version(),
            "device": "cpu",
        },
        **result,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


__all__ = ["format_tables", "image_methods", "image_text_setting", "record"]
