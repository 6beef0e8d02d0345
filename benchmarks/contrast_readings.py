r"""Which contrastive reading of SFAM follows the support? Measured on real photos.

Offline: the ImageNet EfficientNet-Lite0 (layer ``bn2``, 1280 x 7 x 7) and
two-object composites of scikit-image photos (the benchmark's photo setting:
every ordered pair of 5 photos, 20 composites). Each composite Q holds
objects a (left) and b (right); the support S is a second view of a, the
contrast S' a second view of b, and the other way round. The score is the
pair specificity of ``captum_sfam.metrics.pair_specificity``: the mean share
of the positive map mass on the matching half (0.5: the map ignores the
support; 1: it sits on the matching object only).

Readings of SFAM against a contrast (Eq. 2 scores ω, Eq. 4 Norm):

- ``after``:  Norm(ω(Q, S)) - Norm(ω(Q, S'))  (subtract after Eq. 4)
- ``before``: Norm(ω(Q, S) - ω(Q, S'))  (subtract the Eq. 2 scores, then Eq. 4)
- ``before-signed``: (ω(Q, S) - ω(Q, S')) / max|ω(Q, S) - ω(Q, S')|
- ``before-positive``: ReLU(ω(Q, S) - ω(Q, S')), scaled to max 1

and, for reference, SFAM without contrast and every forward-only member's
``attribute(..., contrast=...)`` as the library computes it.

    python benchmarks/contrast_readings.py [--metric cosine] [--pairs 20]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List

import torch
from captum.attr import LayerAttribution

from captum_sfam import (
    LayerDecomposition,
    LayerRAM,
    LayerSFAM,
    LayerSimilarityGradCam,
    channel_importance,
    minmax_normalize,
)
from captum_sfam.demo.pretrained import (
    efficientnet_lite0,
    preprocess,
    sample_images,
    second_view,
    side_by_side,
)
from captum_sfam.metrics import pair_specificity

NAMES = ["cat", "coffee", "astronaut", "rocket", "motorcycle_left"]


def composites(pairs: int):
    """(scene, view of a, view of b, box a, box b) for ordered photo pairs."""
    photos = sample_images()
    out = []
    for a in NAMES:
        for b in NAMES:
            if a != b:
                scene, (box_a, box_b) = side_by_side(photos[a], photos[b])
                views = [preprocess(second_view(photos[x])) for x in (a, b)]
                out.append((preprocess(scene), *views, box_a, box_b))
    return out[:pairs]


def sfam_readings(metric: str) -> Dict[str, Callable]:
    def scores(vq, vs):
        return channel_importance(vq, vs, metric).double()  # Eq. 2 / 5

    def after(vq, vs, vc):
        return minmax_normalize(scores(vq, vs)) - minmax_normalize(scores(vq, vc))

    def before(vq, vs, vc):
        return minmax_normalize(scores(vq, vs) - scores(vq, vc))

    def before_signed(vq, vs, vc):
        diff = scores(vq, vs) - scores(vq, vc)
        return diff / diff.abs().amax(dim=-1, keepdim=True)

    def before_positive(vq, vs, vc):
        diff = (scores(vq, vs) - scores(vq, vc)).clamp(min=0)
        return diff / diff.amax(dim=-1, keepdim=True).clamp(min=1e-300)

    def plain(vq, vs, vc):
        return minmax_normalize(scores(vq, vs))

    return {
        "SFAM, no contrast": plain,
        "SFAM after (Norm - Norm)": after,
        "SFAM before (Norm of ω - ω')": before,
        "SFAM before, signed (ω - ω')/max|.|": before_signed,
        "SFAM before, positive part ReLU(ω - ω')": before_positive,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument(
        "--sfam-only", action="store_true", help="skip the library's members"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    model = efficientnet_lite0(embedding=True)
    layer = model.bn2
    sfam = LayerSFAM(model, layer, metric=args.metric)
    scenes = composites(args.pairs)
    results: Dict[str, List[float]] = {}

    def record(name: str, map_a: torch.Tensor, map_b: torch.Tensor, box_a, box_b):
        up = [
            LayerAttribution.interpolate(m.reshape(1, 1, *m.shape[-2:]).float(),
                                         (224, 224), "bilinear")[0, 0]
            for m in (map_a, map_b)
        ]  # fmt: skip
        spec = pair_specificity(up[0], up[1], box_a, box_b)["specificity"]
        results.setdefault(name, []).append(spec)

    readings = sfam_readings(args.metric)
    for scene, view_a, view_b, box_a, box_b in scenes:
        acts = sfam.layer_activations(torch.cat([scene, view_a, view_b])).double()
        v = acts.mean(dim=(2, 3))
        for name, rule in readings.items():
            w_a = rule(v[0], v[1], v[2])  # support a, contrast b
            w_b = rule(v[0], v[2], v[1])  # support b, contrast a
            record(name, torch.einsum("n,nhw->hw", w_a, acts[0]),
                   torch.einsum("n,nhw->hw", w_b, acts[0]), box_a, box_b)  # fmt: skip
        members = (
            {}
            if args.sfam_only
            else {
                "library LayerSFAM": sfam,
                "library LayerSimilarityGradCam": LayerSimilarityGradCam(
                    model, layer, metric=args.metric
                ),
                "library LayerRAM other": LayerRAM(model, layer, weighting="other"),
                "library LayerRAM product": LayerRAM(model, layer, weighting="product"),
            }
        )
        if args.metric == "cosine" and not args.sfam_only:
            members["library LayerDecomposition"] = LayerDecomposition(model, layer)
        for name, method in members.items():
            plain = [method.attribute(scene, v_) for v_ in (view_a, view_b)]
            record(name + ", no contrast", *plain, box_a, box_b)
            maps = [
                method.attribute(scene, view_a, contrast=view_b),
                method.attribute(scene, view_b, contrast=view_a),
            ]
            record(name + ", contrast", *maps, box_a, box_b)
    print(f"{len(scenes)} composites, metric={args.metric}, EfficientNet-Lite0 bn2")
    print("| reading | pair specificity (mean) | min |")
    print("|---|---|---|")
    for name, values in results.items():
        t = torch.tensor(values)
        print(f"| {name} | {t.mean():.3f} | {t.min():.3f} |")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
