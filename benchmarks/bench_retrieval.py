r"""Benchmark of ``explain_retrieval``: throughput and peak memory as the gallery
grows, 1 vs 2 processes, and top-1 accuracy on folders of real photos.

    python benchmarks/bench_retrieval.py growth --sizes 1000 4000 16000
    python benchmarks/bench_retrieval.py processes --gallery 4000
    python benchmarks/bench_retrieval.py photos
    python benchmarks/bench_retrieval.py limit --gallery 2000 --queries 128
    python benchmarks/bench_retrieval.py faiss --gallery 20000 --queries 256

``growth``: synthetic images (a fixed number of queries against galleries of
growing size), each size in a fresh process; reports pair maps per second,
the whole run's time and the process's peak resident memory (ru_maxrss).
``processes``: the same run with ``torchrun --nproc-per-node`` 1 and 2 (gloo on
CPU, NCCL on GPUs). ``photos``: writes a gallery of scikit-image's photos (one
folder per photo) and queries made from them (mirrored crops, crops, darker
copies), runs ``captum-sfam retrieve`` on them with the offline
EfficientNet-Lite0 and reports how often top-1 is the query's own photo.
``limit``: a whole run against its physical limit on the same image files
(JPEG, decoded and resized by the same reader, same batch size and workers):
the limit is one plain batched ``torch.no_grad()`` embedding pass over the
gallery and the queries plus the forward passes of the gallery images the
explained maps need (each batch's distinct neighbours, and with labels the
true matches its wrong neighbours are contrasted with, once each, as the run
reads them);
the run is ``explain_retrieval`` without the report (the report's time is
measured apart). Each is timed ``--repeats`` times, alternating, and the
fastest kept; the ratio and the run's time per kind of work (``summary.json``
``time_by_kind_rank0``: read, embed, search, maps, write, ...) are printed.
``faiss``: the same files searched by FAISS (``search="faiss"``) and
exactly: the recall@k the FAISS run measured on its first 256 queries, the
recall over all queries recounted from both runs, and their times.
Results go to ``benchmarks/results/retrieval-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"


# ------------------------------------------------------------- model -------
class SmallEmbedding(nn.Module):
    """A small CNN embedding model (random weights, fixed seed): 4 strided
    convolutions to a (width, 8, 8) layer at 128 px, global average pooling,
    a linear head to 128 dimensions."""

    def __init__(self, width: int = 128, dim: int = 128) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers, channels = [], 3
        for out in (32, 64, width // 2, width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class SyntheticImages(torch.utils.data.Dataset):
    """``length`` random images made on the fly (seeded by index): the gallery
    is never held in memory, as with files on disk."""

    def __init__(self, length: int, size: int, offset: int = 0) -> None:
        self.length, self.size, self.offset = length, size, offset

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.offset + index)
        return torch.rand(3, self.size, self.size, generator=gen)


def one_run(args: argparse.Namespace) -> dict:
    """One explain_retrieval run (this process; a rank under torchrun)."""
    from captum_sfam.retrieval import explain_retrieval, init_distributed

    context = init_distributed()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and context.device.type == "cuda":
        device = context.device
    model = SmallEmbedding().to(device).eval()
    queries = SyntheticImages(args.queries, args.size, offset=10**9)
    gallery = SyntheticImages(args.gallery, args.size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    run = explain_retrieval(
        model, model.features, queries, gallery, args.out, member=args.member,
        k=args.k, batch_size=args.batch_size, report=False, resume=False,
        device=device,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux)
    gpu_peak = (
        torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    )
    return {
        "rank": context.rank,
        "world_size": context.world_size,
        "gallery": args.gallery,
        "queries": args.queries,
        "k": args.k,
        "seconds": seconds,
        "pair_maps": args.queries * args.k,
        "pair_maps_per_s": args.queries * args.k / seconds,
        "peak_rss_mib": peak,
        "rss_before_run_mib": before,
        "peak_cuda_mib": gpu_peak,
        "timings": run.timings,
    }


def _child(args: argparse.Namespace, gallery: int, nproc: int, out: Path) -> dict:
    command = [
        "--gallery", str(gallery), "--queries", str(args.queries),
        "--k", str(args.k), "--size", str(args.size), "--out", str(out),
        "--batch-size", str(args.batch_size), "--member", args.member,
        "--device", args.device, "--threads", str(args.threads),
        "--report-json", str(out) + ".json",
    ]  # fmt: skip
    script = [str(Path(__file__).resolve()), "one", *command]
    if nproc == 1:
        launch = [sys.executable, *script]
    else:
        launch = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", *script,
        ]  # fmt: skip
    subprocess.run(launch, check=True, timeout=args.timeout)
    ranks = [
        json.loads(line) for line in Path(str(out) + ".json").read_text().splitlines()
    ]
    return {
        "gallery": gallery,
        "processes": nproc,
        "seconds": max(r["seconds"] for r in ranks),
        "pair_maps_per_s": ranks[0]["pair_maps"] / max(r["seconds"] for r in ranks),
        "peak_rss_mib_per_process": max(r["peak_rss_mib"] for r in ranks),
        "run_rss_increase_mib": max(
            r["peak_rss_mib"] - r["rss_before_run_mib"] for r in ranks
        ),
        "peak_cuda_mib": ranks[0]["peak_cuda_mib"],
        "gallery_embedding_s": max(r["timings"]["gallery_embedding_s"] for r in ranks),
        "queries_s": max(r["timings"]["queries_s"] for r in ranks),
        "explain_pair_maps_per_s": ranks[0]["pair_maps"]
        / max(r["timings"]["queries_s"] for r in ranks),
    }


def growth(args: argparse.Namespace) -> list:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            row = _child(args, size, 1, Path(tmp) / f"g{size}")
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def processes(args: argparse.Namespace) -> list:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2):
            row = _child(args, args.gallery, nproc, Path(tmp) / f"p{nproc}")
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


# ------------------------------------------------------------- photos ------
def photo_folders(root: Path) -> tuple:
    """gallery/<photo>/<photo>.png for scikit-image's photos, and three query
    views of each: queries/<photo>/{mirror,crop,dark}.png."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from captum_sfam.demo.pretrained import second_view

    names = [
        "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins",
        "colorwheel", "grass", "gravel", "hubble_deep_field",
        "immunohistochemistry", "logo", "moon", "page", "retina", "rocket",
        "text", "cell", "microaneurysms",
    ]  # fmt: skip
    photos = {name: getattr(data, name)() for name in names}
    photos["motorcycle"] = data.stereo_motorcycle()[0]
    photos["horse"] = (~data.horse()).astype(np.uint8) * 255
    for name, image in photos.items():
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        image = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
        height, width = image.shape[:2]
        views = {
            "mirror": second_view(image),
            "crop": image[height // 10 :, : width - width // 6],
            "dark": (image.astype(np.float32) * 0.6).astype(np.uint8),
        }
        (root / "gallery" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "gallery" / name / f"{name}.png")
        (root / "queries" / name).mkdir(parents=True, exist_ok=True)
        for view, array in views.items():
            Image.fromarray(np.ascontiguousarray(array)).save(
                root / "queries" / name / f"{view}.png"
            )
    return root / "queries", root / "gallery"


def photos(args: argparse.Namespace) -> dict:
    root = Path(args.photo_dir)
    if root.exists():
        shutil.rmtree(root)
    queries, gallery = photo_folders(root)
    out = root / "run"
    command = [
        sys.executable, "-m", "captum_sfam.app", "retrieve", str(queries),
        str(gallery), "--top-k", "5", "--out", str(out), "--no-progress",
        "--contrast",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, timeout=args.timeout)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "results.jsonl").open()]
    top1 = sum(r["neighbours"][0]["label"] == r["label"] for r in records)
    misses = [
        f"{r['label']}/{Path(r['id']).name} -> {r['neighbours'][0]['label']}"
        for r in records
        if r["neighbours"][0]["label"] != r["label"]
    ]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "command": " ".join(command[1:]),
        "queries": len(records),
        "gallery": summary["gallery"],
        "top1_own_photo": top1,
        "top1_rate": top1 / len(records),
        "metrics": summary["metrics"],
        "misses": misses,
        "seconds": seconds,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode", choices=["growth", "processes", "photos", "limit", "faiss", "one"]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--gallery", type=int, default=4000)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--member", default="sfam")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (1: on a shared CPU, several threads "
        "per process can be much slower than one)",
    )
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--workers", type=int, default=0, help="limit: loader workers")
    parser.add_argument("--repeats", type=int, default=3, help="limit: repeats")
    parser.add_argument(
        "--unlabelled", action="store_true", help="limit: no labels (no audit)"
    )
    parser.add_argument("--out", default="bench-retrieval-run")
    parser.add_argument("--report-json")
    parser.add_argument("--photo-dir", default="bench-retrieval-photos")
    parser.add_argument("--save", action="store_true", help="write the results file")
    args = parser.parse_args(argv)
    if args.mode == "one":
        row = one_run(args)
        with open(args.report_json, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        return
    modes = {"photos": photos, "growth": growth, "processes": processes}
    if args.mode in ("limit", "faiss"):
        from bench_retrieval_limit import faiss_recall, limit

        mode = limit if args.mode == "limit" else faiss_recall
        result = mode(args, SmallEmbedding)
    else:
        result = modes[args.mode](args)
    print(json.dumps(result, indent=1))
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        device = "gpu" if args.device.startswith("cuda") else "cpu"
        path = RESULTS / f"retrieval-{device}.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        import datetime
        import platform

        import captum

        key = args.mode
        if args.mode == "limit":
            key = f"limit-workers{args.workers}" + ("-unlabelled" * args.unlabelled)
        saved[key] = {
            "command": "python benchmarks/bench_retrieval.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.date.today().isoformat(),
            "python": platform.python_version(),
            "captum": captum.__version__,
            "torch": torch.__version__,
            "threads": args.threads,
            "result": result,
        }
        path.write_text(json.dumps(saved, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
