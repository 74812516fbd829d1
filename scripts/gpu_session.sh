#!/usr/bin/env bash
# Everything only a GPU can show, in one call on a lent GPU machine (a copy of the
# working tree, python3 with a CUDA torch and Triton, no network, results only
# from $OUT: at most 8 files of at most 16 MiB):
#   1. build the extension with CUDA; FAIL LOUDLY (exit 1, FATAL in summary.txt)
#      when mzsr_fast._C, its CUDA kernels or a Triton module is not usable
#      (the other steps still run, to use the lease: their skips are explained);
#   2. the GPU tests first (every test whose id names cuda, triton or graph),
#      then the rest of the suite, each test under a time limit;
#   3. the GPU benchmark variants (JSON);
#   4. for the rest of the lease, continue the meta-training runs
#      training/metaref_direct_x2 (60%) and training/metaref_bicubic_x2 with
#      the settings of their config.json (both second order) on the training
#      subset (--resume-or-start: from their newest checkpoint, or from their
#      init when they have none yet);
#   5. pack everything into at most 8 files in $OUT: summary.txt, logs.tar.gz,
#      benchmarks-DEVICE-DATE.json, and one training-RUN.tar.gz per run.
# Steps past their time get SIGINT (never SIGTERM), so pytest prints its summary,
# pytest-benchmark writes its JSON and training saves a checkpoint; a step with
# no time left is skipped and reported, never run without a limit.
#
# Usage:
#   python scripts/prepare_gpu_data.py              # once, here: gpu_data/train (git-ignored)
#   run(command="bash scripts/gpu_session.sh --minutes 9", carry=["gpu_data"], timeout_s=600)
#   bash scripts/gpu_session.sh --dry-run           # the same steps on the CPU at tiny sizes
# Options: --minutes N (default 9), --data DIR (default gpu_data/train), --dry-run.
# Environment: OUT (where the packed files go; default out/gpu_session), PYTHON
# (default python3), MZSR_FAST_GPU_SESSION_RUNS (run folders to continue,
# space-separated; default the two above).
# The dry run (tests/test_gpu_session.py) uses the extension already built (it
# does not compile), runs Triton in the interpreter, a few quick tests and
# benchmarks, and a 1-iteration run made in a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."

minutes=9
data=gpu_data/train
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=${2:?--minutes needs a number}; shift 2 ;;
    --data) data=${2:?--data needs a folder}; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) echo "gpu_session.sh: unknown argument $1 (expected --minutes N, --data DIR, --dry-run)" >&2; exit 2 ;;
  esac
done
case "$minutes" in ''|*[!0-9]*) echo "gpu_session.sh: --minutes: expected a whole number, got $minutes" >&2; exit 2 ;; esac

py=${PYTHON:-python3}
out=${OUT:-out/gpu_session}
mkdir -p "$out"
stage=$(mktemp -d)
logs="$stage/logs"
mkdir -p "$logs"
start=$(date +%s)
deadline=$(( start + minutes * 60 - 25 ))  # 25 s kept for packing
left() { echo $(( deadline - $(date +%s) )); }
failed=0
note() { echo "$*" | tee -a "$stage/summary.txt"; }
fatal() { note "FATAL: $*"; failed=1; }

# run_limited NAME SECONDS LOG CMD...: CMD under a time limit that ends it with
# SIGINT (then SIGKILL 20 s later). Under 10 s left: skipped, never unlimited.
run_limited() {
  local name=$1 seconds=$2 log=$3
  shift 3
  if [ "$seconds" -lt 10 ]; then
    note "$name: SKIPPED, no time left (${seconds} s)"
    return 0
  fi
  local t0 rc
  t0=$(date +%s)
  timeout --signal=INT --kill-after=20 "$seconds" "$@" > "$log" 2>&1
  rc=$?
  local took=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    note "$name: stopped at its limit of ${seconds} s (SIGINT), exit $rc"
  else
    note "$name: exit $rc in ${took} s"
  fi
  return "$rc"
}

# The last line of log LOG matching PATTERN, indented into summary.txt (nothing
# when the step was skipped and wrote no log).
result_line() {
  local line
  [ -f "$1" ] && line=$(grep -E "$2" "$1" | tail -1 | sed 's/^=* *//; s/ *=*$//')
  [ -n "${line:-}" ] && note "  $line"
  return 0
}
pytest_summary='(passed|failed|error|skipped|no tests ran)'

pack() {
  local stamp device
  stamp=$(date -u +%Y-%m-%d)
  device=$(cat "$stage/device" 2>/dev/null || echo unknown)
  note "== done in $(( $(date +%s) - start )) s; failed=$failed"
  [ -f "$stage/benchmarks.json" ] && cp "$stage/benchmarks.json" "$out/benchmarks-$device-$stamp.json"
  for run_dir in "${trained[@]}"; do
    [ -d "$run_dir" ] && tar -czf "$out/training-$(basename "$run_dir").tar.gz" -C "$(dirname "$run_dir")" \
      "$(basename "$run_dir")"
  done
  tar -czf "$out/logs.tar.gz" -C "$stage" logs
  local count big
  count=$(find "$out" -maxdepth 1 -type f ! -name summary.txt | wc -l)
  big=$(find "$out" -maxdepth 1 -type f -size +16M -printf '%f ')
  [ "$(( count + 1 ))" -le 8 ] || { note "FATAL: $(( count + 1 )) files in $out, at most 8 come back"; failed=1; }
  [ -z "$big" ] || { note "FATAL: over 16 MiB, will not come back: $big"; failed=1; }
  cp "$stage/summary.txt" "$out/summary.txt"
  rm -rf "$stage"
}
trained=()

if [ "$dry" = 1 ]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  note "== gpu_session.sh --dry-run (CPU, tiny sizes), ${minutes} min"
else
  note "== gpu_session.sh on the GPU machine, ${minutes} min"
fi
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# -- 1. environment and build ------------------------------------------------------
if ! "$py" -c "import torch" > "$logs/python.log" 2>&1; then
  fatal "$py cannot import torch: $(tail -1 "$logs/python.log")"
  pack; exit 1
fi
"$py" - > "$stage/device" 2>> "$logs/python.log" <<'EOF'
import torch
print(torch.cuda.get_device_name(0).replace(" ", "-") if torch.cuda.is_available() else "cpu")
EOF
note "device: $(cat "$stage/device"); $("$py" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}")' 2>&1)"
if [ "$dry" = 0 ] && [ "$(cat "$stage/device")" = cpu ]; then
  fatal "torch sees no CUDA device (torch.cuda.is_available() is False)"
  pack; exit 1
fi
# Nothing can be installed there: say at once which modules a step will miss.
for module in numpy PIL safetensors triton setuptools pytest pytest_benchmark; do
  "$py" -c "import $module" 2>/dev/null || fatal "python module $module is missing (steps that need it fail)"
done
[ -e mzsr_fast/kernels ] || ln -s ../kernels mzsr_fast/kernels  # what the editable install maps
if [ "$dry" = 1 ]; then
  note "build: dry run, using the extension already built here"
else
  run_limited "build (setup.py build_ext --inplace, CUDA)" "$(( $(left) < 300 ? $(left) : 300 ))" "$logs/build.log" \
    env MZSR_FAST_CUDA=1 "$py" setup.py build_ext --inplace
  build_rc=$?
  [ "$build_rc" -eq 0 ] || fatal "the extension did not build (exit $build_rc): $(grep -m1 -iE 'error' "$logs/build.log")"
fi

# Every backend this machine must have, usable: else the tests would only skip.
"$py" - "$dry" > "$logs/backends.log" 2>&1 <<'EOF'
import sys
import mzsr_fast
from mzsr_fast import _extension, dispatch
dry = sys.argv[1] == "1"
problems = []
if _extension.LOAD_ERROR is not None:
    problems.append(f"mzsr_fast._C: {_extension.LOAD_ERROR}")
wanted = [("cpu", "cpu"), ("triton", "cpu")] if dry else [("cpu", "cpu"), ("cuda", "cuda"), ("triton", "cuda")]
for op in dispatch.PREFERENCE:
    for backend, device in wanted:
        reason = dispatch.unavailable_reason(backend, op, device)
        print(f"{op} {backend} on {device}: {reason or 'available'}")
        if reason is not None:
            problems.append(f"{op} backend {backend!r} on {device}: {reason}")
for problem in problems:
    print(f"UNAVAILABLE {problem}")
sys.exit(1 if problems else 0)
EOF
# A missing backend fails the session (exit 1, FATAL) but the steps still run:
# what does work (e.g. Triton and training without a CUDA build) uses the lease.
if [ $? -ne 0 ]; then
  fatal "a backend this run needs is unavailable; its tests will skip, the session fails:"
  grep UNAVAILABLE "$logs/backends.log" | sed 's/^UNAVAILABLE /  /' | tee -a "$stage/summary.txt"
else
  note "backends: all available ($(grep -c available "$logs/backends.log") checks)"
fi
"$py" -m mzsr_fast info > "$logs/info.json" 2>&1

# -- 2. tests: the GPU ones first, then the rest ------------------------------------
export MZSR_FAST_TEST_TIMEOUT=${MZSR_FAST_TEST_TIMEOUT:-120}  # per test (tests/conftest.py)
pytest_common=(-q -rfE -p no:cacheprovider -m "" --ignore=tests/test_gpu_session.py)  # -m "": the slow tests too
if [ "$dry" = 1 ]; then
  gpu_tests=(tests/ops/test_sgd_step.py -k "two_roundings and (cpu or triton)")
  other_tests=(tests/test_build.py)
else
  gpu_tests=(tests -k "cuda or triton or graph")
  other_tests=(tests -k "not (cuda or triton or graph)")
fi
budget=$(left); cap=$(( budget * 40 / 100 ))
run_limited "tests on the GPU" "$cap" "$logs/tests-gpu.log" \
  "$py" -m pytest "${gpu_tests[@]}" "${pytest_common[@]}" --junitxml="$logs/tests-gpu.xml"
result_line "$logs/tests-gpu.log" "$pytest_summary"

# -- 3. benchmarks (the GPU variants: on a GPU the op benchmarks list only GPU
#       backends; -k drops bench_adapt's CPU variant; bench_train is CPU-bound) -----
if [ "$dry" = 1 ]; then
  benches=(benchmarks/bench_sgd_step.py -k "torch and float")
else
  benches=(benchmarks/bench_sgd_step.py benchmarks/bench_blur_downsample.py benchmarks/bench_maml.py
           benchmarks/bench_adapt.py -k "not cpu")
fi
budget=$(left); cap=$(( budget * 30 / 100 ))
run_limited "benchmarks" "$cap" "$logs/benchmarks.log" \
  "$py" -m pytest "${benches[@]}" --benchmark-only -q -s -p no:cacheprovider \
  --benchmark-json="$stage/benchmarks.json"
[ -s "$stage/benchmarks.json" ] || note "benchmarks: NO JSON written"

budget=$(left); cap=$(( budget * 25 / 100 ))
run_limited "tests, the rest" "$cap" "$logs/tests-rest.log" \
  "$py" -m pytest "${other_tests[@]}" "${pytest_common[@]}" --junitxml="$logs/tests-rest.xml"
result_line "$logs/tests-rest.log" "$pytest_summary"

# -- 4. training for the rest of the lease -----------------------------------------
if [ "$dry" = 1 ]; then
  device=cpu
  run_dirs=("$stage/runs/dry_direct_x2")
  extra=(--iterations 2 --patch-size 16 --meta-batch 1 --task-batch 2 --inner-steps 1 --holdout 0
         --validate-every 0 --threads 1)
  # A fresh 1-iteration run (what the real runs are), then the same resume as below.
  run_limited "training: a tiny new run" "$(left)" "$logs/train-new.log" \
    "$py" -m mzsr_fast.cli metatrain "$data" --init training/reference_pretrained_x2.safetensors \
    --out "${run_dirs[0]}" --device cpu --no-progress "${extra[@]}" --iterations 1 --order 1 \
    || fatal "the tiny training run failed: $(tail -1 "$logs/train-new.log")"
else
  device=cuda
  read -r -a run_dirs <<< "${MZSR_FAST_GPU_SESSION_RUNS:-training/metaref_direct_x2 training/metaref_bicubic_x2}"
  extra=()
fi
if [ ! -d "$data" ]; then
  fatal "training: no data folder $data (make it with scripts/prepare_gpu_data.py; carry gpu_data)"
  run_dirs=()
fi
share=(60 100)  # % of the time left: the first run (the default model) first
for i in "${!run_dirs[@]}"; do
  run_dir=${run_dirs[$i]}
  name=$(basename "$run_dir")
  if [ ! -f "$run_dir/config.json" ]; then
    fatal "training: $run_dir/config.json not found (nothing to resume)"
    continue
  fi
  # The run's own settings, as command-line options (data, init, device and
  # the output folder are this machine's; a changed data or init path is allowed
  # and listed on stderr by the trainer).
  mapfile -t options < <("$py" - "$run_dir/config.json" 2>> "$logs/train-options.log" <<'EOF'
import argparse, json, sys
from mzsr_fast.cli import build_parser
metatrain = next(a.choices["metatrain"] for a in build_parser()._actions
                 if isinstance(a, argparse._SubParsersAction))
known = set(metatrain._option_string_actions)
config = json.load(open(sys.argv[1]))
skip = {"kind", "resume", "resume_or_start", "allow_config_change", "data_dir", "init", "out", "device",
        "progress", "threads"}
for key, value in config.items():
    flag = "--no-msl" if key == "msl" else "--" + key.replace("_", "-")
    if key in skip or value is None or (isinstance(value, bool) and value == (key == "msl")):
        continue
    if flag not in known:
        print(f"{sys.argv[1]}: {key} has no metatrain option ({flag}); left at its default", file=sys.stderr)
        continue
    print(flag)
    if not isinstance(value, bool):
        print(",".join(str(v) for v in value) if isinstance(value, list) else value)
EOF
  )
  seconds=$(( $(left) * ${share[$i]:-100} / 100 ))
  run_limited "training: $name ($device, resumed)" "$seconds" "$logs/train-$name.log" \
    "$py" -m mzsr_fast.cli metatrain "$data" --init training/reference_pretrained_x2.safetensors \
    --out "$run_dir" "${options[@]}" --resume-or-start --allow-config-change --device "$device" --no-progress \
    "${extra[@]}"
  rc=$?
  # exit 1 with a saved checkpoint is a run stopped at its time limit
  if [ "$rc" -ne 0 ] && ! grep -q "stopped at iteration" "$logs/train-$name.log"; then
    fatal "training $name failed (exit $rc): $(grep -v '^ ' "$logs/train-$name.log" | tail -1)"
  fi
  result_line "$logs/train-$name.log" "iterations done|stopped at iteration"
  trained+=("$run_dir")
done

pack
exit "$failed"
