r"""``captum-sfam retrieve``: explain a whole retrieval run over folders of images.

captum-sfam retrieve QUERIES GALLERY --top-k K --out DIR [--batch-size B]
                     [--contrast] [--report-limit N] [--no-report] [--restart]
                     [--neighbours FILE | --search exact|faiss] [--strict]
                     [--model ...] [--weights ...] [--layer ...] [--method ...]
                     [--metric ...] [--size ...]

Both folders are searched recursively. When every image sits in a subfolder
of its root, the subfolder's name is its label and the run reports Recall@1,
Recall@5 and mAP@k. ``--neighbours FILE`` explains your system's ranked
lists (JSON lines or CSV, see :mod:`captum_sfam.retrieval.neighbours`)
instead of searching; unreadable images are left out and listed (``--strict``
refuses them before any embedding). Several processes, one machine:
``torchrun --nproc-per-node=N "$(command -v captum-sfam)" retrieve ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

import torch

from ..retrieval import ImageFiles, explain_retrieval, init_distributed
from .args import add_model_arguments, positive_int
from .errors import CLIError
from .files import find_images
from .methods import model_from_args

#: images (queries and gallery) from which ``--workers`` defaults to > 0
AUTO_WORKERS_FROM = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    r"""Adds the ``retrieve`` arguments (and the model options) to ``parser``.

    Args:
        parser (argparse.ArgumentParser): the subcommand's parser.
    """
    _add_run_arguments(parser)
    _add_pair_arguments(parser)
    _add_report_arguments(parser)
    add_model_arguments(parser)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The folders, the output and how the run reads and computes."""
    parser.add_argument("queries", help="folder of query images (recursive)")
    parser.add_argument("gallery", help="folder of gallery images (recursive)")
    parser.add_argument(
        "--top-k",
        type=positive_int,
        default=None,
        help="neighbours explained per query (default: 5, or the length of the "
        "lists of --neighbours)",
    )
    parser.add_argument("--out", default="retrieval", help="output folder")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="queries per batch (and gallery images per forward pass)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image-reading worker processes (default: none below "
        f"{AUTO_WORKERS_FROM} images, else one per spare core, at most 4)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="delete an earlier run in --out instead of resuming it",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse unreadable images (an error before any embedding) instead "
        "of leaving them out and listing them",
    )
    parser.add_argument(
        "--device", help="cpu or cuda (default: cuda when available, per rank)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """What the report draws and shows."""
    parser.add_argument(
        "--contrast",
        action="store_true",
        help="also draw why rank 1 rather than rank 2 (needs k >= 2)",
    )
    parser.add_argument(
        "--report-limit",
        type=positive_int,
        default=100,
        help="the N worst queries shown in index.html (results.jsonl has all)",
    )
    parser.add_argument("--no-report", action="store_true", help="skip index.html")


def _add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """Which pairs are explained: a search, or your system's neighbours."""
    parser.add_argument(
        "--neighbours",
        metavar="FILE",
        help="your system's neighbours, explained in its order instead of a "
        'search: JSON lines {"query": id, "neighbours": [ids], "scores": [...]} '
        "or CSV query,neighbour,rank[,score]; ids are file paths (or their "
        "ends, e.g. cat/1.jpg)",
    )
    parser.add_argument(
        "--search",
        choices=["exact", "faiss"],
        default="exact",
        help="exact (default) or faiss: an HNSW index (the audit extra) for "
        "galleries past exact search; its recall@k against exact search on the "
        "first 256 queries is printed",
    )


def _workers(asked: Optional[int], images: int) -> int:
    """``--workers``, or by default: none for small runs (starting workers
    costs more than it saves), else one per spare core, at most 4 (measured:
    one worker on 2 cores cut the wait for decoding from 1.5 s to 0.66 s of
    a 5.6 s run; benchmarks/results/retrieval-cpu.json)."""
    if asked is not None:
        return asked
    if images < AUTO_WORKERS_FROM:
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _dataset(folder: str, preprocess) -> ImageFiles:
    root = Path(folder)
    paths = find_images(root)
    if not paths:
        raise CLIError(f"no images in {folder}")
    labels = ImageFiles.folder_labels(root, paths)
    return ImageFiles([p.resolve() for p in paths], preprocess, labels)


def run(args: argparse.Namespace) -> int:
    """Runs ``captum-sfam retrieve``; returns the exit code."""
    context = init_distributed()
    try:
        loaded = model_from_args(args)
        if args.device:
            device = torch.device(args.device)
        elif context.device.type == "cuda":
            device = context.device
        else:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        loaded.model.to(device)
        queries = _dataset(args.queries, loaded.preprocess)
        gallery = _dataset(args.gallery, loaded.preprocess)
        if queries.labels is None or gallery.labels is None:
            queries.labels = gallery.labels = None
        try:
            result = explain_retrieval(
                loaded.model,
                loaded.layer,
                queries,
                gallery,
                args.out,
                member=loaded.method,
                k=args.top_k,
                batch_size=args.batch_size,
                num_workers=_workers(args.workers, len(queries) + len(gallery)),
                contrast=args.contrast,
                report=not args.no_report,
                report_limit=args.report_limit,
                mean=loaded.mean,
                std=loaded.std,
                device=device,
                resume=not args.restart,
                progress=not args.no_progress,
                neighbours=args.neighbours,
                search=args.search,
                strict=args.strict,
            )
        except ValueError as error:
            raise CLIError(str(error)) from error
        if context.is_main:
            _print_result(args, result, context.world_size)
        return 0
    finally:
        if context.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _print_result(args: argparse.Namespace, result, world_size: int) -> None:
    """What a finished run says on rank 0."""
    out = Path(args.out)
    summary = json.loads((out / "summary.json").read_text())
    print(
        f"{result.num_queries} queries x top {result.k} of {result.num_gallery} "
        f"gallery images ({args.method}, {args.metric}, {world_size} "
        f"process(es), neighbours: {summary.get('neighbours', 'exact')}): "
        f"{result.seconds:.1f} s"
    )
    if result.metrics:
        print("metrics: " + json.dumps(result.metrics))
    check = summary.get("search_recall")
    if check:
        print(
            f"faiss recall@{check['k']} against exact search: "
            f"{check['recall_at_k_vs_exact']:.4f} ({check['queries_checked']} "
            "queries checked)"
        )
    print(f"wrote {out / 'results.jsonl'}, maps in {out / 'maps'}")
    if result.report is not None:
        print(f"report: {result.report}")
    if result.skipped:
        print(
            f"warning: {len(result.skipped)} unreadable image file(s) left out, "
            f"listed in {out / 'summary.json'} (skipped_images); first: "
            f"{result.skipped[0]['id']}",
            file=sys.stderr,
        )
