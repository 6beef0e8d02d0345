"""Speed and memory of the pair attributions, as ratios measured in one run.

Two sections, each case timed in a fresh worker process (so peak memory is the
case's own; CPU: peak RSS growth, CUDA: peak allocated memory):

1. forward-only cost: LayerSFAM.attribute against torch.no_grad() forwards of
   the same images through the network up to the explained layer (= 1.00):
   queries and support apart, and in one batch as LayerSFAM runs them;
   for layer4 and layer3 of a torchvision ResNet (random weights: the cost does
   not depend on them), several batch sizes, fp32 and bf16 autocast
   (--precisions), optionally channels_last (--channels-last); and
   LayerSFAM.attribute_pairs of Q queries x M gallery images against the
   no-grad forwards of the Q + M images (--pairs Q M).
2. against peers, same inputs: LayerSFAM / LayerSimilarityGradCam
   .attribute_pairs, Captum's LayerGradCam through SimilarityTarget and
   pytorch-grad-cam's GradCAM with a cosine similarity target (its embeddings
   tutorial's pattern), on 1 pair, 1 x M and Q x M query/gallery pairs. The
   gradient methods get one batched forward+backward of the Q*M pairs.

Usage:
    python benchmarks/bench_perf.py                # CPU defaults, ~5-8 min on 2 cores
    python benchmarks/bench_perf.py --device cuda --gpu   # the GPU table (issue 12)
    python benchmarks/bench_perf.py --device cuda --peer-model resnet50 --peer-size 224
    python benchmarks/bench_perf.py --quick        # seconds: a smoke run

Writes JSON (--out, default benchmarks/results/perf-<device>.json) and prints a
table. pytorch-grad-cam is optional (pip install grad-cam): skipped if absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- worker --
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _build(model_name: str, device: str) -> torch.nn.Module:
    import torchvision

    model = getattr(torchvision.models, model_name)(weights=None).eval().to(device)
    return model


def _up_to(model: torch.nn.Module, layer_name: str) -> torch.nn.Module:
    children = []
    for name, child in model.named_children():
        children.append(child)
        if name == layer_name:
            break
    return torch.nn.Sequential(*children).eval()


def _embedding(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    emb = copy.deepcopy(model)
    emb.fc = torch.nn.Identity()
    return emb.eval()


def _precision(fn: Callable[[], Any], spec: Dict[str, Any], device: str) -> Any:
    """``fn`` under bf16 autocast when ``spec["precision"] == "bf16"``."""
    if spec.get("precision", "fp32") == "fp32":
        return fn

    def run() -> Any:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            return fn()

    return run


def _case_fn(spec: Dict[str, Any], device: str) -> Callable[[], Any]:
    return _precision(_case(spec, device), spec, device)


def _case(spec: Dict[str, Any], device: str) -> Callable[[], Any]:
    from captum.attr import LayerGradCam

    from captum_sfam import LayerSFAM, LayerSimilarityGradCam, SimilarityTarget

    torch.manual_seed(0)
    model = _build(spec["model"], device)
    memory = torch.channels_last if spec.get("channels_last") else None
    if memory is not None:
        model = model.to(memory_format=memory)
    size = spec["size"]
    kind = spec["kind"]

    def batch(count: int) -> torch.Tensor:
        x = torch.rand(count, 3, size, size, device=device)
        return x if memory is None else x.contiguous(memory_format=memory)

    if kind in ("forward", "forward_joint", "sfam", "forward_pairs", "sfam_all_pairs"):
        layer_name = spec["layer"]
        layer = getattr(model, layer_name)
        pairs = kind in ("forward_pairs", "sfam_all_pairs")
        q = batch(spec["queries"] if pairs else spec["batch"])
        s = batch(spec["gallery"] if pairs else spec["shots"])
        if kind in ("forward", "forward_pairs"):
            head = _up_to(model, layer_name)

            def run() -> Any:
                with torch.no_grad():
                    return head(q), head(s)

            return run
        if kind == "forward_joint":  # one batch, as LayerSFAM runs an eval model
            head = _up_to(model, layer_name)

            def run_joint() -> Any:
                with torch.no_grad():
                    return head(torch.cat([q, s]))

            return run_joint
        sfam = LayerSFAM(model, layer, metric="cosine")
        if pairs:
            return lambda: sfam.attribute_pairs(q, s)
        return lambda: sfam.attribute(q, s)

    queries, gallery = spec["queries"], spec["gallery"]
    q = torch.rand(queries, 3, size, size, device=device)
    g = torch.rand(gallery, 3, size, size, device=device)
    emb = _embedding(model)
    if kind == "sfam_pairs":
        sfam = LayerSFAM(emb, emb.layer4, metric="cosine")
        return lambda: sfam.attribute_pairs(q, g)
    if kind == "simgradcam_pairs":
        sgc = LayerSimilarityGradCam(emb, emb.layer4, metric="cosine")
        return lambda: sgc.attribute_pairs(q, g)
    # The gallery's embeddings are part of the job (ours forwards the gallery
    # too), so the peers compute them inside the timed call.
    pairs_q = q.repeat_interleave(gallery, dim=0)  # pair (i, j) -> row i*M + j
    targets = list(range(gallery)) * queries
    if kind == "captum_gradcam":

        def captum_run() -> Any:
            with torch.no_grad():
                refs = emb(g)
            target = SimilarityTarget(emb, refs, metric="cosine")
            return LayerGradCam(target, emb.layer4).attribute(pairs_q, target=targets)

        return captum_run
    if kind == "pgc_gradcam":
        from pytorch_grad_cam import GradCAM

        class SimilarityToConceptTarget:  # pytorch-grad-cam embeddings tutorial
            def __init__(self, features: torch.Tensor) -> None:
                self.features = features

            def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
                cos = torch.nn.CosineSimilarity(dim=0)
                return cos(model_output, self.features)

        cam = GradCAM(model=emb, target_layers=[emb.layer4])

        def pgc_run() -> Any:
            with torch.no_grad():
                refs = emb(g)
            cam_targets = [SimilarityToConceptTarget(refs[t]) for t in targets]
            return cam(input_tensor=pairs_q, targets=cam_targets)

        return pgc_run
    raise ValueError(kind)


def _time_call(fn: Callable[[], Any], cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def worker(spec: Dict[str, Any], device: str, repeats: int) -> Dict[str, Any]:
    torch.set_num_threads(torch.get_num_threads())
    fn = _case_fn(spec, device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    else:
        base_mem = _rss_bytes()
    fn()  # warm-up (also reaches the peak)
    times = [_time_call(fn, cuda) for _ in range(repeats)]
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base_mem
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_mem
    return {"median_s": statistics.median(times), "times_s": times, "peak_bytes": peak}


def worker_interleaved(
    specs: List[Dict[str, Any]], device: str, repeats: int
) -> List[Dict[str, Any]]:
    """Median times of several cases timed in turns (A, B, A, B, ...).

    Taking turns in one process cancels most of the drift of a shared machine,
    so the ratio of the medians is what one run can measure best.
    """
    fns = [_case_fn(spec, device) for spec in specs]
    cuda = device.startswith("cuda")
    peaks: List[Dict[str, int]] = [{} for _ in fns]
    for fn, peak in zip(fns, peaks):
        fn()  # warm-up
        if cuda:  # CUDA counts allocations exactly: each case's peak, here
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            peak["peak_bytes"] = torch.cuda.max_memory_allocated() - base
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            bucket.append(_time_call(fn, cuda))
    return [
        {"median_s": statistics.median(t), "times_s": t, **peak}
        for t, peak in zip(times, peaks)
    ]


def with_peaks(
    specs: List[Dict[str, Any]], timed: List[Dict[str, Any]], device: str
) -> List[Dict[str, Any]]:
    """Each case's peak memory: measured in the interleaved worker on CUDA;
    on the CPU (RSS high-water mark) in a fresh process per case, one call."""
    return [
        t if "peak_bytes" in t else {**run_case(spec, device, 1), **t}
        for spec, t in zip(specs, timed)
    ]


def growth(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Time and peak memory of attribute_pairs as the gallery M grows."""
    sizes = args.growth or [8, 32, 128]
    rows = []
    print(
        f"\n== cost growth: LayerSFAM.attribute_pairs, {args.peer_model} "
        f"{args.peer_size}px, Q = {args.queries}"
    )
    for gallery in sizes:
        spec = {
            "model": args.peer_model,
            "size": args.peer_size,
            "queries": args.queries,
            "gallery": gallery,
            "kind": "sfam_pairs",
        }
        result = run_case(spec, args.device, max(1, args.repeats // 2))
        rows.append({"gallery": gallery, **result})
        if "error" not in result:
            print(
                f"M = {gallery:5d}: {result['median_s'] * 1000:9.1f} ms "
                f"{result['peak_bytes'] / 2**20:9.1f} MiB"
            )
    ok = [r for r in rows if "error" not in r]
    if ok:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 3))
        ax_t, ax_m = fig.subplots(1, 2)
        ms = [r["gallery"] for r in ok]
        ax_t.plot(ms, [r["median_s"] for r in ok], "o-")
        ax_t.set_xlabel("gallery size M")
        ax_t.set_ylabel("seconds")
        ax_m.plot(ms, [r["peak_bytes"] / 2**20 for r in ok], "o-")
        ax_m.set_xlabel("gallery size M")
        ax_m.set_ylabel("peak MiB")
        fig.suptitle(f"attribute_pairs, Q = {args.queries} queries, {args.peer_model}")
        fig.tight_layout()
        png = HERE / "results" / f"growth-{args.device.split(':')[0]}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=90)
        print(f"wrote {png}")
    return rows


# ------------------------------------------------------------------ main --
# Large blocks are mmap'ed and given back at once, so the RSS high-water mark
# follows the live memory instead of the allocator's caching.
WORKER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}


def run_case(spec: Any, device: str, repeats: int, interleaved: bool = False) -> Any:
    cmd = [
        sys.executable,
        __file__,
        "--interleaved" if interleaved else "--worker",
        json.dumps(spec),
        "--device",
        device,
        "--repeats",
        str(repeats),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env=WORKER_ENV
    )
    if out.returncode != 0:
        return {
            "error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(result: Dict[str, Any], base: Dict[str, Any]) -> str:
    if "error" in result:
        return f"{'error: ' + result['error'][:60]:>44}"
    ratio_t = result["median_s"] / base["median_s"]
    mem = result["peak_bytes"] / 2**20
    ratio_m = result["peak_bytes"] / max(base["peak_bytes"], 1)
    return (
        f"{result['median_s'] * 1000:10.1f} ms {ratio_t:7.2f}x "
        f"{mem:9.1f} MiB {ratio_m:7.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--layers", nargs="+", default=["layer4", "layer3"])
    parser.add_argument("--peer-model", default="resnet18")
    parser.add_argument("--peer-size", type=int, default=160)
    parser.add_argument("--gallery", type=int, default=64)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument(
        "--growth",
        type=int,
        nargs="*",
        default=None,
        help="gallery sizes M for the cost-growth sweep of attribute_pairs "
        "(e.g. --growth 8 32 128); writes a PNG next to the JSON",
    )
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"]
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--pairs", type=int, nargs=2, action="append", metavar=("Q", "M"),
        help="attribute_pairs of Q x M images against the Q + M forwards",
    )  # fmt: skip
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="issue 12's GPU table: B = 1 8 64 256, layer4 and layer3, fp32 and "
        "bf16, pairs 64 x 2048, no peers; writes perf-cuda.json",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--interleaved", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.device, args.repeats)))
        return
    if args.interleaved:
        specs = json.loads(args.interleaved)
        print(json.dumps(worker_interleaved(specs, args.device, args.repeats)))
        return
    if args.gpu:
        args.batches, args.layers = [1, 8, 64, 256], ["layer4", "layer3"]
        args.precisions, args.skip_peers = ["fp32", "bf16"], True
        args.pairs = args.pairs or [[64, 2048]]
    if args.quick:
        args.model = args.peer_model = "resnet18"
        args.size, args.peer_size, args.batches = 64, 64, [2]
        args.layers, args.gallery, args.queries, args.repeats = ["layer4"], 4, 2, 1

    report: Dict[str, Any] = {
        "machine": {
            "device": args.device,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0)
            if args.device.startswith("cuda")
            else None,
        },
        "args": {k: str(v) for k, v in vars(args).items() if k != "worker"},
        "forward_cost": [],
        "pairs_cost": [],
        "peers": [],
    }
    print(
        f"== forward-only cost: {args.model} {args.size}px, {args.device}, "
        f"median of {args.repeats} interleaved runs "
        "(no-grad forward up to the layer = 1.00x)"
    )
    print(f"{'case':34s} {'time':>13s} {'ratio':>8s} {'peak mem':>13s} {'ratio':>8s}")
    cases = [
        (layer, batch, precision)
        for precision in args.precisions
        for layer in args.layers
        for batch in args.batches
    ]
    for layer, batch, precision in cases:
        common = {
            "model": args.model,
            "size": args.size,
            "layer": layer,
            "batch": batch,
            "shots": 1,
            "precision": precision,
            "channels_last": args.channels_last,
        }
        specs = [
            {**common, "kind": "forward"},
            {**common, "kind": "sfam"},
            {**common, "kind": "forward_joint"},
        ]
        timed = run_case(specs, args.device, args.repeats, interleaved=True)
        if "error" in timed:
            print(f"{layer} B={batch}: {timed['error']}")
            continue
        base, sfam, joint = with_peaks(specs, timed, args.device)
        label = f"no-grad fwd {layer} B={batch}, +1 apart {precision}"
        print(f"{label:34s} {_fmt(base, base)}")
        print(f"{'no-grad fwd, one batch of B+1':34s} {_fmt(joint, base)}")
        print(f"{'LayerSFAM.attribute':34s} {_fmt(sfam, base)}")
        print(f"{'  against the one-batch forward':34s} {_fmt(sfam, joint)}")
        report["forward_cost"].append(
            {"layer": layer, "batch": batch, "precision": precision,
             "forward": base, "forward_one_batch": joint, "sfam": sfam}
        )  # fmt: skip
    for queries, gallery in args.pairs or []:
        for precision in args.precisions:
            common = {
                "model": args.model, "size": args.size, "layer": "layer4",
                "queries": queries, "gallery": gallery, "precision": precision,
                "channels_last": args.channels_last,
            }  # fmt: skip
            specs = [
                {**common, "kind": "forward_pairs"},
                {**common, "kind": "sfam_all_pairs"},
            ]
            timed = run_case(specs, args.device, args.repeats, interleaved=True)
            if "error" in timed:
                print(f"pairs {queries}x{gallery}: {timed['error']}")
                continue
            base, pairs = with_peaks(specs, timed, args.device)
            label = f"no-grad fwd Q={queries}+M={gallery} {precision}"
            print(f"{label:34s} {_fmt(base, base)}")
            print(f"{'LayerSFAM.attribute_pairs':34s} {_fmt(pairs, base)}")
            report["pairs_cost"].append(
                {"queries": queries, "gallery": gallery, "precision": precision,
                 "forward": base, "pairs": pairs}
            )  # fmt: skip
    if not args.skip_peers:
        kinds = ["sfam_pairs", "simgradcam_pairs", "captum_gradcam", "pgc_gradcam"]
        names = {
            "sfam_pairs": "LayerSFAM.attribute_pairs",
            "simgradcam_pairs": "LayerSimilarityGradCam.attr_pairs",
            "captum_gradcam": "Captum LayerGradCam+SimTarget",
            "pgc_gradcam": "pytorch-grad-cam GradCAM",
        }
        print(
            f"\n== against peers: {args.peer_model} {args.peer_size}px, cosine, "
            f"layer4 (LayerSFAM.attribute_pairs = 1.00x)"
        )
        for queries, gallery in (
            (1, 1),
            (1, args.gallery),
            (args.queries, args.gallery),
        ):
            print(f"-- {queries} query x {gallery} gallery")
            reps = args.repeats if queries * gallery <= 64 else 1
            results = {}
            for kind in kinds:
                spec = {
                    "model": args.peer_model,
                    "size": args.peer_size,
                    "queries": queries,
                    "gallery": gallery,
                    "kind": kind,
                }
                results[kind] = run_case(spec, args.device, reps)
            base = results["sfam_pairs"]
            for kind in kinds:
                print(f"{names[kind]:34s} {_fmt(results[kind], base)}")
            report["peers"].append({"queries": queries, "gallery": gallery, **results})
    if args.growth:
        report["growth"] = growth(args)
    out = args.out or HERE / "results" / f"perf-{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
