#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (CuPy for CUDA 13, PyTorch, nvcc,
# compute-sanitizer; no network). Installs nothing; runs from the repository root with
# PYTHONPATH=. (the package is not pip-installed there).
#
#   OUT=/some/dir bash bench/gpu_check.sh                 (OUT defaults to ./out)
#   OUT=/other/dir STEPS=graph,bench bash bench/gpu_check.sh   (a second call: chosen steps)
#
# Steps, in the order of what we most need to learn (each one's failure is recorded
# and the next still runs; each has a time cap and all share one budget):
#   info       GPU, driver, CUDA, CuPy, PyTorch, nvcc and compute-sanitizer versions
#   smoke      bench/gpu_smoke.py: every kernel once (tails, misaligned views); first
#              the cold and warm load time of each kernel module, each in a fresh
#              process; last a small training on CuPy and on NumPy, so that NVRTC,
#              CuPy's own kernels and Numba are compiled (and cached) before the tests
#   kernels    the kernel GPU tests (tests/test_kernels_gpu.py -m gpu)
#   graph      tests/test_cuda_graph.py and the rest of the suite's GPU tests (-m gpu)
#   memcheck   the smoke under compute-sanitizer --tool memcheck (CuPy pool off)
#   racecheck  the smoke under compute-sanitizer --tool racecheck
#   bench      fcgpu bench --quick --report, with whatever time is left (its own
#              deadline inside); its kernel suite measures the copy reference and the
#              minibatch gathers (augmenting and plain, batch 490 and 65536) first;
#              before the suites, when the step has at least GPU_CHECK_COURSE_MIN_S
#              (120) seconds: --course-wall, the course's whole 17-epoch training on
#              synthetic data, fcgpu (+ CUDA graph) and PyTorch eager, in 40% of the
#              bench's deadline (25 s where that is at most 60%); a backend not done by
#              then is stopped and reported. With less time it is left out (the suites
#              come first); STEPS=bench on a second call measures it
#
# Budget: GPU_CHECK_BUDGET_S seconds (default 345) for all steps. Every step but the
# bench has a fixed cap (GPU_CHECK_CAP_<step> overrides one); together they leave the
# bench at least GPU_CHECK_BENCH_MIN_S (60). A step starts only with at least
# GPU_CHECK_MIN_STEP_S (15) seconds left, else it is skipped for time. The GPU test
# steps skip the tests not started when their cap nears (bench/gpu_check_pytest.py),
# so they still report which tests they did not get to.
#
# STEPS (comma- or space-separated, default all) runs only the steps named, in the
# order above. Compile caches live at fixed paths outside $OUT (GPU_CHECK_CACHE,
# default /tmp/fcgpu-cache: CUPY_CACHE_DIR=<it>/cupy, NUMBA_CACHE_DIR=<it>/numba,
# unless already set), so a second call on the same machine reuses what the first
# compiled. GPU_CHECK_PLAN=1 prints the steps and caps and exits. GPU_CHECK_CMD_<step>
# replaces a step's command (bash -c; tests/test_gpu_check.py uses it with stand-ins).
#
# Verdict (last line, and the exit status):
#   PASSED      (0) every selected step ran to its end and passed;
#   FAILED      (1) some step failed (a test failed, the smoke found a mismatch, a
#                   sanitizer reported an error, a command exited non-zero);
#   INCOMPLETE  (2) nothing failed, but some step did not finish: skipped (for time,
#                   or its tool is missing), stopped at its cap, a GPU test step cut
#                   short (tests skipped for time), or a GPU test step that tested
#                   nothing (no test collected, or all skipped: no CuPy, no device).
# A usage error (an unknown step name) exits 64.
#
# Files in $OUT (at most 8, no folders): gpu_check.log (everything, with the summary
# table at the end), junit-kernels.xml, junit-graph.xml, sanitizer-memcheck.log,
# sanitizer-racecheck.log, bench-results.json, bench-report.md, bench.tar.gz (the
# whole bench output: results, raw pytest-benchmark JSON, report, plots).
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$(pwd)

ALL_STEPS=(info smoke kernels graph memcheck racecheck bench)
declare -A CAP=([info]=20 [smoke]=70 [kernels]=70 [graph]=55 [memcheck]=35 [racecheck]=35
                [bench]=0)   # 0: the time left
declare -A IS_TEST=([kernels]=1 [graph]=1)
for s in "${ALL_STEPS[@]}"; do
    v="GPU_CHECK_CAP_$s"
    [ -n "${!v:-}" ] && CAP[$s]=${!v}
done
BUDGET=${GPU_CHECK_BUDGET_S:-345}
BENCH_MIN=${GPU_CHECK_BENCH_MIN_S:-60}
MIN_STEP=${GPU_CHECK_MIN_STEP_S:-15}

# ---------------------------------------------------------------- which steps
declare -A WANT=()
if [ -n "${STEPS:-}" ]; then
    for s in ${STEPS//,/ }; do
        if [ -z "${CAP[$s]+x}" ]; then
            echo "gpu_check.sh: unknown step '$s' in STEPS (steps: ${ALL_STEPS[*]})" >&2
            exit 64
        fi
        WANT[$s]=1
    done
else
    for s in "${ALL_STEPS[@]}"; do WANT[$s]=1; done
fi
SELECTED=()
for s in "${ALL_STEPS[@]}"; do [ -n "${WANT[$s]:-}" ] && SELECTED+=("$s"); done

plan() {
    local fixed=0 s
    echo "plan: budget ${BUDGET}s; steps: ${SELECTED[*]}"
    for s in "${SELECTED[@]}"; do
        if [ "${CAP[$s]}" -gt 0 ]; then
            echo "  $s cap ${CAP[$s]}s"
            fixed=$((fixed + CAP[$s]))
        else
            echo "  $s cap: the time left (at least ${BENCH_MIN}s planned)"
        fi
    done
    local need=$fixed
    [ -n "${WANT[bench]:-}" ] && [ "${CAP[bench]}" -eq 0 ] && need=$((fixed + BENCH_MIN))
    echo "  fixed caps ${fixed}s; needed ${need}s of ${BUDGET}s"
    if [ "$need" -gt "$BUDGET" ]; then
        echo "  WARNING: the caps do not fit the budget: the last steps may be skipped for time"
    fi
}
if [ -n "${GPU_CHECK_PLAN:-}" ]; then
    plan
    exit 0
fi

# ---------------------------------------------------------------- environment
OUT=${OUT:-$REPO/out}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
CACHE=${GPU_CHECK_CACHE:-/tmp/fcgpu-cache}
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-$CACHE/cupy}
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$CACHE/numba}
mkdir -p "$CUPY_CACHE_DIR" "$NUMBA_CACHE_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fcgpu-gpu-check.XXXXXX")
LOG="$OUT/gpu_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

finish() {  # exit status; lets tee write the last lines before the script ends
    rm -rf "$WORK"
    exec 1>&- 2>&-
    wait "$TEE_PID" 2>/dev/null
    exit "$1"
}

START=$SECONDS
DEADLINE=$((START + BUDGET))

STEP_NAMES=()
STEP_STATUS=()
STEP_RC=()
STEP_SECS=()
STEP_DETAIL=()

record() {  # name status rc secs detail
    STEP_NAMES+=("$1"); STEP_STATUS+=("$2"); STEP_RC+=("$3"); STEP_SECS+=("$4")
    STEP_DETAIL+=("$5")
}

skip_step() {  # name reason
    echo
    echo "=== [$1] SKIPPED: $2"
    record "$1" SKIPPED - 0 "$2"
}

# run_step NAME COMMAND...   (GPU_CHECK_CMD_<NAME>, when set, replaces COMMAND)
run_step() {
    local name=$1
    shift
    local override="GPU_CHECK_CMD_$name"
    if [ -n "${!override:-}" ]; then
        set -- bash -c "${!override}"
    fi
    local left=$((DEADLINE - SECONDS))
    if ((left < MIN_STEP)); then
        skip_step "$name" "only ${left}s of the time budget left"
        return 0
    fi
    local t=$left
    if [ "${CAP[$name]}" -gt 0 ] && [ "${CAP[$name]}" -lt "$left" ]; then
        t=${CAP[$name]}
    fi
    export STEP_SECONDS=$t
    if [ -n "${IS_TEST[$name]:-}" ]; then
        # tests not started by then are skipped (and reported), leaving time to finish
        local margin=$((t / 6 > 5 ? t / 6 : 5))
        export FCGPU_CHECK_DEADLINE=$(($(date +%s) + t - margin))
        export JUNIT="$OUT/junit-$name.xml"
        rm -f "$JUNIT"
    fi
    echo
    echo "=== [$name] $(date -u +%H:%M:%S) (cap ${t}s): $*"
    local t0=$SECONDS
    if [ -n "${IS_TEST[$name]:-}" ]; then
        FCGPU_REQUIRE_GPU=1 timeout --kill-after=10 "$t" "$@"
    else
        timeout --kill-after=10 "$t" "$@"
    fi
    local rc=$?
    local secs=$((SECONDS - t0))
    local status=FAIL detail=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status=TIMEOUT
        detail="stopped at its ${t}s cap"
    elif [ -n "${IS_TEST[$name]:-}" ]; then
        local line
        line=$("$PY" "$REPO/bench/gpu_check_pytest.py" "$rc" "$JUNIT" 2>&1)
        status=${line%% *}
        detail=${line#* }
        case "$status" in ok|FAIL|CUT|NOTESTS) ;; *) status=FAIL; detail="junit summary: $line" ;; esac
    elif [ "$rc" -eq 0 ]; then
        status=ok
    else
        detail="exit status $rc"
    fi
    echo "=== [$name] $status (rc=$rc, ${secs}s) $detail"
    record "$name" "$status" "$rc" "$secs" "$detail"
}

# ---------------------------------------------------------------- info
info() {
    echo "repo: $REPO  commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
         "$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '(dirty)')"
    echo "host: $(uname -a)"
    echo "caches: CUPY_CACHE_DIR=$CUPY_CACHE_DIR ($(find "$CUPY_CACHE_DIR" -type f 2>/dev/null | wc -l) files)," \
         "NUMBA_CACHE_DIR=$NUMBA_CACHE_DIR ($(find "$NUMBA_CACHE_DIR" -type f 2>/dev/null | wc -l) files)"
    echo "--- nvidia-smi"
    nvidia-smi || echo "nvidia-smi failed"
    nvidia-smi --query-gpu=index,pci.bus_id,name,driver_version,memory.total,memory.used,clocks.max.sm,clocks.max.mem \
        --format=csv || true
    echo "--- nvcc"
    nvcc --version 2>/dev/null || /usr/local/cuda/bin/nvcc --version 2>/dev/null || echo "nvcc not found"
    echo "--- compute-sanitizer"
    if [ -n "$SANITIZER" ]; then "$SANITIZER" --version; else echo "compute-sanitizer not found"; fi
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
    print("this script is for a machine with a GPU: the GPU steps below will fail")
    sys.exit(3)
from fcgpu.backend import require_cupy
cp = require_cupy()
rt = cp.cuda.runtime
dev = cp.cuda.Device()
props = rt.getDeviceProperties(dev.id)
name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
print("cupy", cp.__version__, "| CUDA runtime", rt.runtimeGetVersion(),
      "| driver API", rt.driverGetVersion())
print("device %d (PCI %s): %s, cc %s.%s, %d SMs, %.1f GiB, L2 %d KiB" % (
    dev.id, dev.pci_bus_id, name, props["major"], props["minor"],
    props["multiProcessorCount"], props["totalGlobalMem"] / 2**30, props["l2CacheSize"] // 1024))
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

bench_step() {  # the bench with its own deadline inside the step's time
    # the course's whole run only where the suites keep enough time of their own; a
    # rerun (STEPS=bench) gets the whole budget and so includes it
    local course=()
    if [ "$STEP_SECONDS" -ge "${GPU_CHECK_COURSE_MIN_S:-120}" ]; then
        course=(--course-wall --course-backends fcgpu_graph,torch_cuda,fcgpu)
    else
        echo "bench: --course-wall left out: the step has ${STEP_SECONDS}s, under" \
             "${GPU_CHECK_COURSE_MIN_S:-120}s; rerun with STEPS=bench to measure it"
    fi
    "$PY" -m fcgpu.cli bench --out "$WORK/bench" --quick --report "${course[@]}" \
        --deadline $((STEP_SECONDS > 40 ? STEP_SECONDS - 20 : STEP_SECONDS / 2))
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
export -f info bench_step
export PY REPO SANITIZER WORK

echo "fcgpu GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ); OUT=$OUT; budget ${BUDGET}s"
plan

PYTEST_GPU=("$PY" -m pytest -m gpu -rs -p no:cacheprovider -p bench.gpu_check_pytest
            -o junit_family=xunit2)
GRAPH_FILES=(tests/test_cuda_graph.py)
for f in tests/test_*.py; do
    case "$f" in tests/test_cuda_graph.py|tests/test_kernels_gpu.py) ;; *) GRAPH_FILES+=("$f") ;; esac
done

have_cmd() { local v="GPU_CHECK_CMD_$1"; [ -n "${!v:-}" ]; }

for step in "${SELECTED[@]}"; do
    case "$step" in
    info)
        run_step info bash -c info ;;
    smoke)
        run_step smoke "$PY" bench/gpu_smoke.py --load-times --warm-up ;;
    kernels)
        run_step kernels "${PYTEST_GPU[@]}" --junitxml="$OUT/junit-kernels.xml" \
            tests/test_kernels_gpu.py ;;
    graph)
        run_step graph "${PYTEST_GPU[@]}" --junitxml="$OUT/junit-graph.xml" "${GRAPH_FILES[@]}" ;;
    memcheck|racecheck)
        if [ -z "$SANITIZER" ] && ! have_cmd "$step"; then
            skip_step "$step" "compute-sanitizer not found"
            continue
        fi
        run_step "$step" "$SANITIZER" --tool "$step" --error-exitcode 99 --print-limit 50 \
            --log-file "$OUT/sanitizer-$step.log" "$PY" bench/gpu_smoke.py
        echo "--- $step log (tail):"; tail -n 15 "$OUT/sanitizer-$step.log" 2>/dev/null ;;
    bench)
        if ! have_cmd bench && ! { ls bench/test_bench_*.py >/dev/null 2>&1 && [ -f fcgpu/cli/bench.py ]; }; then
            skip_step bench "no bench/test_bench_*.py suites or fcgpu/cli/bench.py in this checkout"
            continue
        fi
        run_step bench bash -c bench_step
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
        fi ;;
    esac
done

# ---------------------------------------------------------------- summary
echo
echo "=== summary ($(date -u +%H:%M:%S), $((SECONDS - START))s of ${BUDGET}s; steps: ${SELECTED[*]})"
printf '%-10s %-8s %-5s %-7s %s\n' step status rc seconds detail
VERDICT=PASSED
for i in "${!STEP_NAMES[@]}"; do
    printf '%-10s %-8s %-5s %-7s %s\n' "${STEP_NAMES[$i]}" "${STEP_STATUS[$i]}" "${STEP_RC[$i]}" \
        "${STEP_SECS[$i]}" "${STEP_DETAIL[$i]}"
    case "${STEP_STATUS[$i]}" in
        ok) ;;
        FAIL) VERDICT=FAILED ;;
        *) [ "$VERDICT" = PASSED ] && VERDICT=INCOMPLETE ;;
    esac
done
echo "files in $OUT:"; ls -la "$OUT"
echo "GPU CHECK: $VERDICT"
case "$VERDICT" in
    PASSED) finish 0 ;;
    FAILED) finish 1 ;;
    *) finish 2 ;;
esac
