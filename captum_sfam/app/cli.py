r"""``captum-sfam``: explain image pairs from the command line.

captum-sfam demo --out DIR
captum-sfam explain QUERY SUPPORT [SUPPORT ...] [--model NAME] [--weights F]
                    [--layer NAME] [--metric cosine|euclidean]
                    [--method sfam|...] --out FIG.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from ..demo.pretrained import INPUT_SIZE, _require
from ..methods import REGISTRY, PairAttribution
from ..methods.sfam import LayerSFAM, weight_spread
from ..similarity import embed, paired_similarity, prototypes

DEFAULT_LAYERS = {"efficientnet_lite0": "bn2"}


class CLIError(Exception):
    """An error the command line reports in one line."""


# ------------------------------------------------------------ models -------
def _strip_classifier(model: Module) -> Module:
    """Turn a torchvision classifier into an embedding model (penultimate layer)."""
    for name in ("fc", "classifier", "heads", "head"):
        if isinstance(getattr(model, name, None), Module):
            setattr(model, name, torch.nn.Identity())
            break
    return model


def load_model(name: str, weights: Optional[str]) -> Module:
    """The embedding model named on the command line, in eval mode."""
    if name == "efficientnet_lite0":
        if weights:
            raise CLIError("--weights applies to torchvision models only")
        from ..demo.pretrained import efficientnet_lite0

        try:
            return efficientnet_lite0(embedding=True)
        except ImportError as error:
            raise CLIError(str(error)) from error
    path = Path(name)
    if path.suffix in (".pt", ".pth", ".ts") or path.exists():
        raise CLIError(
            f"{name}: pass a torchvision architecture name with --model and the "
            "state dict with --weights (TorchScript models cannot be hooked)"
        )
    try:
        _require("torchvision", "torchvision")
    except ImportError as error:
        raise CLIError(str(error)) from error
    import torchvision

    if name not in torchvision.models.list_models():
        raise CLIError(
            f"unknown model {name!r}: use efficientnet_lite0 or a torchvision "
            "model name (torchvision.models.list_models())"
        )
    if weights:
        model = torchvision.models.get_model(name, weights=None)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except FileNotFoundError as error:
            raise CLIError(f"no such weights file: {weights}") from error
        except Exception as error:  # noqa: BLE001 - any unreadable checkpoint
            raise CLIError(f"cannot read weights {weights}: {error}") from error
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as error:
            first = str(error).splitlines()[0]
            raise CLIError(f"{weights} does not fit {name}: {first}") from error
    else:
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as error:  # noqa: BLE001 - the download's many failures
            raise CLIError(
                f"could not download the pretrained weights of {name} (no "
                f"internet?): {type(error).__name__}. Pass --weights FILE, or use "
                "the offline default --model efficientnet_lite0"
            ) from error
    return _strip_classifier(model).eval()


def resolve_layer(model: Module, model_name: str, layer: Optional[str]) -> Module:
    name = layer or DEFAULT_LAYERS.get(model_name)
    if name is None:
        if hasattr(model, "layer4"):
            name = "layer4"
        else:
            raise CLIError(f"--layer is needed for {model_name}")
    try:
        return model.get_submodule(name)
    except AttributeError as error:
        children = ", ".join(n for n, _ in model.named_children())
        raise CLIError(
            f"unknown layer {name!r} (top-level modules: {children})"
        ) from error


def build_method(
    method: str, model: Module, layer: Module, metric: str
) -> PairAttribution:
    if method not in REGISTRY:
        raise CLIError(f"unknown method {method!r}: one of {', '.join(REGISTRY)}")
    member = REGISTRY[method]
    if metric not in member.supported_metrics:
        metrics = " or ".join(f"--metric {m}" for m in member.supported_metrics)
        raise CLIError(f"{method} is defined for {metrics} only")
    return member.cls(model, layer, metric=metric)


def similarity(model: Module, query: Tensor, support: Tensor, metric: str) -> float:
    return float(
        paired_similarity(
            embed(model, query), prototypes(model, support[None]), metric
        )[0]
    )


# ------------------------------------------------------------ commands -----
def explain(args: argparse.Namespace) -> int:
    from ..demo.pretrained import load_image, to_display
    from ..visualization import visualize_pair

    paths = [args.query, *args.support]
    try:
        images = [load_image(p, args.size) for p in paths]
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(str(error)) from error
    model = load_model(args.model, args.weights)
    layer = resolve_layer(model, args.model, args.layer)
    method = build_method(args.method, model, layer, args.metric)
    query, support = images[0], torch.cat(images[1:])
    try:
        q_map, s_maps = method.attribute(
            query, support, return_support_attributions=True
        )
    except ValueError as error:
        raise CLIError(str(error)) from error
    sim = similarity(model, query, support, args.metric)
    name = REGISTRY[args.method].display_name
    print(f"{args.metric} similarity of {args.query} to the support: {sim:.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    visualize_pair(
        to_display(query),
        q_map[0],
        [to_display(s) for s in support],
        s_maps[0],
        method=name,
        similarity=sim,
        path=out,
    )
    print(f"wrote {out}")
    return 0


def _pair_summary(
    name: str, model: Module, layer: Module, query: Tensor, support: Tensor
) -> Tuple[Dict[str, Tuple[Tensor, Tensor]], List[str], float]:
    """Every method's maps for one pair, its summary line and its similarity."""
    results, lines = {}, []
    for member in REGISTRY.values():
        method = member.cls(model, layer, metric="cosine")
        q_map, s_maps = method.attribute(
            query, support, return_support_attributions=True
        )
        results[member.display_name] = (q_map[0], s_maps[0])
    sfam = LayerSFAM(model, layer, metric="cosine")
    weights, _ = sfam.channel_weights(query, support)
    spread = weight_spread(weights)
    sim = similarity(model, query, support, "cosine")
    lines.append(
        f"{name}: cosine similarity {sim:.3f}; SFAM channels with Norm(w) > 0.5: "
        f"{float(spread[0.5][0]):.0%}, > 0.9: {float(spread[0.9][0]):.0%}"
    )
    return results, lines, sim


def _half_share(query_map: Tensor, left: bool) -> float:
    """Share of the map's positive mass in the left (or right) half."""
    positive = query_map.clamp(min=0)[0]
    width = positive.shape[-1]
    half = positive[:, : width // 2] if left else positive[:, width - width // 2 :]
    total = float(positive.sum())
    return float(half.sum()) / total if total > 0 else 0.5


def demo(args: argparse.Namespace) -> int:
    from ..demo.pretrained import (
        efficientnet_lite0,
        preprocess,
        sample_images,
        side_by_side,
        to_display,
    )
    from ..visualization import compare_methods, visualize_pair

    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        model = efficientnet_lite0(embedding=True)
        photos = sample_images()
    except ImportError as error:
        raise CLIError(str(error)) from error
    layer = model.bn2
    x = {name: preprocess(img) for name, img in photos.items()}
    composite, _ = side_by_side(photos["cat"], photos["coffee"])
    x["cat|coffee"] = preprocess(composite)
    pairs = [
        ("cat_two_views", "cat", ["cat_view_2"]),
        ("same_motorcycle", "motorcycle_left", ["motorcycle_right"]),
        ("composite_vs_cat", "cat|coffee", ["cat_view_2"]),
        ("composite_vs_coffee", "cat|coffee", ["coffee"]),
    ]
    summary = [
        "captum-sfam demo: ImageNet EfficientNet-Lite0 (offline), layer bn2 "
        "(1280 x 7 x 7), cosine similarity of the 1280-d pooled features.",
        "Photos from scikit-image; 'cat_view_2' is a mirrored, zoomed crop of "
        "the cat photo; 'cat|coffee' is a composite of the cat photo (left) and "
        "the coffee photo (right), so the coffee support is the same photo.",
        "",
    ]
    for pair_name, query_name, support_names in pairs:
        query = x[query_name]
        support = torch.cat([x[n] for n in support_names])
        results, lines, sim = _pair_summary(pair_name, model, layer, query, support)
        summary += lines
        images = [to_display(s) for s in support]
        q_map, s_maps = results["SFAM"]
        visualize_pair(
            to_display(query),
            q_map,
            images,
            s_maps,
            method="SFAM",
            similarity=sim,
            path=out / f"{pair_name}_sfam.png",
        )
        compare_methods(
            to_display(query),
            images,
            results,
            title=f"{query_name} vs {', '.join(support_names)}",
            path=out / f"{pair_name}_methods.png",
        )
        if query_name == "cat|coffee":
            left = "cat" in pair_name
            shares = ", ".join(
                f"{label} {_half_share(maps[0], left):.0%}"
                for label, maps in results.items()
            )
            side = "left (cat)" if left else "right (coffee)"
            summary.append(f"  share of positive map mass on the {side} half: {shares}")
    summary.append("")
    summary.append(f"figures in {out}; took {time.perf_counter() - start:.1f} s")
    text = "\n".join(summary)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="captum-sfam",
        description="Visual explanations of metric-learning decisions (SFAM and "
        "its baselines).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p_demo = commands.add_parser(
        "demo", help="explain real photo pairs offline and write figures"
    )
    p_demo.add_argument("--out", default="captum-sfam-demo", help="output folder")
    p_demo.set_defaults(run=demo)
    p_exp = commands.add_parser("explain", help="explain a query against a support")
    p_exp.add_argument("query", help="query image file")
    p_exp.add_argument("support", nargs="+", help="support image file(s), K shots")
    p_exp.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="efficientnet_lite0 (offline, default) or a torchvision model name",
    )
    p_exp.add_argument(
        "--weights", help="state dict for a torchvision model (weights_only load)"
    )
    p_exp.add_argument("--layer", help="dotted name of the layer to explain")
    p_exp.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    p_exp.add_argument("--method", default="sfam", help=", ".join(REGISTRY))
    p_exp.add_argument(
        "--size", type=int, default=INPUT_SIZE, help="input size in pixels"
    )
    p_exp.add_argument("--out", default="explanation.png", help="figure to write")
    p_exp.set_defaults(run=explain)
    p_bench = commands.add_parser(
        "bench", help="benchmark every method with ground truth (offline)"
    )
    from . import bench

    bench.add_arguments(p_bench)
    p_bench.set_defaults(run=bench.main_args)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except CLIError as error:
        print(f"captum-sfam: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
