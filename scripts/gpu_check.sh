#!/usr/bin/env bash
# The one command to run on the GPU host (issue 11 §4): bare, one GPU, no network, no package registry; its image
# has Python 3.12 with torch (CUDA), transformers, peft, accelerate, safetensors and huggingface-hub. Finishes
# within GPU_CHECK_BUDGET_S (default 470 s, under 8 minutes), each step under its own `timeout`.
#
#   bash scripts/gpu_wheels.sh        # here, with network: the other dependencies, into gpu-wheels/
#   bash scripts/gpu_check.sh         # there, in the repository root (gpu-wheels/ travels with the tree)
#
# Steps, in order, each printed as it starts and summed up at the end (ok / FAILED / timed out / skipped):
#   install   the wheels of gpu-wheels/ (pip --no-index --no-deps), then this project (pip -e ., no deps)
#   pytest    the tests marked `gpu` (precision, the head in fp32, memory without copies, a tiny LM of each
#             family on CUDA): the files that mark any, `pytest -m gpu`
#   pipeline  one forget job and one audit through `lethe serve` on CUDA with LETHE_REQUIRE_GPU=1, on a random-init
#             SmolLM2-135M (bench/gpu_pipeline.py) -> bench/results-gpu-pipeline.json
#   bench     forget training on the Llama-3.2-1B shape: tokens/s, MFU against the measured bf16 peak, against the
#             naive PEFT loop (bench/gpu_bench.py) -> bench/results-gpu.json
# Results and each step's log land in GPU_CHECK_RESULTS (default bench/; logs in bench/gpu-check-logs/), and are
# copied into $OUT too when that is a directory.
#
# Environment:
#   GPU_CHECK_SKIP="install pytest"   steps to skip (space-separated names from above)
#   GPU_CHECK_ALLOW_CPU=1             dry run without a GPU: tiny shapes, results in a temporary folder (never
#                                     over the committed ones), wheels installed into a scratch folder only; a
#                                     CPU is slower, so each step gets 4× its time and the budget is 1800 s
#   GPU_CHECK_BUDGET_S                the whole run's time budget in seconds (default 470; dry run 1800)
#   PYTHON                            the interpreter (default python3)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"

PYTHON="${PYTHON:-python3}"
SKIP=" ${GPU_CHECK_SKIP:-} "
ALLOW_CPU="${GPU_CHECK_ALLOW_CPU:-0}"
if [ "$ALLOW_CPU" = 1 ]; then
    BUDGET_S="${GPU_CHECK_BUDGET_S:-1800}"
    STEP_SCALE=4
else
    BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"
    STEP_SCALE=1
fi
START=$SECONDS

log() { printf 'gpu_check: %s\n' "$*" >&2; }

if [ -n "${GPU_CHECK_SCRATCH:-}" ]; then
    scratch="$GPU_CHECK_SCRATCH"  # a step run by the script itself: the parent's folder, removed by the parent
else
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
fi

if [ "$ALLOW_CPU" = 1 ]; then
    RESULTS="${GPU_CHECK_RESULTS:-$scratch/results}"
    ALLOW=(--allow-cpu)
    [ "${1:-}" = __step ] || log "DRY RUN (GPU_CHECK_ALLOW_CPU=1): tiny shapes; results in $RESULTS are not GPU figures"
else
    RESULTS="${GPU_CHECK_RESULTS:-$REPO/bench}"
    ALLOW=()
fi
LOGS="$RESULTS/gpu-check-logs"
mkdir -p "$LOGS"

# Step bookkeeping: name, then "status seconds" lines for the summary.
declare -a SUMMARY=()
# Seconds each step may take at most (and never past the whole budget).
declare -A STEP_BUDGET=([install]=45 [pytest]=100 [pipeline]=170 [bench]=150)

run_step() { # name command...
    local name="$1"; shift
    if [[ "$SKIP" == *" $name "* ]]; then
        log "step $name: skipped (GPU_CHECK_SKIP)"
        SUMMARY+=("$name skipped 0")
        return 0
    fi
    local left=$((BUDGET_S - (SECONDS - START)))
    local limit=$((STEP_BUDGET[$name] * STEP_SCALE))
    [ "$left" -lt "$limit" ] && limit="$left"
    if [ "$limit" -le 5 ]; then
        log "step $name: not started, the time budget (${BUDGET_S} s) is spent"
        SUMMARY+=("$name out-of-time 0")
        return 0
    fi
    log "step $name: $* (at most ${limit} s; log $LOGS/$name.log)"
    local began=$SECONDS status
    timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    status=${PIPESTATUS[0]}
    local took=$((SECONDS - began))
    case "$status" in
        0) SUMMARY+=("$name ok $took") ;;
        124|137) SUMMARY+=("$name timed-out $took") ;;
        *) SUMMARY+=("$name FAILED($status) $took") ;;
    esac
    log "step $name: exit $status after ${took} s"
}

step_install() {
    local wheels=(gpu-wheels/*.whl)
    [ -e "${wheels[0]}" ] || { echo "no gpu-wheels/*.whl: run scripts/gpu_wheels.sh before sending the tree"; return 1; }
    echo "${#wheels[@]} wheels in gpu-wheels/ ($(du -cb "${wheels[@]}" | tail -n 1 | cut -f1) bytes)"
    if [ "$ALLOW_CPU" = 1 ]; then
        # Here the venv already has everything: prove the wheels install offline for the host's Python, no more.
        "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
            --only-binary=:all: --python-version 3.12 --implementation cp --target "$scratch/site" "${wheels[@]}" \
            || return 1
        echo "dry run: the wheels install offline for CPython 3.12 into a scratch folder; the project is not installed"
        return 0
    fi
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-cache-dir "${wheels[@]}" \
        || return 1
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-build-isolation \
        --no-cache-dir -e . || return 1
    "$PYTHON" - <<'PY'
import importlib.metadata as md
import torch, transformers, peft, fastapi, sqlalchemy, alembic, pydantic_settings, celery, kombu, minio, redis, psycopg
import rouge_score, sklearn, scipy, matplotlib, cryptography, rfc8785, structlog, asgi_correlation_id, typer, httpx_sse, prometheus_client
import cli.main
import lethe.settings, worker.tasks, api.app
print("imports ok: lethe", md.version("lethe"), "| torch", torch.__version__, "CUDA", torch.version.cuda,
      "| transformers", transformers.__version__, "| peft", peft.__version__)
PY
}

step_pytest() {
    local files
    # The files that mark a test `gpu` (collecting the whole suite would import packages the host lacks).
    mapfile -t files < <(grep -rlE 'mark\.gpu\b|marks=.*gpu' tests --include='*.py' | sort)
    if [ "${#files[@]}" -eq 0 ]; then
        echo "no test is marked gpu: nothing to run"
        return 0
    fi
    echo "files with gpu tests: ${files[*]}"
    "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider "${files[@]}"
}

# `timeout` runs programs, not shell functions: a step that is a function runs in this script run again as
# `gpu_check.sh __step NAME`, with the settings it needs exported.
if [ "${1:-}" = __step ]; then
    "step_$2"
    exit $?
fi
export PYTHON ALLOW_CPU GPU_CHECK_SCRATCH="$scratch"

log "repository $REPO, python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'), budget ${BUDGET_S} s"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader >&2 || true
fi
if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    if [ "$ALLOW_CPU" != 1 ]; then
        log "FAIL: torch sees no CUDA device here (GPU_CHECK_ALLOW_CPU=1 for a dry run on the CPU)"
        exit 2
    fi
    log "no CUDA device: running on the CPU (dry run)"
fi

run_step install bash "$REPO/scripts/gpu_check.sh" __step install
run_step pytest bash "$REPO/scripts/gpu_check.sh" __step pytest
run_step pipeline "$PYTHON" -m bench.gpu_pipeline "${ALLOW[@]}" --out "$RESULTS/results-gpu-pipeline.json"
run_step bench "$PYTHON" -m bench.gpu_bench "${ALLOW[@]}" --out "$RESULTS/results-gpu.json"

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$RESULTS"/results-gpu*.json "$OUT"/ 2>/dev/null || true
    for f in "$LOGS"/*.log; do cp "$f" "$OUT/gpu-check-$(basename "$f")"; done
fi

failed=0
log "summary (${BUDGET_S} s budget, $((SECONDS - START)) s used):"
for line in "${SUMMARY[@]}"; do
    read -r name status took <<<"$line"
    printf 'gpu_check:   %-9s %-12s %4s s\n' "$name" "$status" "$took" >&2
    [[ "$status" == ok || "$status" == skipped ]] || failed=1
done
for f in "$RESULTS"/results-gpu*.json; do [ -f "$f" ] && log "results: $f"; done
exit "$failed"
