r"""Which contrast reading of each member wins on the part-swap game AND the composites?

Every contrast member of ``captum_sfam.methods.REGISTRY`` (and RAM in its two
contrastive weightings) is read in several ways, each a channel weighting of
the probe's activations at the explained layer (pooled vectors
:math:`v^Q, v^S, v^{S'}`, :math:`\Delta = x(S) - x(S')`):

- SFAM (Eq. 2/5 scores ω): ``signed`` Δω / max|Δω| (the library's),
  ``after`` Norm(ω_S) - Norm(ω_S'), ``before`` Norm(Δω), ``positive``
  ReLU(Δω) / max;
- similarity Grad-CAM (gradients g of s(V^Q, ·)): ``difference`` Δg (the
  library's), ``normalised`` g_S/max|g_S| - g_S'/max|g_S'|, ``positive``
  ReLU(Δg);
- RAM other / product (v^S, v^Q v^S): ``difference`` (the library's),
  ``normalised``, ``positive``;
- Decomposition: ``per-position`` (the library's: Σ ReLU(P_S)/z - Σ
  ReLU(P_S')/z), ``cam`` its CAM weights v^S/|v^S| - v^S'/|v^S'|,
  ``cam-positive`` their ReLU;
- CG-RAM: ``difference`` (the library's: the gradient of s(Q,S) - s(Q,S')),
  ``normalised`` M_S/max|M_S| - M_S'/max|M_S'| of its two plain maps.

Scores: on the part-swap game (``captum_sfam.demo.part_swap``; the two demo
models and the EfficientNet-Lite0 photos) pointing, mass and flip share in
the edited part; on the two-object composites of
``benchmarks/contrast_readings.py`` (EfficientNet-Lite0, cosine and
Euclidean) the pair specificity. A reading replaces a member's default only
if it beats it on both: the game's mean pointing over the three models and
the composites' mean specificity over the two metrics.

    python benchmarks/part_swap_readings.py [--pairs 20] [--photos 6] [--composites 8]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution
from contrast_readings import composites

from captum_sfam import (
    LayerCGRAM,
    LayerDecomposition,
    LayerRAM,
    LayerSFAM,
    LayerSimilarityGradCam,
    channel_importance,
    minmax_normalize,
)
from captum_sfam.app.bench.part_swap import flip_share, mass_in_mask, pointing_in_mask
from captum_sfam.demo.part_swap import photo_game, shapes_game
from captum_sfam.demo.pretrained import efficientnet_lite0
from captum_sfam.demo.trained import cosine_embedder, protonet
from captum_sfam.functional.similarity_grad_cam import similarity_gradients
from captum_sfam.metrics import pair_specificity

#: (activations (3, N, h, w) of query, support, contrast; the member; the
#: three images) -> the query's map (h, w) or (H, W)
Reading = Callable[..., torch.Tensor]


def _scaled(x: torch.Tensor) -> torch.Tensor:
    return x / x.abs().amax().clamp_min(1e-300)


def readings(metric: str) -> Dict[str, Dict[str, Tuple[str, Reading]]]:
    """member -> reading name -> (kind, fn); kind "weights": fn(v) -> (N,)
    weights of the query's activations; kind "maps": fn(method, q, s, c)."""

    def omega(v, i):
        return channel_importance(v[0], v[i], metric).double()

    def grad(v, i):
        return similarity_gradients(v[0:1], v[i : i + 1], metric)[0][0].double()

    sfam = {
        "signed (library)": ("weights", lambda v: _scaled(omega(v, 1) - omega(v, 2))),
        "after": (
            "weights",
            lambda v: minmax_normalize(omega(v, 1)) - minmax_normalize(omega(v, 2)),
        ),
        "before": ("weights", lambda v: minmax_normalize(omega(v, 1) - omega(v, 2))),
        "positive": (
            "weights",
            lambda v: _scaled((omega(v, 1) - omega(v, 2)).clamp(min=0)),
        ),
    }
    simgc = {
        "difference (library)": ("weights", lambda v: grad(v, 1) - grad(v, 2)),
        "normalised": ("weights", lambda v: _scaled(grad(v, 1)) - _scaled(grad(v, 2))),
        "positive": ("weights", lambda v: (grad(v, 1) - grad(v, 2)).clamp(min=0)),
    }

    def linear(rule):
        return {
            "difference (library)": ("weights", lambda v: rule(v, 1) - rule(v, 2)),
            "normalised": (
                "weights",
                lambda v: _scaled(rule(v, 1)) - _scaled(rule(v, 2)),
            ),
            "positive": ("weights", lambda v: (rule(v, 1) - rule(v, 2)).clamp(min=0)),
        }

    def library(method, q, s, c):
        return method.attribute(q, s, contrast=c)[0, 0]

    def normalised_maps(method, q, s, c):
        return _scaled(method.attribute(q, s)[0, 0]) - _scaled(
            method.attribute(q, c)[0, 0]
        )

    out = {
        "SFAM": sfam,
        "Similarity Grad-CAM": simgc,
        "RAM other": linear(lambda v, i: v[i].double()),
        "RAM product": linear(lambda v, i: (v[0] * v[i]).double()),
        "CG-RAM": {
            "difference (library)": ("maps", library),
            "normalised": ("maps", normalised_maps),
        },
    }
    if metric == "cosine":
        unit = lambda v, i: F.normalize(v[i].double(), dim=0)  # noqa: E731
        out["Decomposition"] = {
            "per-position (library)": ("maps", library),
            "cam": ("weights", lambda v: unit(v, 1) - unit(v, 2)),
            "cam-positive": (
                "weights",
                lambda v: (unit(v, 1) - unit(v, 2)).clamp(min=0),
            ),
        }
    return out


def members(model, layer, metric):
    out = {
        "SFAM": LayerSFAM(model, layer, metric=metric),
        "Similarity Grad-CAM": LayerSimilarityGradCam(model, layer, metric=metric),
        "RAM other": LayerRAM(model, layer, weighting="other"),
        "RAM product": LayerRAM(model, layer, weighting="product"),
        "CG-RAM": LayerCGRAM(model, layer, metric=metric),
    }
    if metric == "cosine":
        out["Decomposition"] = LayerDecomposition(model, layer)
    return out


def read_all(model, layer, metric, q, s, c, size) -> Dict[str, torch.Tensor]:
    """'member / reading' -> (H, W) map of q explaining s against c."""
    methods = members(model, layer, metric)
    acts = methods["SFAM"].layer_activations(torch.cat([q, s, c])).double()
    v = acts.mean(dim=(2, 3))
    out = {}
    for member, options in readings(metric).items():
        for name, (kind, fn) in options.items():
            if kind == "weights":
                m = torch.einsum("n,nhw->hw", fn(v).double(), acts[0])
            else:
                m = fn(methods[member], q, s, c).double()
            up = LayerAttribution.interpolate(m[None, None].float(), size, "bilinear")
            out[f"{member} / {name}"] = up[0, 0]
    return out


def check_library(model, layer, metric, q, s, c) -> float:
    """Max abs difference between the "(library)" weight readings and the
    library's contrast maps (each scaled to max 1): 0 up to rounding."""
    maps = read_all(model, layer, metric, q, s, c, tuple(q.shape[-2:]))
    worst = 0.0
    for member, method in members(model, layer, metric).items():
        name = next(k for k in maps if k.startswith(member + " /") and "library" in k)
        lib = LayerAttribution.interpolate(
            method.attribute(q, s, contrast=c).float(), tuple(q.shape[-2:]), "bilinear"
        )[0, 0]
        worst = max(worst, float((_scaled(maps[name]) - _scaled(lib)).abs().max()))
    return worst


def game_scores(model, layer, metric, game) -> Dict[str, List[float]]:
    rows: Dict[str, List[Tuple[float, float, float]]] = {}
    for tr in game.triples:
        maps = read_all(
            model,
            layer,
            metric,
            tr.probe,
            tr.mate,
            tr.non_mate,
            tuple(tr.probe.shape[-2:]),
        )
        for name, m in maps.items():
            rows.setdefault(name, []).append(
                (
                    pointing_in_mask(m, tr.mask),
                    mass_in_mask(m, tr.mask),
                    flip_share(model, metric, tr, m),
                )
            )
    return {
        k: torch.tensor(v, dtype=torch.float64).mean(0).tolist()
        for k, v in rows.items()
    }


def composite_scores(model, layer, metric, scenes) -> Dict[str, float]:
    rows: Dict[str, List[float]] = {}
    for scene, view_a, view_b, box_a, box_b in scenes:
        ma = read_all(model, layer, metric, scene, view_a, view_b, (224, 224))
        mb = read_all(model, layer, metric, scene, view_b, view_a, (224, 224))
        for name in ma:
            spec = pair_specificity(ma[name], mb[name], box_a, box_b)["specificity"]
            rows.setdefault(name, []).append(spec)
    return {k: sum(v) / len(v) for k, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=20, help="triples per demo model")
    parser.add_argument("--photos", type=int, default=6, help="photo triples")
    parser.add_argument("--composites", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    start = time.perf_counter()
    proto, cosine, photo = protonet(), cosine_embedder(), efficientnet_lite0()
    games = {
        "protonet": (
            proto,
            proto.layer,
            "euclidean",
            shapes_game(proto, "euclidean", args.pairs, args.seed),
        ),
        "cosine": (
            cosine,
            cosine.layer,
            "cosine",
            shapes_game(cosine, "cosine", args.pairs, args.seed),
        ),
        "photo": (
            photo,
            photo.bn2,
            "cosine",
            photo_game(photo, args.photos, args.seed),
        ),
    }
    tr = games["protonet"][3].triples[0]
    gap = check_library(proto, proto.layer, "euclidean", tr.probe, tr.mate, tr.non_mate)
    print(f"library check (max abs diff, scaled maps): {gap:.2e}")
    results: Dict[str, Dict[str, object]] = {}
    for key, (model, layer, metric, game) in games.items():
        for name, (p, m, f) in game_scores(model, layer, metric, game).items():
            results.setdefault(name, {})[key] = {
                "pointing": p,
                "mass": m,
                "flip": f,
                "n": len(game.triples),
            }
        print(
            f"{key}: {len(game.triples)} triples ({time.perf_counter() - start:.0f} s)"
        )
    scenes = composites(args.composites)
    for metric in ("cosine", "euclidean"):
        for name, spec in composite_scores(photo, photo.bn2, metric, scenes).items():
            results.setdefault(name, {})[f"composites {metric}"] = spec
    print(
        "| member / reading | ProtoNet Point / Mass / Flip % | cosine model | photos "
        "| composites spec. cosine | euclidean | game mean Point | composites mean |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in results.items():
        cells, points = [], []
        for key in games:
            if key in row:
                r = row[key]
                cells.append(
                    f"{100 * r['pointing']:.0f} / {100 * r['mass']:.0f} / "
                    f"{100 * r['flip']:.1f}"
                )
                points.append(r["pointing"])
            else:
                cells.append("-")
        specs = [
            row[k] for k in ("composites cosine", "composites euclidean") if k in row
        ]
        spec_cells = [
            f"{row[k]:.3f}" if k in row else "-"
            for k in ("composites cosine", "composites euclidean")
        ]
        row["game_pointing"] = sum(points) / len(points)
        row["composites"] = sum(specs) / len(specs)
        print(
            f"| {name} | "
            + " | ".join(cells + spec_cells)
            + f" | {100 * row['game_pointing']:.1f} | {row['composites']:.3f} |"
        )
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
