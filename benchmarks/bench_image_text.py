"""Image–text maps, batched against one pair at a time, on the CPU.

Q images x T texts through open_clip's ViT-B-32 (weight-free:
``open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)``; the
cost does not depend on the weights), the T text embeddings computed once:

- ``cgram-pairs``: ``LayerCGRAM.attribute_pairs(images, references=texts)``,
  one forward of the Q images and one batched backward pass for the T texts;
- ``cgram-loop``: ``LayerCGRAM.attribute(image, references=texts,
  target=j)`` for each of the Q x T pairs;
- ``multiblock-pairs`` / ``multiblock-loop``: the same for
  ``LayerMultiBlockGrad`` over the last ``--blocks`` blocks;
- ``legrad-loop``: LeGrad's maths (Bousselham et al.; github.com/WalBouss/
  LeGrad, ``compute_legrad_clip``) written out per pair, as its users run it
  one pair at a time: the positive part of the gradient of each block's
  early-exit score (mean token -> ln_post -> proj) with respect to that
  block's attention map, over the last ``--blocks`` blocks (LeGrad's default
  ``layer_index=-2``), summed, min-max normalised. (``pip install legrad``
  finds no distribution, and its code patches open_clip 2.24 internals.)

Each mode runs in its own process (one thread by default): wall and CPU
time (best of ``--repeat``; the CPU time of the process is the steadier
measure on a shared machine) and peak resident memory (``resource`` maxrss)
above the process after loading the model and the inputs.

Usage:
    python benchmarks/bench_image_text.py                  # Q = 8, T = 16
    python benchmarks/bench_image_text.py --queries 2 --texts 4 --out /tmp/x.json

Writes JSON (--out, default benchmarks/results/image-text-cpu.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

HERE = Path(__file__).resolve().parent
MODES = [
    "cgram-pairs",
    "cgram-loop",
    "multiblock-pairs",
    "multiblock-loop",
    "legrad-loop",
]
CAPTIONS = [
    "a photo of a cat", "a photo of a dog", "a red car", "a bowl of soup",
    "two people on a beach", "a city at night", "a plate of pasta", "a blue bird",
    "a mountain lake", "a cup of coffee", "a child with a kite", "an old bicycle",
    "a bunch of flowers", "a white horse", "a wooden table", "a busy street",
]  # fmt: skip


def legrad_pair(model, image, text, blocks):  # noqa: ANN001
    """LeGrad's compute_legrad_clip for one (image, text) pair, written out
    for open_clip's VisionTransformer (attention maps computed explicitly)."""
    import torch
    import torch.nn.functional as F

    visual = model.visual
    x = visual.conv1(image)
    batch, width, gh, gw = x.shape
    x = x.reshape(batch, width, -1).permute(0, 2, 1)
    cls = visual.class_embedding.reshape(1, 1, -1).expand(batch, 1, -1)
    x = torch.cat([cls.to(x.dtype), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    resblocks = list(visual.transformer.resblocks)
    start = len(resblocks) - blocks
    probs, exits = [], []
    for depth, blk in enumerate(resblocks):
        y = blk.ln_1(x)
        attn = blk.attn
        heads, tokens = attn.num_heads, y.shape[1]
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (
            t.reshape(batch, tokens, heads, -1).transpose(1, 2) for t in (q, k, v)
        )
        p = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        out = (p @ v).transpose(1, 2).reshape(batch, tokens, width)
        x = x + blk.ls_1(attn.out_proj(out))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        if depth >= start:
            feat = visual.ln_post(x.mean(dim=1)) @ visual.proj
            probs.append(p)
            exits.append(F.normalize(feat, dim=-1))
    total = 0
    for p, feat in zip(probs, exits):
        sim = (text @ feat.T).sum()
        (grad,) = torch.autograd.grad(sim, [p], retain_graph=True)
        relevance = grad.clamp(min=0).mean(dim=1).mean(dim=1)[:, 1:]
        total = total + relevance.reshape(batch, 1, gh, gw)
    low = total.flatten(1).min(1)[0][:, None, None, None]
    high = total.flatten(1).max(1)[0][:, None, None, None]
    return ((total - low) / (high - low)).detach()


def run_mode(args: argparse.Namespace) -> Dict[str, Any]:
    import open_clip
    import torch

    from captum_sfam import LayerCGRAM
    from captum_sfam.image_text import LayerMultiBlockGrad, two_tower

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, _, _ = open_clip.create_model_and_transforms(args.model, pretrained=None)
    tower = two_tower(model.eval(), open_clip.get_tokenizer(args.model))
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.rand(args.queries, 3, size, size)
    texts = tower.encode_text((CAPTIONS * 4)[: args.texts])
    layers = tower.map_layers[-args.blocks :]
    cgram = LayerCGRAM(tower.image_model, tower.default_layer, metric=tower.metric)
    multi = LayerMultiBlockGrad(tower.image_model, layers, metric=tower.metric)
    unit = texts / texts.norm(dim=-1, keepdim=True)

    def each_pair(method):
        return [
            method.attribute(images[i : i + 1], references=texts, target=j)
            for i in range(args.queries)
            for j in range(args.texts)
        ]

    calls = {
        "cgram-pairs": lambda: cgram.attribute_pairs(images, texts),
        "cgram-loop": lambda: each_pair(cgram),
        "multiblock-pairs": lambda: multi.attribute_pairs(images, texts),
        "multiblock-loop": lambda: each_pair(multi),
        "legrad-loop": lambda: [
            legrad_pair(model, images[i : i + 1], unit[j : j + 1], args.blocks)
            for i in range(args.queries)
            for j in range(args.texts)
        ],
    }
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu = [], []
    for _ in range(args.repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        calls[args.mode]()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": args.mode,
        "seconds": min(times),
        "cpu_seconds": min(cpu),
        "all_seconds": times,
        "peak_rss_mib": peak / 1024,
        "peak_above_loaded_mib": (peak - base) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "results" / "image-text-cpu.json"))
    args = parser.parse_args()
    if args.mode:  # a child: one mode, JSON on stdout
        print(json.dumps(run_mode(args)))
        return
    import captum
    import open_clip
    import torch

    results = {}
    for mode in args.modes.split(","):
        child = [sys.executable, __file__, "--mode", mode] + [
            f"--{k}={getattr(args, k)}"
            for k in ("model", "queries", "texts", "blocks", "repeat", "threads")
        ]
        out = subprocess.run(child, capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(
            f"{mode:18s} {r['seconds']:8.2f} s wall {r['cpu_seconds']:8.2f} s CPU"
            f"   peak RSS {r['peak_rss_mib']:7.0f} MiB "
            f"(+{r['peak_above_loaded_mib']:.0f} MiB above the loaded model)",
            flush=True,
        )
    ratios = {}
    for batched, loops in (
        ("cgram-pairs", ("cgram-loop",)),
        ("multiblock-pairs", ("multiblock-loop", "legrad-loop")),
    ):
        for loop in loops:
            if batched in results and loop in results:
                ratio = results[loop]["seconds"] / results[batched]["seconds"]
                cpu = results[loop]["cpu_seconds"] / results[batched]["cpu_seconds"]
                ratios[f"{loop} / {batched}"] = {"wall": ratio, "cpu": cpu}
                print(f"{loop} / {batched}: {ratio:.1f}x wall, {cpu:.1f}x CPU")
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": {  # the keys docs/benchmarks/generate.py reads
            "torch": torch.__version__,
            "captum": captum.__version__,
            "open_clip": open_clip.__version__,
            "python": platform.python_version(),
            "device": f"cpu ({platform.machine()})",
            "threads": args.threads,
        },
        "settings": {
            k: getattr(args, k)
            for k in ("model", "queries", "texts", "blocks", "repeat", "threads")
        },
        "weights": "none (pretrained=None): the cost does not depend on them",
        "results": results,
        "ratios": ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
