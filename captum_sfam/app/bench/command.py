r"""``captum-sfam bench`` / ``python -m captum_sfam.app.bench``: run, report.

:func:`add_arguments` adds the benchmark's options to a parser,
:func:`main_args` runs the parsed arguments (``--quick``: a smoke run of a
few seconds), :func:`run` returns the report that :func:`~.tables.write`
saves.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from ...metrics.correspondence import TRANSFORMS
from .image_text import image_text_setting
from .measures import correspondence_setting, evaluate
from .part_swap import part_swap_setting
from .settings import CHOICES, LABELS, PHOTOS, SETTINGS, correspondence_photos
from .tables import PART_SWAP_HEADERS, PCK_HEADERS, format_table, write

#: the ``--help`` description
DESCRIPTION = "Benchmark of every pair-attribution method, with ground truth, offline."


def run(args: argparse.Namespace) -> Dict[str, object]:
    r"""Runs the settings of ``args.settings``, in the order of :data:`CHOICES`.

    Args:
        args (argparse.Namespace): the options of :func:`add_arguments`.

    Returns:
        the report: ``args``, ``settings`` (key -> ``{"model": info,
        "methods": summary}``), ``seconds`` and ``tables`` (Markdown).
    """
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    report: Dict[str, object] = {"args": vars(args).copy(), "settings": {}}
    texts = []
    seconds: Dict[str, float] = {}
    for key in [k for k in SETTINGS if k in args.settings]:
        began = time.perf_counter()
        s = SETTINGS[key](args)
        summary = evaluate(
            s.model, s.layer, s.metric, s.pairs, s.scenes, s.steps,
            not args.no_progress, LABELS[key], ig_steps=s.ig_steps,
        )  # fmt: skip
        report["settings"][key] = {"model": s.info, "methods": summary}
        texts.append(format_table(s.title, summary))
        seconds[key] = _done(key, began, args)
    if "correspondence" in args.settings:
        began = time.perf_counter()
        model, photos = correspondence_photos(args)
        summary = correspondence_setting(model, model.bn2, photos)
        title = (
            "(d) EfficientNet-Lite0 point-to-point correspondences, PCK % at one "
            f"cell (7 x 7 grid), {len(photos)} photos x {{{', '.join(TRANSFORMS)}}}"
        )
        info = {"photos": PHOTOS[: args.pck_photos]}
        report["settings"]["correspondence"] = {"model": info, "methods": summary}
        texts.append(format_table(title, summary, PCK_HEADERS))
        seconds["correspondence"] = _done("correspondence", began, args)
    if "part-swap" in args.settings:
        began = time.perf_counter()
        for key, title, info, summary in part_swap_setting(args):
            report["settings"][f"part-swap/{key}"] = {"model": info, "methods": summary}
            texts.append(format_table(title, summary, PART_SWAP_HEADERS))
        seconds["part-swap"] = _done("part-swap", began, args)
    if "image-text" in args.settings:
        began = time.perf_counter()
        result = image_text_setting(args)
        report["settings"]["image-text"] = result
        texts.extend(result["tables"])
        seconds["image-text"] = _done("image-text", began, args)
    report["seconds"] = time.perf_counter() - start
    report["seconds_per_setting"] = seconds
    report["tables"] = texts
    return report


def _done(key: str, began: float, args: argparse.Namespace) -> float:
    """Seconds since ``began``, printed (unless ``--no-progress``)."""
    seconds = time.perf_counter() - began
    if not args.no_progress:
        print(f"{key}: {seconds:.0f} s", flush=True)
    return seconds


#: the sizes of the default run (a few minutes on 2 cores) and of ``--full``
SIZES = {
    "default": {"episodes": 40, "pairs": 40, "scenes": 16, "photo_pairs": 8,
                "pck_photos": 2, "swap_pairs": 8, "swap_photos": 3},
    "full": {"episodes": 100, "pairs": 100, "scenes": 40, "photo_pairs": 20,
             "pck_photos": 5, "swap_pairs": 40, "swap_photos": 12},
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    r"""Adds the benchmark's options to ``parser``.

    Args:
        parser (argparse.ArgumentParser): the (sub)command's parser.
    """
    sizes = "default {}, --full {}"
    for flag, name, text in (
        ("--episodes", "episodes", "(a) episodes"),
        ("--pairs", "pairs", "(b) retrieval queries"),
        ("--scenes", "scenes", "two-object scenes"),
        ("--photo-pairs", "photo_pairs", "(c) composites"),
        ("--pck-photos", "pck_photos", "(d) photos (1 to 5), 3 pairs each"),
        ("--swap-pairs", "swap_pairs", "(e) part-swap triples per demo model"),
        ("--swap-photos", "swap_photos", "(e) part-swap photo triples"),
    ):
        numbers = sizes.format(SIZES["default"][name], SIZES["full"][name])
        parser.add_argument(flag, type=int, default=None, help=f"{text}; {numbers}")
    parser.add_argument(
        "--steps", type=int, default=16, help="deletion/insertion steps"
    )
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument(
        "--settings",
        nargs="+",
        default=[*CHOICES, "image-text"],
        choices=[*CHOICES, "image-text"],
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--quick", action="store_true", help="seconds: a smoke run")
    parser.add_argument(
        "--full",
        action="store_true",
        help="the full sizes (about 13 minutes on 2 cores; the default, a few)",
    )


def main_args(args: argparse.Namespace) -> int:
    r"""Runs the benchmark, writes its files and prints its tables.

    Args:
        args (argparse.Namespace): the options of :func:`add_arguments`.

    Returns:
        the exit code, 0.
    """
    for name, value in SIZES["full" if args.full else "default"].items():
        if getattr(args, name, None) is None:  # an explicit size wins
            setattr(args, name, value)
    if args.quick:
        args.episodes, args.pairs, args.scenes, args.photo_pairs = 3, 3, 2, 2
        args.pck_photos, args.swap_pairs, args.swap_photos = 1, 2, 1
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
    r"""``python -m captum_sfam.app.bench [options]``.

    Args:
        argv (sequence of str, optional): the arguments. Default: ``sys.argv``

    Returns:
        the exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m captum_sfam.app.bench", description=DESCRIPTION
    )
    add_arguments(parser)
    return main_args(parser.parse_args(argv))


__all__ = ["add_arguments", "main", "main_args", "run"]
