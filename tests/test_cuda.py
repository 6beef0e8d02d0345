"""GPU behaviour (issue 12): skipped without a CUDA device.

Run on a GPU machine with ``bash benchmarks/gpu_checks.sh`` (these tests, the
other CUDA tests and the GPU benchmark table in one command). What CPU tests
cannot show: maps come back on the inputs' device through DataParallel, at
most one host synchronisation per call (``torch.cuda.set_sync_debug_mode``
reports every synchronising op), bf16 autocast and channels_last on CUDA
kernels.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from helpers import TinyCNN, images
from torch import nn

from captum_sfam import LayerSFAM
from captum_sfam.methods import REGISTRY

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"
)
MEMBERS = list(REGISTRY.values())


def metric_of(member):
    return "cosine" if "cosine" in member.supported_metrics else "euclidean"


def correlation(a, b):
    a, b = a.flatten(1).float(), b.flatten(1).float()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_data_parallel_maps_come_back_on_the_inputs_device():
    model = TinyCNN().eval()
    q, s = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=3)
    direct = LayerSFAM(model, model.features).attribute(q, s)
    gpu_model = copy.deepcopy(model).cuda()
    dp = nn.DataParallel(gpu_model)
    maps = LayerSFAM(dp, gpu_model.features).attribute(q.cuda(), s.cuda())
    assert maps.device.type == "cuda"
    torch.testing.assert_close(maps.cpu(), direct, rtol=1e-3, atol=1e-4)
    ids = LayerSFAM(gpu_model, gpu_model.features, device_ids=[0])
    maps = ids.attribute(q.cuda(), s.cuda())
    assert maps.device.type == "cuda"
    torch.testing.assert_close(maps.cpu(), direct, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: m.key)
def test_at_most_one_host_synchronisation_per_call(member):
    """set_sync_debug_mode("warn") warns at every op that waits for the GPU."""
    model = TinyCNN(channels=16).eval().cuda()
    method = member.cls(model, model.features, metric=metric_of(member))
    q, s = images(4, 3, 16, 16).cuda(), images(2, 3, 16, 16, seed=1).cuda()
    method.attribute(q, s)  # warm-up: first-call hooks, lazy inits
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            maps = method.attribute(q, s)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]
    assert maps.device.type == "cuda" and torch.isfinite(maps).all()


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: m.key)
def test_bf16_autocast_on_cuda_follows_fp32(member):
    model = TinyCNN(channels=16).eval().cuda()
    method = member.cls(model, model.features, metric=metric_of(member))
    q, s = images(2, 3, 16, 16).cuda(), images(2, 3, 16, 16, seed=1).cuda()
    plain = method.attribute(q, s)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        maps = method.attribute(q, s)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert bool((correlation(maps, plain) > 0.98).all())


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: m.key)
def test_channels_last_on_cuda_gives_the_same_maps(member):
    model = TinyCNN().eval().cuda()
    q, s = images(2, 3, 16, 16).cuda(), images(2, 3, 16, 16, seed=1).cuda()
    plain = member.cls(model, model.features, metric=metric_of(member)).attribute(q, s)
    cl = torch.channels_last
    fast = copy.deepcopy(model).to(memory_format=cl)
    maps = member.cls(fast, fast.features, metric=metric_of(member)).attribute(
        q.contiguous(memory_format=cl), s.contiguous(memory_format=cl)
    )
    torch.testing.assert_close(maps, plain, atol=1e-4, rtol=1e-3)


def test_all_pairs_on_cuda_match_the_cpu():
    model = TinyCNN().eval()
    q, g = images(3, 3, 16, 16), images(5, 3, 16, 16, seed=1)
    cpu = LayerSFAM(model, model.features, metric="cosine").attribute_pairs(q, g)
    gpu_model = copy.deepcopy(model).cuda()
    gpu = LayerSFAM(gpu_model, gpu_model.features, metric="cosine").attribute_pairs(
        q.cuda(), g.cuda()
    )
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4)
