#!/usr/bin/env bash
# CMake build of the C++/CUDA ops (CMakeLists.txt) and its ctest.
#   .ci/cmake_build.sh cpu    C++ ops + tests, run with ctest
#   .ci/cmake_build.sh cuda   the same with csrc/ops/cuda/*.cu compiled by nvcc
#                             (compile only where there is no GPU; ctest runs
#                             the host-side tests)
# Environment: PYTHON (a python with torch; default .venv/bin/python, else
# python3), CUDACXX or NVCC (default: nvcc on PATH, /usr/local/cuda/bin/nvcc,
# /usr/local/cuda-13.0/bin/nvcc), BUILD_DIR (default build-cmake, build/cmake-cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-cpu}
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
python=$("$python" -c 'import sys; print(sys.executable)')
jobs=$(nproc 2>/dev/null || echo 2)

case "$mode" in
  cpu)
    build=${BUILD_DIR:-build-cmake}
    cmake -S . -B "$build" -DCMAKE_PREFIX_PATH="$prefix" -DPython3_EXECUTABLE="$python"
    ;;
  cuda)
    build=${BUILD_DIR:-build/cmake-cuda}
    nvcc=${CUDACXX:-${NVCC:-}}
    if [ -z "$nvcc" ]; then
      for candidate in "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc /usr/local/cuda-13.0/bin/nvcc; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then nvcc=$candidate; break; fi
      done
    fi
    [ -n "$nvcc" ] || { echo "cmake_build.sh: nvcc not found (set CUDACXX)"; exit 1; }
    cmake -S . -B "$build" -DCMAKE_PREFIX_PATH="$prefix" -DPython3_EXECUTABLE="$python" \
      -DMZSR_FAST_WITH_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc"
    ;;
  *)
    echo "usage: $0 cpu|cuda"; exit 2 ;;
esac

cmake --build "$build" -j"$jobs"
ctest --test-dir "$build" --output-on-failure
