"""Dispatch count: aten ops and host synchronisations per explanation call.

Counted with a ``TorchDispatchMode`` on the CPU, this tells the GPU overhead
of a call without a GPU: on a GPU each aten op is (at least) one kernel launch
and each host synchronisation (``bool()``, ``.item()``: ``aten.is_nonzero``,
``aten._local_scalar_dense``) stalls the device until its queue is empty.

The baseline is a ``torch.no_grad()`` forward of the queries and the support
together (one batch) through the network up to the explained layer.

Usage:
    python benchmarks/bench_dispatch.py               # ResNet-50, layer4, cosine
    python benchmarks/bench_dispatch.py --layer layer3 --batch 8 --shots 5

Prints a table and writes JSON (--out, default
benchmarks/results/dispatch-cpu.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict

import captum
import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOST_SYNCS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default"}
#: ops that only make a new view or an uninitialised tensor: no kernel runs
NO_KERNEL = {
    f"aten.{name}"
    for name in (
        "view.default", "_unsafe_view.default", "slice.Tensor", "select.int",
        "detach.default", "alias.default", "unsqueeze.default", "squeeze.dim",
        "squeeze.dims", "permute.default", "expand.default", "t.default",
        "transpose.int", "unbind.int", "split.Tensor", "as_strided.default",
        "reshape.default", "empty.memory_format", "empty_like.default",
        "scalar_tensor.default", "lift_fresh.default",
        "_local_scalar_dense.default", "is_nonzero.default",
    )
}  # fmt: skip
HERE = Path(__file__).resolve().parent


class DispatchCounter(TorchDispatchMode):
    """Counts every aten op dispatched, and the host synchronisations."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def kernels(self) -> int:
        """Ops that launch work on a device (views and allocations excluded)."""
        return sum(n for op, n in self.ops.items() if op not in NO_KERNEL)

    @property
    def syncs(self) -> int:
        return sum(n for op, n in self.ops.items() if op in HOST_SYNCS)


def count(fn) -> DispatchCounter:  # noqa: ANN001
    with DispatchCounter() as counter:
        fn()
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--metric", default="cosine")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="image side (px)")
    parser.add_argument("--out", type=Path, default=HERE / "results/dispatch-cpu.json")
    args = parser.parse_args()

    import torchvision

    from captum_sfam import REGISTRY

    net = getattr(torchvision.models, args.model)(weights=None).eval()
    net.fc = torch.nn.Identity()  # an embedding model: pooled features out
    names = [name for name, _ in net.named_children()]
    trunk = torch.nn.Sequential(
        *[getattr(net, n) for n in names[: names.index(args.layer) + 1]]
    )
    queries = torch.rand(args.batch, 3, args.size, args.size)
    support = torch.rand(args.shots, 3, args.size, args.size)
    with torch.no_grad():
        forward = count(lambda: trunk(torch.cat([queries, support])))
    rows: Dict[str, Any] = {
        "forward": {
            "ops": forward.total,
            "kernels": forward.kernels,
            "syncs": forward.syncs,
            "top": {},
        }
    }
    for member in REGISTRY.values():
        if args.metric not in member.supported_metrics:
            continue
        method = member.cls(net, getattr(net, args.layer), metric=args.metric)
        call = count(lambda: method.attribute(queries, support))  # noqa: B023
        rows[member.display_name] = {
            "ops": call.total,
            "extra_ops": call.total - forward.total,
            "extra_kernels": call.kernels - forward.kernels,
            "syncs": call.syncs,
            "forward_only": member.forward_only,
            "top": dict(call.ops.most_common(5)),
        }
    print(
        f"{args.model} {args.layer}, {args.metric}, B = {args.batch}, "
        f"K = {args.shots}; forward of queries + support: {forward.total} ops, "
        f"{forward.kernels} of them kernels"
    )
    print(
        f"{'method':<22} {'aten ops':>9} {'beyond fwd':>11} {'kernels beyond':>15} "
        f"{'host syncs':>11}"
    )
    for name, row in rows.items():
        if name == "forward":
            continue
        print(
            f"{name:<22} {row['ops']:>9} {row['extra_ops']:>+11} "
            f"{row['extra_kernels']:>+15} {row['syncs']:>11}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": {
            "torch": torch.__version__,
            "captum": captum.__version__,
            "python": platform.python_version(),
            "device": "cpu",
        },
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
