r"""The ``limit`` mode of ``bench_retrieval.py``: a whole retrieval run against
its physical limit (see that script's docstring); run it through
``python benchmarks/bench_retrieval.py limit ...``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def _jpeg_folder(root: Path, count: int, seed: int, size: int) -> Path:
    """``count`` smooth random JPEG photos of ``size`` px (8 label folders)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"c{i % 8}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        image.save(folder / f"{i:06d}.jpg", quality=90)
    return root


class _Reader:
    """The bench's reader: a JPEG file to a (3, size, size) tensor in [0, 1]."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, path: Path) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("RGB").resize((self.size, self.size))
            array = np.asarray(image, dtype=np.float32) / 255
        return torch.from_numpy(array).permute(2, 0, 1)


def _plain_pass(model, source, batch_size: int, workers: int, pairs: list) -> None:
    """The limit: one no_grad embedding pass over ``source`` (gallery then
    queries) and the forwards of each batch's distinct neighbours."""
    from torch.utils.data import DataLoader

    from captum_sfam.similarity import embed

    with torch.no_grad():
        for dataset in source:
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
            for images in loader:
                embed(model, images)
        gallery = source[0]
        for neighbours in pairs:
            images = torch.stack([gallery[i] for i in neighbours])
            embed(model, images)


def _explained(record: dict) -> list:
    """The gallery images a record's maps need: its neighbours, and the true
    matches its wrong neighbours are contrasted with (labelled runs)."""
    wrong = record.get("wrong_above_true", {})
    contrasted = [t["index"] for t in wrong.get("true", [])] if "maps" in wrong else []
    return [n["index"] for n in record["neighbours"]] + contrasted


def _timed(function, *args, **kwargs) -> tuple:
    """(wall seconds, this process's CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu


def _median(values: list) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return (ordered[middle] + ordered[~middle]) / 2


def limit(args: argparse.Namespace, model_class: type) -> dict:
    """The ``limit`` mode of ``bench_retrieval.py`` (see its docstring).

    Times are wall-clock and this process's CPU time (``process_time``: on a
    shared machine it does not count other processes' load; with loader
    workers it misses theirs, so only the wall time means anything then).
    The ratios are the medians of the per-repeat ratios."""
    from captum_sfam.retrieval import ImageFiles, explain_retrieval, read_results

    torch.set_num_threads(args.threads)
    model = model_class().eval()
    reader = _Reader(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        g_dir = _jpeg_folder(root / "gallery", args.gallery, 0, args.size)
        q_dir = _jpeg_folder(root / "queries", args.queries, 1, args.size)
        gallery = ImageFiles.from_folder(g_dir, reader)
        queries = ImageFiles.from_folder(q_dir, reader)
        if getattr(args, "unlabelled", False):  # no audit, no contrastive maps
            queries.labels = gallery.labels = None
        options = dict(
            member=args.member, k=args.k, batch_size=args.batch_size,
            num_workers=args.workers, resume=False, device="cpu",
        )  # fmt: skip
        runs, limits, summaries = [], [], []
        for repeat in range(args.repeats):
            out = root / "run"
            runs.append(
                _timed(
                    explain_retrieval,
                    model,
                    model.features,
                    queries,
                    gallery,
                    out,
                    report=False,
                    **options,
                )  # fmt: skip
            )
            summaries.append(json.loads((out / "summary.json").read_text()))
            records = list(read_results(out))
            pairs = [
                sorted({i for r in records[b : b + args.batch_size]
                        for i in _explained(r)})
                for b in range(0, len(records), args.batch_size)
            ]  # fmt: skip
            limits.append(
                _timed(
                    _plain_pass,
                    model,
                    [gallery, queries],
                    args.batch_size,
                    args.workers,
                    pairs,
                )  # fmt: skip
            )
            print(
                f"repeat {repeat}: run {runs[-1][0]:.2f} s wall {runs[-1][1]:.2f} s "
                f"CPU, limit {limits[-1][0]:.2f} s wall {limits[-1][1]:.2f} s CPU"
            )
        report = _timed(
            explain_retrieval, model, model.features, queries, gallery,
            root / "report", report=True, **options,
        )  # fmt: skip
        report_s = json.loads((root / "report" / "summary.json").read_text())[
            "timings_rank0"
        ].get("report_s")
    middle = sorted(range(len(runs)), key=lambda i: runs[i][1])[len(runs) // 2]
    return {
        "gallery": args.gallery,
        "queries": args.queries,
        "k": args.k,
        "size": args.size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "member": args.member,
        "labels": not getattr(args, "unlabelled", False),
        "ratio_cpu": _median([r[1] / p[1] for r, p in zip(runs, limits)]),
        "ratio_wall": _median([r[0] / p[0] for r, p in zip(runs, limits)]),
        "run_s": {"wall": [r[0] for r in runs], "cpu": [r[1] for r in runs]},
        "limit_s": {"wall": [p[0] for p in limits], "cpu": [p[1] for p in limits]},
        "time_by_kind_s (run of median CPU time)": summaries[middle][
            "time_by_kind_rank0"
        ],
        "with_report_s": {"wall": report[0], "cpu": report[1], "report": report_s},
    }


def faiss_recall(args: argparse.Namespace, model_class: type) -> dict:
    """A run with ``search="faiss"`` and the same run with exact search on the
    same JPEG files: the recall@k the FAISS run measured on itself
    (``summary.json``), recounted from the two runs' lists, and both times."""
    from captum_sfam.retrieval import ImageFiles, explain_retrieval, read_results

    torch.set_num_threads(args.threads)
    model = model_class().eval()
    reader = _Reader(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gallery = ImageFiles.from_folder(
            _jpeg_folder(root / "gallery", args.gallery, 0, args.size), reader
        )
        queries = ImageFiles.from_folder(
            _jpeg_folder(root / "queries", args.queries, 1, args.size), reader
        )
        found, seconds, summary = {}, {}, {}
        for search in ("faiss", "exact"):
            out = root / search
            start = time.perf_counter()
            explain_retrieval(
                model, model.features, queries, gallery, out, member=args.member,
                k=args.k, batch_size=args.batch_size, report=False, search=search,
            )  # fmt: skip
            seconds[search] = time.perf_counter() - start
            summary[search] = json.loads((out / "summary.json").read_text())
            found[search] = [
                [n["index"] for n in r["neighbours"]] for r in read_results(out)
            ]
    pairs = zip(found["faiss"], found["exact"])
    recount = sum(len(set(f) & set(e)) for f, e in pairs) / (args.queries * args.k)
    return {
        "gallery": args.gallery,
        "queries": args.queries,
        "k": args.k,
        "measured_by_the_run": summary["faiss"]["search_recall"],
        "recall_at_k_all_queries": recount,
        "seconds": seconds,
        "search_s": {
            s: summary[s]["time_by_kind_rank0"].get("search_s", 0.0)
            + summary[s]["time_by_kind_rank0"].get("search_index_s", 0.0)
            for s in seconds
        },
    }
