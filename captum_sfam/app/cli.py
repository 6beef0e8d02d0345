r"""``captum-sfam``: explain image pairs from the command line.

captum-sfam demo --out DIR
captum-sfam explain QUERY SUPPORT [SUPPORT ...]
                    [--model NAME | package.module:callable | file.py:callable]
                    [--weights CHECKPOINT] [--layer NAME] [--method sfam|...]
                    [--metric cosine|euclidean] [--size PIXELS]
                    [--mean M] [--std S] [--out FIG.png|.pdf|.svg|...]

The model options are added by :mod:`captum_sfam.app.args` and read by
:mod:`captum_sfam.app.methods` (models: :mod:`~captum_sfam.app.models`,
checkpoints: :mod:`~captum_sfam.app.checkpoints`, image files:
:mod:`~captum_sfam.app.files`).
Every error is one line on stderr and exit code 2: :class:`CLIError` raised
anywhere, and argparse's own errors (:class:`ArgumentParser` turns them into
:class:`CLIError`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Module

from ..methods import REGISTRY
from ..methods.sfam import LayerSFAM, weight_spread
from ..similarity import embed, paired_similarity, prototypes
from .args import add_model_arguments, embedding_key
from .errors import CLIError
from .methods import build_method, model_from_args
from .models import load_model, resolve_layer

#: matplotlib's figure formats (``--out`` extensions), without the dot
FIGURE_FORMATS = (
    "eps",
    "jpeg",
    "jpg",
    "pdf",
    "pgf",
    "png",
    "ps",
    "raw",
    "rgba",
    "svg",
    "svgz",
    "tif",
    "tiff",
    "webp",
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors reported in one line (``captum-sfam: error: ...``)."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(message)


def figure_path(value: str) -> Path:
    """``--out``: a figure file whose extension matplotlib can write."""
    path = Path(value)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FIGURE_FORMATS:
        raise argparse.ArgumentTypeError(
            f"cannot write a figure as {path.name!r}: use one of "
            + ", ".join(f".{f}" for f in FIGURE_FORMATS)
        )
    return path


def similarity(
    model: Module,
    query: Tensor,
    support: Tensor,
    metric: str,
    embedding_func: Union[None, str, int] = None,
) -> float:
    query_emb = embed(model, query, embedding_func=embedding_func)
    support_emb = prototypes(model, support[None], embedding_func=embedding_func)
    return float(paired_similarity(query_emb, support_emb, metric)[0])


# ------------------------------------------------------------ commands -----
def explain(args: argparse.Namespace) -> int:
    """Runs ``captum-sfam explain``: prints the similarity, writes the figure
    (with ``--text``: :func:`captum_sfam.app.text.explain_text`)."""
    from ..visualization import visualize_pair

    if args.text:
        from .text import explain_text

        return explain_text(args)
    if not args.support:
        raise CLIError(
            "the following arguments are required: support (image files; or "
            "--text TEXT with a two-tower --model)"
        )
    args.method = args.method or "sfam"

    paths = [args.query, *args.support]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise CLIError(f"no such image file: {missing[0]}")
    loaded = model_from_args(args)
    images = [loaded.preprocess(p).unsqueeze(0) for p in paths]
    query, support = images[0], torch.cat(images[1:])
    try:
        q_map, s_maps = loaded.method.attribute(
            query, support, return_support_attributions=True
        )
        sim = similarity(loaded.model, query, support, args.metric, embedding_key(args))
    except (ValueError, TypeError) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise CLIError(lines[0]) from error
    except RuntimeError as error:  # the model itself refuses the inputs
        lines = str(error).strip().splitlines() or [""]
        raise CLIError(
            f"the model failed on the {args.size} x {args.size} RGB images "
            f"(--size, --layer?): {type(error).__name__}: {lines[0]}"
        ) from error
    name = REGISTRY[args.method].display_name
    print(f"{args.metric} similarity of {args.query} to the support: {sim:.6g}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    visualize_pair(
        query[0],
        q_map[0],
        list(support),
        s_maps[0],
        method=name,
        similarity=sim,
        path=out,
        mean=loaded.mean,
        std=loaded.std,
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


#: the demo's pairs: name, query photo, support photos
DEMO_PAIRS = (
    ("cat_two_views", "cat", ["cat_view_2"]),
    ("same_motorcycle", "motorcycle_left", ["motorcycle_right"]),
    ("composite_vs_cat", "cat|coffee", ["cat_view_2"]),
    ("composite_vs_coffee", "cat|coffee", ["coffee"]),
)
#: the first lines of the demo's summary
DEMO_PREAMBLE = (
    "captum-sfam demo: ImageNet EfficientNet-Lite0 (offline), layer bn2 "
    "(1280 x 7 x 7), cosine similarity of the 1280-d pooled features.",
    "Photos from scikit-image; 'cat_view_2' is a mirrored, zoomed crop of "
    "the cat photo; 'cat|coffee' is a composite of the cat photo (left) and "
    "the coffee photo (right), so the coffee support is the same photo.",
    "",
)


def _demo_inputs() -> Tuple[Module, Dict[str, Tensor]]:
    """The offline model and the demo photos as its inputs, by name."""
    from ..demo.pretrained import (
        efficientnet_lite0,
        preprocess,
        sample_images,
        side_by_side,
    )

    try:
        model = efficientnet_lite0(embedding=True)
        photos = sample_images()
    except ImportError as error:
        raise CLIError(str(error)) from error
    x = {name: preprocess(img) for name, img in photos.items()}
    composite, _ = side_by_side(photos["cat"], photos["coffee"])
    x["cat|coffee"] = preprocess(composite)
    return model, x


def _demo_pair(
    out: Path, model: Module, x: Dict[str, Tensor], pair: Tuple[str, str, List[str]]
) -> List[str]:
    """One demo pair's two figures in ``out``; returns its summary lines."""
    from ..demo.pretrained import MEAN, STD
    from ..visualization import compare_methods, visualize_pair

    pair_name, query_name, support_names = pair
    query = x[query_name]
    support = torch.cat([x[n] for n in support_names])
    results, lines, sim = _pair_summary(pair_name, model, model.bn2, query, support)
    q_map, s_maps = results["SFAM"]
    shown = {"mean": MEAN, "std": STD}
    visualize_pair(
        query, q_map, list(support), s_maps, method="SFAM", similarity=sim,
        path=out / f"{pair_name}_sfam.png", **shown,
    )  # fmt: skip
    compare_methods(
        query, list(support), results,
        title=f"{query_name} vs {', '.join(support_names)}",
        path=out / f"{pair_name}_methods.png", **shown,
    )  # fmt: skip
    if query_name == "cat|coffee":
        left = "cat" in pair_name
        shares = ", ".join(
            f"{label} {_half_share(maps[0], left):.0%}"
            for label, maps in results.items()
        )
        side = "left (cat)" if left else "right (coffee)"
        lines.append(f"  share of positive map mass on the {side} half: {shares}")
    return lines


def demo(args: argparse.Namespace) -> int:
    """Runs ``captum-sfam demo``: figures and ``summary.txt`` in ``args.out``."""
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, x = _demo_inputs()
    summary = list(DEMO_PREAMBLE)
    for pair in DEMO_PAIRS:
        summary += _demo_pair(out, model, x, pair)
    summary.append("")
    summary.append(f"figures in {out}; took {time.perf_counter() - start:.1f} s")
    text = "\n".join(summary)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(
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
    p_exp.add_argument("support", nargs="*", help="support image file(s), K shots")
    add_model_arguments(p_exp)
    p_exp.add_argument(
        "--text",
        action="append",
        help="explain the image against this text (repeat for several) with a "
        "two-tower model: --model open_clip:ARCH[:TAG], hf:NAME or demo:two-tower",
    )
    p_exp.add_argument(
        "--out",
        default="explanation.png",
        type=figure_path,
        help="figure to write (.png, .pdf, .svg, .jpg, ...)",
    )
    p_exp.set_defaults(run=explain, method=None)  # sfam, or cgram with --text
    p_bench = commands.add_parser(
        "bench", help="benchmark every method with ground truth (offline)"
    )
    from . import bench

    bench.add_arguments(p_bench)
    p_bench.set_defaults(run=bench.main_args)
    p_retrieve = commands.add_parser(
        "retrieve", help="explain every query's top-k matches in a gallery"
    )
    from . import retrieve

    retrieve.add_arguments(p_retrieve)
    p_retrieve.set_defaults(run=retrieve.run)
    try:
        args = parser.parse_args(argv)
        return args.run(args)
    except CLIError as error:
        print(f"captum-sfam: error: {error}", file=sys.stderr)
        return 2


# the loaders are re-exported for scripts that drive the command line
__all__ = [
    "CLIError",
    "build_method",
    "explain",
    "load_model",
    "main",
    "model_from_args",
    "resolve_layer",
]


if __name__ == "__main__":
    sys.exit(main())
