#!/usr/bin/env bash
# Issue 12's GPU checks in one command, for a machine with a CUDA device:
# the CUDA tests (maps on the inputs' device through DataParallel, at most one
# host synchronisation per call, bf16 autocast and channels_last on CUDA
# kernels, CUDA maps equal to CPU maps) and the GPU table of
# benchmarks/bench_perf.py (B = 1, 8, 64, 256, layer3/layer4, fp32/bf16,
# attribute_pairs of 64 x 2,048 against the Q + M forwards).
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]      # default: gpu-results/
#
# Needs torch with CUDA, captum, torchvision, pytest and hypothesis; runs the
# package from this checkout (PYTHONPATH), so no install of it is needed. On a
# machine without captum and without a package index, bring its wheel (pure
# Python): `pip download --no-deps captum==0.9.0 -d .whl` where pip works, then
# there `pip install --no-deps --target /tmp/site .whl/captum-*.whl` and
# `export PYTHONPATH=/tmp/site` before this script.
# Writes OUT_DIR/tests.log, OUT_DIR/bench.log and OUT_DIR/perf-cuda.json;
# copy the JSON to benchmarks/results/ and the table into the README.
# Time limits (seconds) for each part: TESTS_TIMEOUT (300), BENCH_TIMEOUT (420).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'EOF' || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(torch.__version__, torch.cuda.get_device_name(0))
EOF
timeout "${TESTS_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider \
    tests/test_cuda.py tests/test_engine.py tests/test_contract.py \
    -k "cuda or data_parallel" 2>&1 | tee "$out/tests.log"
tests=${PIPESTATUS[0]}
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/bench_perf.py --device cuda \
    --gpu --out "$out/perf-cuda.json" 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, bench exit $bench"
exit $(( tests != 0 || bench != 0 ))
