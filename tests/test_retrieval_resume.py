"""No lost work: unreadable images, runs killed and resumed, damaged files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyCNN
from PIL import Image
from safetensors import safe_open

from captum_sfam.retrieval import ImageFiles, explain_retrieval, read_results, stages
from captum_sfam.retrieval import gallery as gallery_module
from captum_sfam.retrieval.data import image_problem

TESTS = Path(__file__).parent
SIZE = 16


def read_png(path: Path) -> torch.Tensor:
    """The tests' reader: a (3, 16, 16) tensor in [0, 1]."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB").resize((SIZE, SIZE)), np.float32)
    return torch.from_numpy(array / 255).permute(2, 0, 1)


def photo_folder(root: Path, count: int, seed: int, labels: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"c{i % labels}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        kind = "png" if i % 2 else "jpg"
        Image.fromarray(pixels).save(folder / f"{i:03d}.{kind}")
    return root


def spoil(root: Path) -> dict:
    """The three unreadable files of the issue, added to ``root``."""
    good = next(root.rglob("*.png")).read_bytes()
    bad = {
        "c0/truncated.png": good[: len(good) // 2],
        "c1/empty.jpg": b"",
        "c2/text.jpg": b"not an image\n",
    }
    for name, data in bad.items():
        (root / name).write_bytes(data)
    return bad


def run_files(queries: Path, gallery: Path, out: Path, **options):
    model = options.pop("model", None) or TinyCNN(channels=6, embed=5).eval()
    options = {"k": 3, "batch_size": 4, "report": False, **options}
    return explain_retrieval(
        model, model.features, ImageFiles.from_folder(queries, read_png),
        ImageFiles.from_folder(gallery, read_png), out, "sfam", **options,
    )  # fmt: skip


def _content(path: Path):
    """A file's bytes; a safetensors file's metadata and tensors' bytes (its
    header orders the metadata as it likes)."""
    if path.suffix != ".safetensors":
        return path.read_bytes()
    with safe_open(str(path), framework="pt") as handle:
        tensors = {n: handle.get_tensor(n) for n in sorted(handle.keys())}
        found = [handle.metadata()]
    for name, tensor in tensors.items():
        found.append((name, tensor.dtype, tuple(tensor.shape)))
        found.append(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return found


def snapshot(out: Path) -> dict:
    """Every file a finished run leaves (name -> content), the summary aside
    (it holds timings)."""
    return {
        p.relative_to(out).as_posix(): _content(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("summary.json",)
    }


@pytest.fixture
def folders(tmp_path):
    return (
        photo_folder(tmp_path / "queries", 6, 1),
        photo_folder(tmp_path / "gallery", 22, 2),
    )


@pytest.fixture
def reference(folders, tmp_path):
    """An uninterrupted run, with gallery chunks of one batch."""
    out = tmp_path / "reference"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gallery_module, "CHUNK_ROWS", 4)
        run_files(*folders, out)
    return snapshot(out)


# ------------------------------------------------------- unreadable files ---
def test_image_problem_names_each_kind_of_unreadable_file(tmp_path):
    root = photo_folder(tmp_path, 3, 0)
    spoil(root)
    jpeg = (root / "c0/000.jpg").read_bytes()
    (root / "c0/cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    assert image_problem(root / "c0/000.jpg") is None
    assert image_problem(root / "c1/001.png") is None
    assert "Truncated" in image_problem(root / "c0/truncated.png")
    assert image_problem(root / "c1/empty.jpg") == "empty file"
    assert "cannot identify" in image_problem(root / "c2/text.jpg")
    assert "truncated" in image_problem(root / "c0/cut.jpg").lower()


def test_unreadable_images_are_left_out_listed_and_counted(folders, tmp_path):
    queries, gallery = folders
    spoil(gallery)
    (queries / "c0" / "empty.png").write_bytes(b"")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="4 unreadable image file") as caught:
        run = run_files(queries, gallery, out)
    assert "summary.json" in str(caught[-1].message)
    summary = json.loads((out / "summary.json").read_text())
    listed = {(s["source"], Path(s["id"]).name) for s in summary["skipped_images"]}
    assert listed == {
        ("queries", "empty.png"), ("gallery", "truncated.png"),
        ("gallery", "empty.jpg"), ("gallery", "text.jpg"),
    }  # fmt: skip
    assert all(s["reason"] for s in summary["skipped_images"])
    assert run.skipped == summary["skipped_images"]
    records = list(read_results(out))
    assert len(records) == 6 and summary["gallery"] == 22
    named = {n["id"] for r in records for n in r["neighbours"]}
    assert not any("empty" in n or "text" in n or "truncated" in n for n in named)


def test_strict_refuses_unreadable_images_before_any_embedding(folders, tmp_path):
    queries, gallery = folders
    spoil(gallery)
    model = TinyCNN(channels=6, embed=5).eval()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match="strict=True: 3 unreadable.*empty.jpg"):
        run_files(queries, gallery, tmp_path / "run", model=model, strict=True)
    assert calls == [] and not (tmp_path / "run").exists()


def test_cli_skips_unreadable_images_and_strict_exits_2(folders, tmp_path, capsys):
    from captum_sfam.app import cli

    queries, gallery = folders
    spoil(gallery)
    factory = tmp_path / "tiny.py"
    factory.write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom helpers import TinyCNN\n"
        "def make():\n    return TinyCNN(channels=6, embed=5)\n"
    )
    argv = [
        "retrieve", str(queries), str(gallery), "--top-k", "2", "--size", "32",
        "--out", str(tmp_path / "run"), "--no-progress", "--no-report",
        "--batch-size", "8", "--model", f"{factory}:make", "--layer", "features",
    ]  # fmt: skip
    with pytest.warns(UserWarning, match="3 unreadable"):
        assert cli.main(argv) == 0
    assert "3 unreadable image file(s) left out" in capsys.readouterr().err
    assert cli.main([*argv, "--strict", "--restart"]) == 2
    assert "strict=True: 3 unreadable" in capsys.readouterr().err


# ------------------------------------------------------- killed and rerun ---
class Killed(RuntimeError):
    pass


def _fail_after(function, calls: int):
    done = []

    def wrapper(*args, **kwargs):
        if len(done) == calls:
            raise Killed(f"killed after {calls} calls")
        done.append(1)
        return function(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize(
    "target, calls",
    [
        ("gallery._embed_chunk", 0),  # before any gallery chunk
        ("gallery._embed_chunk", 3),  # in the middle of the gallery
        ("stages.explain_batch", 0),  # the gallery done, no query batch
        ("stages.explain_batch", 1),  # one query batch done
        ("stages.write_lines", 1),  # batch 1's shard written, not its part
        ("stages.merge_results", 0),  # every batch done, nothing merged
    ],
)
def test_a_run_killed_then_rerun_equals_an_uninterrupted_run(
    folders, reference, tmp_path, target, calls
):
    out = tmp_path / "run"
    module, name = target.split(".")
    owner = {"gallery": gallery_module, "stages": stages}[module]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gallery_module, "CHUNK_ROWS", 4)
        patch.setattr(owner, name, _fail_after(getattr(owner, name), calls))
        with pytest.raises(Killed):
            run_files(*folders, out)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gallery_module, "CHUNK_ROWS", 4)
        run_files(*folders, out)
    assert snapshot(out) == reference


def test_a_resumed_gallery_embeds_only_the_missing_chunks(folders, tmp_path):
    out = tmp_path / "run"
    embedded = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gallery_module, "CHUNK_ROWS", 4)
        chunk = gallery_module._embed_chunk
        patch.setattr(gallery_module, "_embed_chunk", _fail_after(chunk, 4))
        with pytest.raises(Killed):
            run_files(*folders, out)
        assert len(list((out / "gallery").iterdir())) == 4  # 4 of 6 chunks

        def counting(settings, numbers, path):
            embedded.append(numbers)
            chunk(settings, numbers, path)

        patch.setattr(gallery_module, "_embed_chunk", counting)
        run_files(*folders, out)
    assert embedded == [[4], [5]] and not (out / "gallery").exists()


KILLED_JOB = """
import sys, time, torch
sys.path.insert(0, {tests!r})
from helpers import TinyCNN
from test_retrieval_resume import run_files

class Slow(TinyCNN):
    def forward(self, x):
        time.sleep(0.15)
        return super().forward(x)

from captum_sfam.retrieval import gallery
gallery.CHUNK_ROWS = 4
run_files(*sys.argv[1:3], sys.argv[3], model=Slow(channels=6, embed=5).eval())
"""


def test_a_process_killed_by_sigkill_then_rerun_equals_an_uninterrupted_run(
    folders, reference, tmp_path
):
    out = tmp_path / "run"
    job = tmp_path / "job.py"
    job.write_text(KILLED_JOB.format(tests=str(TESTS)))
    command = [sys.executable, str(job), *map(str, folders), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "parts").is_dir() and any((out / "parts").glob("batch-*")):
            break  # the gallery is done and a query batch too: kill it now
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert not (out / "results.jsonl").exists()
    # a half-written file the kill may leave: removed by the rerun
    (out / "maps" / ".batch-000001.safetensors.tmp-99999").write_bytes(b"\0" * 9)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gallery_module, "CHUNK_ROWS", 4)
        run_files(*folders, out)
    assert snapshot(out) == reference


# ------------------------------------------------------- damaged files ------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damaged",
    ["parts/batch-000001.jsonl", "maps/batch-000000.safetensors",
     "gallery_embeddings.safetensors"],
)  # fmt: skip
def test_a_damaged_file_is_named_and_recomputed(folders, reference, tmp_path, damaged):
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gallery_module, "CHUNK_ROWS", 4)
        run_files(*folders, out)
        (out / "results.jsonl").unlink()  # as if the crash came before the end
        _truncate(out / damaged)
        with pytest.warns(UserWarning, match=damaged.replace(".", r"\.")):
            run_files(*folders, out)
    assert snapshot(out) == reference
    summary = json.loads((out / "summary.json").read_text())
    assert [r["file"] for r in summary["repaired"]] == [damaged]


def test_a_damaged_gallery_chunk_is_named_and_recomputed(folders, reference, tmp_path):
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gallery_module, "CHUNK_ROWS", 4)
        chunk = gallery_module._embed_chunk
        patch.setattr(gallery_module, "_embed_chunk", _fail_after(chunk, 3))
        with pytest.raises(Killed):
            run_files(*folders, out)
        patch.setattr(gallery_module, "_embed_chunk", chunk)
        damaged = out / "gallery/batches-000001-000001.safetensors"
        _truncate(damaged)
        with pytest.warns(UserWarning, match="batches-000001-000001.*embedding"):
            run_files(*folders, out)
    assert snapshot(out) == reference


def test_a_bit_flip_in_a_shard_fails_its_checksum(folders, reference, tmp_path):
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gallery_module, "CHUNK_ROWS", 4)
        run_files(*folders, out)
        shard = out / "maps/batch-000001.safetensors"
        data = bytearray(shard.read_bytes())
        data[-3] ^= 0xFF  # a map value, not the header
        shard.write_bytes(bytes(data))
        with pytest.warns(UserWarning, match="checksum differs"):
            run_files(*folders, out)
    assert snapshot(out) == reference


def test_a_system_list_naming_an_unreadable_image_says_so(folders, tmp_path):
    queries, gallery = folders
    spoil(gallery)
    names = [p.relative_to(queries).as_posix() for p in sorted(queries.rglob("*.*"))]
    lists = {name: ["c0/000.jpg", "c1/empty.jpg"] for name in names}
    with pytest.raises(ValueError, match=r"'c1/empty.jpg' is an unreadable image"):
        run_files(queries, gallery, tmp_path / "run", neighbours=lists, k=None)


def test_chunks_left_after_the_table_was_written_are_removed(
    folders, reference, tmp_path
):
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gallery_module, "CHUNK_ROWS", 4)
        patch.setattr(gallery_module, "_remove_chunks", lambda out: None)
        patch.setattr(stages, "explain_batch", _fail_after(stages.explain_batch, 0))
        with pytest.raises(Killed):  # killed between the table and the cleanup
            run_files(*folders, out)
    assert len(list((out / "gallery").iterdir())) == 6
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gallery_module, "CHUNK_ROWS", 4)
        run_files(*folders, out)
    assert snapshot(out) == reference
