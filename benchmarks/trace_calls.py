"""How far one explanation call travels through the package's files.

Traces ``LayerSFAM.attribute``, ``LayerSFAM.attribute_pairs`` and
``LayerCGRAM.attribute`` (and Captum's ``LayerGradCam`` through a
``SimilarityTarget``, for comparison) with ``sys.setprofile``: every Python
function call whose code lies in the package (``captum_sfam/``; for the
Captum row, ``captum/``) is recorded in order. For each call the table gives

- functions: distinct functions called (comprehensions, generator
  expressions and lambdas left out);
- files: distinct files entered;
- switches: how often a call lands in a different file than the call before
  it (the number of times a reader following the call changes file);
- depth: the deepest nesting of package calls.

Each call runs once to warm up (lazy imports, caches), then once traced.

Usage:
    python benchmarks/trace_calls.py            # the table
    python benchmarks/trace_calls.py --calls    # and every call, in order
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import captum
import torch
import torchvision

import captum_sfam

PACKAGE = str(Path(captum_sfam.__file__).resolve().parent)
CAPTUM = str(Path(captum.__file__).resolve().parent)


def trace(call: Callable[[], Any], root: str) -> List[Tuple[str, str, int]]:
    """(file, function, depth) of every call into ``root``, in order."""
    calls: List[Tuple[str, str, int]] = []
    depth = [0]

    def profile(frame: Any, event: str, _arg: Any) -> None:
        if event not in ("call", "return"):
            return
        filename = frame.f_code.co_filename
        # comprehensions and generator expressions are not functions a
        # reader follows: left out (their calls and their returns)
        if not filename.startswith(root) or frame.f_code.co_name.startswith("<"):
            return
        if event == "return":
            depth[0] -= 1
            return
        depth[0] += 1
        calls.append((filename[len(root) + 1 :], frame.f_code.co_qualname, depth[0]))

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return calls


def summary(calls: List[Tuple[str, str, int]]) -> Dict[str, int]:
    files = [f for f, _, _ in calls]
    return {
        "functions": len({(f, n) for f, n, _ in calls}),
        "files": len(set(files)),
        "switches": sum(a != b for a, b in zip(files, files[1:])),
        "depth": max((d for _, _, d in calls), default=0),
    }


def cases() -> Dict[str, Tuple[Callable[[], Any], str]]:
    from captum.attr import LayerGradCam

    from captum_sfam import LayerCGRAM, LayerSFAM, SimilarityTarget

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    net.fc = torch.nn.Identity()
    queries, support = torch.rand(2, 3, 64, 64), torch.rand(3, 3, 64, 64)
    sfam = LayerSFAM(net, net.layer4)
    cgram = LayerCGRAM(net, net.layer4, metric="cosine")
    target = SimilarityTarget.from_support(net, support.unsqueeze(1), metric="cosine")
    gradcam = LayerGradCam(target, net.layer4)
    return {
        "LayerSFAM.attribute": (lambda: sfam.attribute(queries, support), PACKAGE),
        "LayerSFAM.attribute_pairs": (
            lambda: sfam.attribute_pairs(queries, support),
            PACKAGE,
        ),
        "LayerCGRAM.attribute": (lambda: cgram.attribute(queries, support), PACKAGE),
        "Captum LayerGradCam (captum/ files)": (
            lambda: gradcam.attribute(queries, target=0),
            CAPTUM,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", action="store_true", help="print every call")
    options = parser.parse_args()
    rows = []
    for name, (call, root) in cases().items():
        call()  # warm-up: lazy imports and caches stay out of the trace
        calls = trace(call, root)
        rows.append((name, summary(calls)))
        if options.calls:
            print(f"\n{name}")
            for file, function, depth in calls:
                print(f"  {'  ' * (depth - 1)}{file}: {function}")
    print("\n| call | functions | files | switches | depth |")
    print("|---|---|---|---|---|")
    for name, s in rows:
        print(
            f"| {name} | {s['functions']} | {s['files']} | {s['switches']} "
            f"| {s['depth']} |"
        )


if __name__ == "__main__":
    main()
