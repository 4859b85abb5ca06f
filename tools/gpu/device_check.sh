#!/bin/bash
# Run ON THE DEVICE MACHINE (the `device` tool: run with carry [".devcarry"], command
# `bash tools/gpu/device_check.sh`, timeout_s ~480) after tools/gpu/prepare.sh.  Each check runs in
# its own process: one CUDA fault poisons a process's CUDA context and fails all that follows.
# Logs go to $OUT/logs.tar.gz (the tool returns at most 8 files).
set -u
T0=$(date +%s); el() { echo "[t=$(( $(date +%s) - T0 ))s] $*"; }
mkdir -p /tmp/site /tmp/pkg/dreamcloth /tmp/logs
python3 -m zipfile -e .devcarry/whl/taichi-slim.zip /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devcarry/whl/*.whl
for d in taichi_mpm render prior cli benchmarks; do ln -sfn "$PWD/$d" /tmp/pkg/dreamcloth/$d; done
export PYTHONPATH=/tmp/pkg:/tmp/site TI_SKIP_VERSION_CHECK=ON ENABLE_TAICHI_HEADER_PRINT=0 PYTHONUNBUFFERED=1 \
  HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
el setup
if [ -d .devcarry/dgr ]; then  # the official rasterizer; that image's GCC needs <cstdint> in one header
  ( cd .devcarry/dgr && grep -q '<cstdint>' cuda_rasterizer/rasterizer_impl.h || sed -i '1i #include <cstdint>' cuda_rasterizer/rasterizer_impl.h
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=8 timeout 300 python3 -m pip install --no-build-isolation --no-deps --no-index -q \
      --target /tmp/dgr . ) > /tmp/logs/dgr_build.log 2>&1 &
fi
PT="python3 -m pytest -p no:cacheprovider -q -n 0 -rs -s --timeout 300"
run() { local name=$1; shift; ( timeout 240 "$@" > /tmp/logs/$name.log 2>&1; echo "rc=$?" >> /tmp/logs/$name.log ) & }
run sim $PT tests/taichi_mpm/test_cuda.py
run forces $PT "tests/taichi_mpm/test_cloth_forces.py::test_bending_forces_on_cuda_equal_the_cpu"
run prior $PT "tests/prior/test_sds_contract.py::test_half_precision_on_cuda_gives_the_fp32_pixel_gradient"
run raster $PT "tests/render/test_rasterize.py::test_portable_backend_on_cuda_matches_the_reference"
# the float32 CPU gradients that were NaN on this machine's CPU (2026-12-04), next to float64's
run cpu32 python3 -c "
import sys, torch; sys.path.insert(0, '.')
from tests.taichi_mpm.test_cuda import _cloth_run
for dt in (torch.float32, torch.float64):
    print('cpu', dt, _cloth_run('cpu', dt)[1].tolist())"
wait
el tests
export PYTHONPATH=$PYTHONPATH:/tmp/dgr
run silhouette $PT tests/render/test_silhouette.py -k gpu
run cuda_backend $PT tests/render/test_cuda_backend.py
wait
run fit python3 tools/gpu/fit_cuda.py cuda /tmp/fitgpu
wait
run bench python3 -c "
from dreamcloth.benchmarks.bench_mpm import speed
for m in speed(False, device='cuda'): print(m)"
wait
el done
for f in /tmp/logs/*.log; do echo "== $f"; grep -E "passed|failed|rc=|cosine|relative|cpu torch|FIT|Measurement|Error" "$f" | tail -8; done
tar -czf $OUT/logs.tar.gz -C /tmp logs
