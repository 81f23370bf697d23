#!/usr/bin/env bash
# The checks that need a GPU, prepared so that a lent GPU machine runs them in one call (README, "GPU checks").
#
#   bench/gpu.sh prepare   here, with `make setup` done: .gpu/ (git ignores it) gets the wheels the GPU
#                          machine's PyTorch image lacks (gsplat, zarr, jsonschema and what they need, at the
#                          versions of constraints.txt, for its Python 3.12), gsplat's garden harness and the
#                          tests' small bowling episode (that image has no pybullet to render it)
#   bench/gpu.sh run       on the GPU machine, .gpu/ carried along: installs the wheels, puts the harness where
#                          the tests look, runs the GPU tests (gsplat against the reference renderer; the
#                          tracking stage on CUDA against the CPU) and bench/tracking_speed.py on CUDA with each
#                          renderer; logs and JSON go to $OUT (bench/ where OUT is unset). gsplat builds its
#                          CUDA kernels on first use (nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."
# What the pipeline imports beyond the GPU image's packages, at constraints.txt's versions.
WHEELS=(zarr numcodecs donfig google-crc32c jsonschema jsonschema-specifications referencing rpds-py)
GSPLAT=gsplat==1.5.3  # not in constraints.txt: it is not installed where there is no CUDA
HARNESS=../shared/data/external/gsplat/test_garden.npz

case "${1:-}" in
prepare)
    test -x .venv/bin/python || { echo "bench/gpu.sh prepare: run make setup first" >&2; exit 2; }
    test -f "$HARNESS" || { echo "bench/gpu.sh prepare: $HARNESS is absent" >&2; exit 2; }
    rm -rf .gpu && mkdir -p .gpu/wheels
    pins=("$GSPLAT")
    for name in "${WHEELS[@]}"; do
        pins+=("$(grep -i -E "^${name}==" constraints.txt)") || { echo "constraints.txt has no $name" >&2; exit 2; }
    done
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/wheels "${pins[@]}"
    cp "$HARNESS" .gpu/
    .venv/bin/python -c 'import sys
from pathlib import Path
from pipeline.config import load_config
from tests.conftest import render_bowling_episode, small
render_bowling_episode(small(load_config("config.yaml")), Path(sys.argv[1]))' .gpu/episode
    du -sh .gpu
    ;;
run)
    out=${OUT:-bench}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    mkdir -p "$(dirname "$HARNESS")" && cp .gpu/test_garden.npz "$HARNESS"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_device.txt"
    status=0
    PIPELINE_TEST_BOWLING_EPISODE=.gpu/episode python3 -m pytest -q -rs -m gpu tests/test_splat.py \
        tests/test_tracking.py 2>&1 | tee "$out/gpu_tests.log" || status=1
    for backend in gsplat torch; do
        python3 bench/tracking_speed.py --device cuda --backend "$backend" \
            --out "$out/tracking_speed_cuda_$backend.json" 2>&1 | tee "$out/tracking_speed_cuda_$backend.log" || status=1
    done
    exit $status
    ;;
*)
    echo "usage: bench/gpu.sh prepare|run" >&2
    exit 2
    ;;
esac
