"""explain_retrieval under torchrun: 2 gloo processes give the 1-process run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from captum_sfam.retrieval import load_maps, read_results
from captum_sfam.retrieval.distributed import Context, assemble_rows

TESTS = Path(__file__).parent

JOB = f"""
import sys
import torch
sys.path.insert(0, {str(TESTS)!r})
from helpers import TinyCNN
from captum_sfam.retrieval import explain_retrieval, init_distributed


def main(out):
    init_distributed()
    torch.set_num_threads(1)
    model = TinyCNN(channels=6, embed=5).eval()
    gen = torch.Generator().manual_seed(0)
    # 7 queries in 4 batches of 2 and 13 gallery images in 7 batches: the
    # ranks get uneven shares of both
    queries = torch.rand(7, 3, 16, 16, generator=gen)
    gallery = torch.rand(13, 3, 16, 16, generator=gen)
    explain_retrieval(
        model, model.features, queries, gallery, out, "sfam", k=3,
        metric="cosine", batch_size=2, query_labels=[i % 3 for i in range(7)],
        gallery_labels=[i % 3 for i in range(13)], report=True,
    )


if __name__ == "__main__":
    main(sys.argv[1])
"""


def test_two_processes_equal_one(tmp_path):
    job = tmp_path / "job.py"
    job.write_text(JOB)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = tmp_path / "two"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node=2", str(job), str(two),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    # the one-process run, in this process
    spec = importlib.util.spec_from_file_location("retrieval_job", job)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    one = tmp_path / "one"
    module.main(one)

    records_one, records_two = list(read_results(one)), list(read_results(two))
    assert len(records_one) == len(records_two) == 7
    for a, b in zip(records_one, records_two):
        assert [n["index"] for n in a["neighbours"]] == [
            n["index"] for n in b["neighbours"]
        ]
        for x, y in zip(a["neighbours"], b["neighbours"]):
            assert x["similarity"] == pytest.approx(y["similarity"], abs=1e-6)
        assert a["metrics"] == b["metrics"]
        maps_one, maps_two = load_maps(one, a), load_maps(two, b)
        assert maps_one.keys() == maps_two.keys()
        for key in maps_one:
            torch.testing.assert_close(maps_one[key], maps_two[key], rtol=0, atol=1e-3)
    summary_one = json.loads((one / "summary.json").read_text())
    summary_two = json.loads((two / "summary.json").read_text())
    assert summary_two["world_size"] == 2 and summary_one["world_size"] == 1
    assert summary_one["metrics"] == summary_two["metrics"]
    # each rank wrote its own query batches (round-robin: 0, 2 and 1, 3)
    ranks = {}
    for shard in sorted((two / "maps").glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            ranks[shard.name] = handle.metadata()["rank"]
    assert list(ranks.values()) == ["0", "1", "0", "1"]
    # the gathered gallery embeddings equal the one-process ones
    with safe_open(str(one / "gallery_embeddings.safetensors"), "pt") as a:
        with safe_open(str(two / "gallery_embeddings.safetensors"), "pt") as b:
            torch.testing.assert_close(
                a.get_tensor("embeddings"), b.get_tensor("embeddings")
            )
    assert (two / "index.html").is_file()


def test_assemble_rows_in_one_process_is_the_packed_buffer():
    packed = torch.arange(27.0).reshape(9, 3)
    out = assemble_rows(Context(), packed, [2, 2, 2, 2, 1], 3)
    assert out.data_ptr() == packed.data_ptr()  # no second copy of the table
    assert assemble_rows(Context(), None, [], 4).shape == (0, 4)
    assert Context(rank=1, world_size=3).mine(8) == [1, 4, 7]
