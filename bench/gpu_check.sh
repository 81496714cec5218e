#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (CuPy for CUDA 13, PyTorch, nvcc,
# compute-sanitizer; no network). Installs nothing; runs from the repository root with
# PYTHONPATH=. (the package is not pip-installed there). Whole run < 6 minutes.
#
#   OUT=/some/dir bash bench/gpu_check.sh          (OUT defaults to ./out)
#
# Steps (each one's failure is recorded and the next still runs; each has a time cap
# and all share one deadline):
#   info        GPU, driver, CUDA, CuPy, PyTorch, nvcc and compute-sanitizer versions
#   gpu-kernels the kernel GPU tests (tests/test_kernels_gpu.py -m gpu)
#   smoke       bench/gpu_smoke.py: every kernel once, tails and misaligned views
#   memcheck    the smoke under compute-sanitizer --tool memcheck (CuPy pool off)
#   racecheck   the smoke under compute-sanitizer --tool racecheck
#   bench       fcgpu bench --quick --report, when the suites exist
#   gpu-other   the rest of the test suite's GPU tests (tests -m gpu)
# Files in $OUT (at most 8): gpu_check.log (everything, with the summary table at the
# end), junit-kernels-gpu.xml, junit-gpu-other.xml, sanitizer-memcheck.log,
# sanitizer-racecheck.log, bench-results.json, bench-report.md, bench.tar.gz (the
# whole bench output: results, raw pytest-benchmark JSON, report, plots).
# Exit status: 0 when every step that ran passed, 1 otherwise.
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$(pwd)
OUT=${OUT:-$REPO/out}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fcgpu-gpu-check.XXXXXX")
LOG="$OUT/gpu_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

finish() {  # exit status; lets tee write the last lines before the script ends
    exec 1>&- 2>&-
    wait "$TEE_PID" 2>/dev/null
    exit "$1"
}

BUDGET=${GPU_CHECK_BUDGET_S:-345}   # seconds for all steps; the summary follows
START=$SECONDS
DEADLINE=$((START + BUDGET))

STEP_NAMES=()
STEP_STATUS=()
STEP_RC=()
STEP_SECS=()
FAILED=0

record() {  # name status rc secs
    STEP_NAMES+=("$1"); STEP_STATUS+=("$2"); STEP_RC+=("$3"); STEP_SECS+=("$4")
    case "$2" in ok|skipped) ;; *) FAILED=1 ;; esac
}

# run_step NAME CAP_SECONDS OK_CODES COMMAND...   (OK_CODES: space-separated, e.g. "0 5")
run_step() {
    local name=$1 cap=$2 okcodes=$3
    shift 3
    local left=$((DEADLINE - SECONDS))
    if ((left < 15)); then
        echo "=== [$name] skipped: only ${left}s of the time budget left"
        record "$name" skipped - 0
        return 0
    fi
    local t=$((cap < left ? cap : left))
    echo
    echo "=== [$name] $(date -u +%H:%M:%S) (timeout ${t}s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$t" "$@"
    local rc=$?
    local secs=$((SECONDS - t0))
    local status=FAIL
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status=TIMEOUT
    else
        for c in $okcodes; do [ "$rc" -eq "$c" ] && status=ok; done
    fi
    echo "=== [$name] $status (rc=$rc, ${secs}s)"
    record "$name" "$status" "$rc" "$secs"
}

skip_step() {  # name reason
    echo
    echo "=== [$1] skipped: $2"
    record "$1" skipped - 0
}

# ---------------------------------------------------------------- info
info() {
    echo "repo: $REPO  commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
         "$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '(dirty)')"
    echo "host: $(uname -a)"
    echo "--- nvidia-smi"
    nvidia-smi || echo "nvidia-smi failed"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm,clocks.max.mem \
        --format=csv || true
    echo "--- nvcc"
    nvcc --version 2>/dev/null || /usr/local/cuda/bin/nvcc --version 2>/dev/null || echo "nvcc not found"
    echo "--- compute-sanitizer"
    "$SANITIZER" --version 2>/dev/null || echo "compute-sanitizer not found"
    echo "--- python / numpy / numba / cupy"
    "$PY" - <<'EOF'
import sys, platform
print("python", sys.version.replace("\n", " "), platform.machine())
import numpy, numba
print("numpy", numpy.__version__, "numba", numba.__version__)
from fcgpu.backend import cupy_status
ok, why = cupy_status()
if not ok:
    print("CuPy unavailable:", why)
    print("this script is for a machine with a GPU: the GPU steps below will fail or skip")
    sys.exit(3)
else:
    from fcgpu.backend import require_cupy
    cp = require_cupy()
    rt = cp.cuda.runtime
    dev = cp.cuda.Device()
    props = rt.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print("cupy", cp.__version__, "| CUDA runtime", rt.runtimeGetVersion(),
          "| driver API", rt.driverGetVersion())
    print("device %d: %s, cc %s.%s, %d SMs, %.1f GiB, L2 %d KiB" % (
        dev.id, name, props["major"], props["minor"], props["multiProcessorCount"],
        props["totalGlobalMem"] / 2**30, props["l2CacheSize"] // 1024))
    try:
        cp.show_config()
    except Exception as exc:
        print("cupy.show_config failed:", exc)
EOF
    local rc=$?
    echo "--- torch"
    "$PY" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| available', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')" \
        || echo "PyTorch not importable"
    return "$rc"
}

SANITIZER=$(command -v compute-sanitizer 2>/dev/null)
if [ -z "$SANITIZER" ]; then
    for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
             /opt/cuda/bin/compute-sanitizer; do
        [ -x "$c" ] && SANITIZER=$c && break
    done
fi
if [ -z "$SANITIZER" ]; then
    SANITIZER=$(ls -d /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
fi
export -f info
export PY REPO SANITIZER

echo "fcgpu GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ); OUT=$OUT; budget ${BUDGET}s"
run_step info 60 "0" bash -c info

# ---------------------------------------------------------------- GPU tests (kernels)
run_step gpu-kernels 150 "0" "$PY" -m pytest tests/test_kernels_gpu.py -m gpu -rs \
    -p no:cacheprovider --junitxml="$OUT/junit-kernels-gpu.xml" -o junit_family=xunit2

# ---------------------------------------------------------------- smoke + sanitizers
run_step smoke 60 "0" "$PY" bench/gpu_smoke.py

if [ -n "$SANITIZER" ]; then
    run_step memcheck 90 "0" "$SANITIZER" --tool memcheck --error-exitcode 99 --print-limit 50 \
        --log-file "$OUT/sanitizer-memcheck.log" "$PY" bench/gpu_smoke.py
    echo "--- memcheck log (tail):"; tail -n 15 "$OUT/sanitizer-memcheck.log" 2>/dev/null
    run_step racecheck 90 "0" "$SANITIZER" --tool racecheck --error-exitcode 99 --print-limit 50 \
        --log-file "$OUT/sanitizer-racecheck.log" "$PY" bench/gpu_smoke.py
    echo "--- racecheck log (tail):"; tail -n 15 "$OUT/sanitizer-racecheck.log" 2>/dev/null
else
    skip_step memcheck "compute-sanitizer not found"
    skip_step racecheck "compute-sanitizer not found"
fi

# ---------------------------------------------------------------- benchmarks (if present)
if ls bench/test_bench_*.py >/dev/null 2>&1 && [ -f fcgpu/cli/bench.py ]; then
    run_step bench 170 "0" "$PY" -m fcgpu.cli bench --out "$WORK/bench" --quick --report --deadline 150
    if [ -d "$WORK/bench" ]; then
        [ -f "$WORK/bench/results.json" ] && cp "$WORK/bench/results.json" "$OUT/bench-results.json"
        [ -f "$WORK/bench/report.md" ] && cp "$WORK/bench/report.md" "$OUT/bench-report.md"
        tar -C "$WORK" -czf "$OUT/bench.tar.gz" bench 2>/dev/null \
            || "$PY" -c "import tarfile,sys; t=tarfile.open(sys.argv[1],'w:gz'); t.add(sys.argv[2],'bench'); t.close()" \
                "$OUT/bench.tar.gz" "$WORK/bench"
        echo "--- bench summary:"
        "$PY" - "$WORK/bench/results.json" <<'EOF' || true
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as exc:
    print("no results.json:", exc); sys.exit(0)
for k, v in (r.get("summary") or {}).items():
    print("  %-22s %s" % (k, v))
for k, v in (r.get("summary_notes") or {}).items():
    print("  note %-17s %s" % (k, v))
EOF
    fi
else
    skip_step bench "no bench/test_bench_*.py suites or fcgpu/cli/bench.py in this checkout"
fi

# ---------------------------------------------------------------- the other GPU tests
# exit 5 = nothing collected (no other GPU tests): not a failure
run_step gpu-other 150 "0 5" "$PY" -m pytest tests -m gpu --ignore=tests/test_kernels_gpu.py -rs \
    -p no:cacheprovider --junitxml="$OUT/junit-gpu-other.xml" -o junit_family=xunit2

# ---------------------------------------------------------------- summary
rm -rf "$WORK"
echo
echo "=== summary ($(date -u +%H:%M:%S), $((SECONDS - START))s in all)"
printf '%-12s %-8s %-5s %s\n' step status rc seconds
for i in "${!STEP_NAMES[@]}"; do
    printf '%-12s %-8s %-5s %s\n' "${STEP_NAMES[$i]}" "${STEP_STATUS[$i]}" "${STEP_RC[$i]}" "${STEP_SECS[$i]}"
done
echo "files in $OUT:"; ls -la "$OUT"
if [ "$FAILED" -ne 0 ]; then
    echo "GPU CHECK: FAILED"
    finish 1
fi
echo "GPU CHECK: PASSED"
finish 0
