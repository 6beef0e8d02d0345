"""Benchmark pages generated from the recorded results, never hand-copied.

``generate(outdir)`` writes one Markdown page per result set of
``benchmarks/results/`` (each ``*.json``, the quality benchmark's
``quality/bench.json`` and the Markdown tables the reading studies record)
with the date, the versions and the command of the run as the files record
them. What a file does not record is said on its page: the command then
comes from the benchmark script's documented usage (or is rebuilt from the
arguments the JSON records), and the date is the last commit of the file.

docs/conf.py calls it at build time into ``docs/benchmarks/generated/``; it
also runs alone::

    python docs/benchmarks/generate.py docs/benchmarks/generated
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"

#: the documented usage of each script, for files that record no command
DOCUMENTED = {
    "dispatch-cpu": "python benchmarks/bench_dispatch.py",
    "perf": "python benchmarks/bench_perf.py",
    "contrast-readings": "python benchmarks/contrast_readings.py [--metric euclidean]",
    "correspondence-readings": "python benchmarks/correspondence_readings.py",
    "part-swap-readings": "python benchmarks/part_swap_readings.py "
    "--pairs 15 --photos 8 --composites 10",
    "part-swap-tables": "captum-sfam bench --settings part-swap --full",
}
#: bench_perf.py's and bench_dispatch.py's defaults, to rebuild a command
PERF_DEFAULTS = {
    "device": "cpu", "model": "resnet50", "size": "224", "batches": "[8, 32]",
    "layers": "['layer4', 'layer3']", "peer_model": "resnet18",
    "peer_size": "160", "gallery": "64", "queries": "16", "repeats": "5",
    "skip_peers": "False", "growth": "None", "precisions": "['fp32']",
    "channels_last": "False", "pairs": "None", "gpu": "False",
    "quick": "False", "out": "None", "interleaved": "None",
}  # fmt: skip
DISPATCH_DEFAULTS = {
    "model": "resnet50", "layer": "layer4", "metric": "cosine", "batch": "2",
    "shots": "1", "size": "64",
}  # fmt: skip
MIB = 2**20


# --------------------------------------------------------------- helpers ----
def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _git_date(path: Path) -> Optional[str]:
    """The date of the last commit that changed ``path``, or None."""
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", str(path)],
            cwd=ROOT, capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _date(path: Path, data: Any = None) -> str:
    if isinstance(data, dict) and data.get("date"):
        return f"{data['date']} (recorded in the file)"
    committed = _git_date(path)
    if committed:
        return f"{committed} (the last commit of the file; the file records no date)"
    return "not recorded"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(c).replace("|", "\\|") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _header(
    title: str,
    path: Path,
    date: str,
    versions: str,
    command: str,
    what: str,
) -> str:
    return (
        f"# {title}\n\n{what}\n\n"
        f"- **File:** `{_rel(path)}`\n"
        f"- **Date:** {date}\n"
        f"- **Versions:** {versions}\n"
        f"- **Command:** {command}\n\n"
    )


def _code(command: str) -> str:
    return f"`{command}`"


def _rebuilt(script: str, args: Dict[str, Any], defaults: Dict[str, str]) -> str:
    """The command line that gives ``args`` (flags for non-default values)."""
    parts = [f"python {script}"]
    for key, value in args.items():
        value = str(value)
        if key in ("out", "interleaved", "worker") or value == defaults.get(key):
            continue
        flag = "--" + key.replace("_", "-")
        if value == "True":
            parts.append(flag)
        elif value.startswith("["):
            try:
                items = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                items = [value]
            parts.append(flag + " " + " ".join(str(i) for i in items))
        elif value not in ("False", "None"):
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _machine(data: Dict[str, Any]) -> str:
    m = data.get("machine") or {}
    if not m:
        return "not recorded"
    bits = [f"torch {m['torch']}"] if m.get("torch") else []
    bits += [f"captum {m['captum']}"] if m.get("captum") else []
    bits += [f"Python {m['python']}"] if m.get("python") else []
    bits.append(f"device {m.get('device')}")
    if m.get("gpu"):
        bits.append(f"GPU {m['gpu']}")
    if m.get("threads"):
        bits.append(f"{m['threads']} threads")
    return ", ".join(bits) + " (recorded in the file)"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


# ------------------------------------------------------------- renderers ----
def dispatch(path: Path, data: Dict[str, Any]) -> str:
    settings = data.get("settings", {})
    rows = data["rows"]
    forward = rows.get("forward", {})
    if isinstance(data.get("command"), str):
        command = _code(data["command"]) + " (recorded in the file)"
    else:
        command = (
            _code(_rebuilt("benchmarks/bench_dispatch.py", settings, DISPATCH_DEFAULTS))
            + " (rebuilt from the settings the file records; the documented usage "
            + "is "
            + _code(DOCUMENTED["dispatch-cpu"])
            + ")"
        )
    text = _header(
        "Operator dispatch per explanation (CPU-counted)",
        path,
        _date(path, data),
        _machine(data),
        command,
        "Aten operators, kernel-launching operators and host synchronisations "
        "of one `attribute` call beyond a `torch.no_grad()` forward of the "
        "queries and the support together; counted on the CPU, independently "
        "of the device. On a GPU a small-batch forward is launch-bound, so "
        "these counts are what an explanation costs beyond the forward.",
    )
    text += "Settings recorded: " + ", ".join(
        f"{k} = {v}" for k, v in settings.items() if k != "out"
    )
    text += (
        f".\n\nThe forward alone dispatches {forward.get('ops')} operators, "
        f"{forward.get('kernels')} of which launch a kernel.\n\n"
    )
    body = [
        (
            name,
            "forward-only" if row.get("forward_only") else "gradient",
            f"+{row['extra_ops']}",
            f"+{row['extra_kernels']}",
            row["syncs"],
        )
        for name, row in rows.items()
        if name != "forward"
    ]
    text += _table(
        ["member", "kind", "operators beyond the forward",
         "kernels beyond the forward", "host syncs"],
        body,
    )  # fmt: skip
    return text


def perf(path: Path, data: Dict[str, Any]) -> str:
    args = data.get("args", {})
    command = (
        _code(_rebuilt("benchmarks/bench_perf.py", args, PERF_DEFAULTS))
        + " (rebuilt from the arguments the file records; documented usage: "
        + _code(DOCUMENTED["perf"])
        + ")"
    )
    parts = []
    if data.get("forward_cost"):
        parts.append(_forward_cost(data["forward_cost"], args))
    if data.get("peers"):
        parts.append(_peers(data["peers"], args))
    if data.get("growth"):
        parts.append(_growth(data["growth"], args))
    if data.get("pairs_cost"):
        parts.append(_pairs_cost(data["pairs_cost"]))
    title = {
        "perf-cpu-forward": "Forward-only cost against the forward (CPU)",
        "perf-cpu-peers": "All pairs against the peers (CPU)",
        "perf-cpu-growth": "Cost growth with the gallery (CPU)",
    }.get(path.stem, f"Performance: {path.stem}")
    text = _header(
        title,
        path,
        _date(path),
        _machine(data),
        command,
        "Timings are medians of the repeats the arguments give; peak memory "
        "is as `benchmarks/bench_perf.py` reads it (on CUDA, the device's "
        "peak in the timing process).",
    )
    return text + "\n".join(parts)


def _forward_cost(rows: List[Dict[str, Any]], args: Dict[str, Any]) -> str:
    text = (
        f"## Forward-only cost\n\n{args.get('model')} at {args.get('size')} px, "
        "B queries against 1 support; the baselines are `torch.no_grad()` "
        "forwards of the same images up to the layer, the queries and the "
        "support apart, or in one batch of B + 1 as `LayerSFAM` runs them.\n\n"
    )
    body = []
    for row in rows:
        sfam, apart = row["sfam"], row["forward"]
        one = row.get("forward_one_batch")
        body.append(
            (
                row["layer"],
                row["batch"],
                row.get("precision", "fp32"),
                _ms(sfam["median_s"]),
                f"{sfam['median_s'] / apart['median_s']:.2f}",
                f"{sfam['median_s'] / one['median_s']:.2f}" if one else "—",
                f"{sfam['peak_bytes'] / MIB:.0f} MiB",
                f"{sfam['peak_bytes'] / apart['peak_bytes']:.2f}",
                f"{sfam['peak_bytes'] / one['peak_bytes']:.2f}" if one else "—",
            )
        )
    return text + _table(
        ["layer", "B", "precision", "SFAM time", "time vs apart",
         "time vs one batch", "SFAM peak", "peak vs apart", "peak vs one batch"],
        body,
    )  # fmt: skip


PEERS = (
    ("sfam_pairs", "LayerSFAM.attribute_pairs"),
    ("simgradcam_pairs", "LayerSimilarityGradCam.attribute_pairs"),
    ("captum_gradcam", "Captum LayerGradCam + SimilarityTarget"),
    ("pgc_gradcam", "pytorch-grad-cam GradCAM"),
)


def _peers(rows: List[Dict[str, Any]], args: Dict[str, Any]) -> str:
    text = (
        f"## Against the peers\n\n{args.get('peer_model')} at "
        f"{args.get('peer_size')} px, explaining every query against every "
        "gallery image; the peers get one batched forward+backward of the Q·M "
        "pairs and embed the gallery inside the timed call. Each cell: median "
        "time, peak memory.\n\n"
    )
    present = [(k, label) for k, label in PEERS if any(k in r for r in rows)]
    body = []
    for row in rows:
        cells = [f"{row['queries']} × {row['gallery']}"]
        for key, _ in present:
            m = row.get(key)
            cells.append(
                f"{_ms(m['median_s'])}, {m['peak_bytes'] / MIB:.0f} MiB" if m else "—"
            )
        body.append(cells)
    return text + _table(["Q × M"] + [label for _, label in present], body)


def _growth(rows: List[Dict[str, Any]], args: Dict[str, Any]) -> str:
    text = (
        f"## Growth with the gallery\n\n`attribute_pairs` of {args.get('queries')} "
        f"queries against M gallery images, {args.get('peer_model')} at "
        f"{args.get('peer_size')} px.\n\n"
    )
    body = [
        (r["gallery"], _ms(r["median_s"]), f"{r['peak_bytes'] / MIB:.0f} MiB")
        for r in rows
    ]
    return text + _table(["gallery M", "time", "peak memory"], body)


def _pairs_cost(rows: List[Dict[str, Any]]) -> str:
    body = [[json.dumps(r, sort_keys=True)] for r in rows]
    return "## All pairs against the forwards\n\n" + _table(["record"], body)


RETRIEVAL_TITLES = {
    "growth": "Growth with the gallery (one process per size)",
    "processes": "One process against two (torchrun, gloo)",
    "photos": "Real photos",
}


def retrieval(path: Path, data: Dict[str, Any]) -> str:
    text = _header(
        "Whole retrieval runs (CPU)",
        path,
        _date(path),
        "per part, below (recorded in the file)",
        "per part, below (recorded in the file)",
        "`benchmarks/bench_retrieval.py`: synthetic 64 px images made on the "
        "fly, a small CNN, SFAM, 64 queries, k = 5, batch 32 (growth, "
        "processes), and a real-photo gallery (photos). 'Search + maps' is the "
        "time after the gallery's embedding; 'RSS growth' how much the "
        "process's memory grew during the run.",
    )
    for part, record in data.items():
        text += f"## {RETRIEVAL_TITLES.get(part, part)}\n\n"
        text += f"- **Command:** `{record.get('command', 'not recorded')}`\n"
        text += f"- **Versions:** torch {record.get('torch', 'not recorded')}, "
        text += f"{record.get('threads', '?')} torch thread(s) per process\n\n"
        result = record.get("result")
        if isinstance(result, list):
            body = [
                (
                    f"{r['gallery']:,}",
                    r["processes"],
                    _ms(r["seconds"]),
                    _ms(r["gallery_embedding_s"]),
                    _ms(r["queries_s"]),
                    f"{r['explain_pair_maps_per_s']:,.0f}",
                    f"{r['peak_rss_mib_per_process']:.0f} MiB",
                    f"{r['run_rss_increase_mib']:.0f} MiB",
                )
                for r in result
            ]
            text += _table(
                ["gallery M", "processes", "whole run", "gallery embedding",
                 "search + maps", "pair maps/s (search + maps)",
                 "peak RSS per process", "RSS growth"],
                body,
            )  # fmt: skip
        elif isinstance(result, dict) and "command" not in result:
            # run-vs-limit and FAISS parts: every recorded value, flattened
            text += f"Recorded on {record.get('date', 'an unrecorded date')}.\n\n"
            rows = [(k, json.dumps(v)) for k, v in result.items()]
            text += _table(["measure", "value"], rows)
        elif isinstance(result, dict):
            metrics = result.get("metrics", {})
            rows = [
                ("queries", result.get("queries")),
                ("gallery", result.get("gallery")),
                ("top-1 is the query's own photo", result.get("top1_own_photo")),
                ("run time", _ms(result.get("seconds", 0.0))),
            ] + [(k, v) for k, v in metrics.items()]
            text += f"Run: `{result.get('command', '')}`\n\n"
            text += _table(["measure", "value"], rows)
        text += "\n"
    return text


QUALITY_COLUMNS = (
    ("iou", "IoU %", 100, 1), ("acc50", "Acc@0.5 %", 100, 1),
    ("pointing", "Point %", 100, 1), ("specificity", "Spec.", 1, 3),
    ("shift", "Shift", 1, 3), ("deletion", "Del AUC", 1, 3),
    ("insertion", "Ins AUC", 1, 3), ("c_deletion", "Δ Del AUC", 1, 3),
    ("c_insertion", "Δ Ins AUC", 1, 3),
)  # fmt: skip
SETTING_TITLES = {
    "fewshot": "(a) Euclidean ProtoNet, 5-way 1-shot episodes",
    "retrieval": "(b) Cosine multi-similarity model, top-1 retrieval pairs",
    "photos": "(c) ImageNet EfficientNet-Lite0, two-object photo composites",
    "correspondence": "(d) Point-to-point correspondences, PCK at one cell",
}


MODEL_FACTS = {
    "accuracy_5way_1shot": "5-way 1-shot accuracy on the unseen test classes",
    "recall_at_1": "Recall@1 on the unseen test classes",
}


def _num(value: Any, scale: float, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value * scale:.{digits}f}"


def quality(path: Path, data: Dict[str, Any]) -> str:
    args = data.get("args", {})
    flags = []
    for key in ("episodes", "pairs", "scenes", "photo_pairs", "pck_photos",
                "steps", "train_steps", "seed"):  # fmt: skip
        if key in args:
            flags.append(f"--{key.replace('_', '-')} {args[key]}")
    command = (
        "`captum-sfam bench " + " ".join(flags) + "` (rebuilt from the "
        "arguments the file records; the documented command is "
        "`captum-sfam bench --out bench-results`)"
    )
    seconds = data.get("seconds")
    text = _header(
        "Quality benchmark",
        path,
        _date(path),
        "not recorded in the file",
        command,
        "Every member plus Captum's `LayerGradCam` and `IntegratedGradients` "
        "through `SimilarityTarget`, on data with ground truth; see "
        "[Evaluation](../../evaluation.md) for the protocol and the columns."
        + (f" The run took {seconds:.0f} s." if seconds else ""),
    )
    for key, setting in data.get("settings", {}).items():
        text += f"## {SETTING_TITLES.get(key, key)}\n\n"
        model = setting.get("model", {})
        facts = []
        for name, value in model.items():
            if isinstance(value, float):
                label = MODEL_FACTS.get(name, name.replace("_", " "))
                facts.append(f"{label}: {value * 100:.1f} %")
            elif isinstance(value, list):
                facts.append(f"{name}: {', '.join(map(str, value))}")
        if facts:
            text += "Model: " + "; ".join(facts) + ".\n\n"
        methods = setting.get("methods", {})
        if key == "correspondence":
            transforms = ("flip", "crop", "rescale", "pck")
            body = [
                [name] + [_num(m.get(t), 100, 1) for t in transforms]
                for name, m in methods.items()
            ]
            text += _table(
                ["member (reading)", "flip", "crop", "rescale", "mean"], body
            )
        else:
            cols = [c for c in QUALITY_COLUMNS if any(
                m.get(f"{c[0]}_n") for m in methods.values()
            )]  # fmt: skip
            body = [
                [name] + [_num(m.get(k), s, d) for k, _, s, d in cols]
                for name, m in methods.items()
            ]
            first = next(iter(methods.values()), {})
            counts = [f"{label}: n = {first.get(f'{k}_n')}" for k, label, _, _ in cols]
            text += _table(["method"] + [label for _, label, _, _ in cols], body)
            text += "\nSamples per column (first row): " + "; ".join(counts) + ".\n"
        text += "\n"
    return text


def markdown_record(path: Path) -> str:
    """A table the reading studies record as Markdown, shown as it is."""
    stem = path.stem
    body = path.read_text()
    # a cell holding "|.|" (an absolute value) would split the table
    body = body.replace("|.|", "\\|.\\|")
    lines: List[str] = []
    for line in body.splitlines():
        if line.startswith("(") and line.endswith(" s)"):
            line = f"\nRun time: {line[1:-1]}.\n"
        elif line.startswith("|") and lines and not lines[-1].startswith("|"):
            lines.append("")  # a table starts a block of its own
        lines.append(line)
    title = {
        "contrast-readings": "Contrastive readings (pair specificity)",
        "correspondence-readings": "Correspondence readings (PCK on mirrored photos)",
    }.get(stem, stem)
    header = _header(
        title,
        path,
        _date(path),
        "not recorded in the file",
        _code(DOCUMENTED.get(stem, "not recorded"))
        + " (the script's documented command; the file records none)",
        "Recorded by the script as Markdown; shown as it is.",
    )
    return header + "\n".join(lines) + "\n"


# -------------------------------------------------------------- the pages ----
def _renderer(path: Path) -> Callable[[Path, Dict[str, Any]], str]:
    if path.stem.startswith("dispatch"):
        return dispatch
    if path.stem.startswith("perf"):
        return perf
    if path.stem.startswith("retrieval"):
        return retrieval
    if path.parent.name == "quality":
        return quality
    return _generic


def _generic(path: Path, data: Any) -> str:
    versions = _machine(data) if isinstance(data, dict) else "not recorded"
    command = "not recorded"
    if isinstance(data, dict) and isinstance(data.get("command"), str):
        command = _code(data["command"])
    text = _header(path.stem, path, _date(path, data), versions, command, "")
    return text + "```json\n" + json.dumps(data, indent=1)[:20000] + "\n```\n"


def result_files() -> List[Path]:
    files = sorted(RESULTS.glob("*.json")) + sorted(RESULTS.glob("*.md"))
    quality_json = RESULTS / "quality" / "bench.json"
    if quality_json.is_file():
        files.append(quality_json)
    return files


def page_name(path: Path) -> str:
    return "quality.md" if path.parent.name == "quality" else f"{path.stem}.md"


def render(path: Path) -> Tuple[str, str]:
    """(page file name, page text) of one result file."""
    if path.suffix == ".md":
        return page_name(path), markdown_record(path)
    data = json.loads(path.read_text())
    return page_name(path), _renderer(path)(path, data)


def generate(outdir: Path) -> None:
    """Write one Markdown page per result set of benchmarks/results into
    ``outdir`` (created; earlier pages there are replaced)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("*.md"):
        old.unlink()
    for path in result_files():
        name, text = render(path)
        (outdir / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/benchmarks/generate.py OUTDIR")
    generate(Path(sys.argv[1]))
