#!/usr/bin/env bash
# One command for a GPU machine: versions, the kernel tests at realistic shapes, the kernel benchmark,
# and the cost of speculative decoding's calls against an AR step (decode).
#
#   bash scripts/gpu_check.sh                 # everything, logs under ./gpu-check/
#   OUT=/some/dir bash scripts/gpu_check.sh   # logs there (the device tool's $OUT comes back)
#   PARTS="env tests" bash scripts/gpu_check.sh; PARTS="bench decode" bash scripts/gpu_check.sh
#                                             # the same in two calls (a 10-minute command limit)
#
# Works in an installed checkout (scripts/install.sh) and on a bare GPU image that already has
# torch + triton but cannot pip-install: then diffmamba.kernels is linked to kernels/ (what
# pyproject.toml's package mapping does) for the run, and the link is removed at exit.
# Kernel failures must not hide behind the backward's compile-failure fallback, so the run sets
# DIFFMAMBA_SCAN_BWD=triton. Each pytest run and the benchmark have their own time limit
# (TESTS_S, BENCH_S seconds), so a slow compile still leaves the other logs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
PARTS=${PARTS:-env tests bench decode}
TESTS_S=${TESTS_S:-200}
BENCH_S=${BENCH_S:-240}
if [ -z "${PY:-}" ]; then
    PY=python3
    [ -x .venv/bin/python ] && PY=.venv/bin/python
fi
mkdir -p "$OUT"

if ! "$PY" -c "import diffmamba.kernels" 2>/dev/null; then
    if [ ! -e diffmamba/kernels ]; then
        ln -s ../kernels diffmamba/kernels
        trap 'rm -f diffmamba/kernels' EXIT
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "diffmamba not installed: importing it from $PWD (diffmamba/kernels -> ../kernels for this run)"
fi
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 DIFFMAMBA_SCAN_BWD=triton
status=0

tests() {  # tests <log name> <pytest arguments...>: one pytest process under its own time limit
    local name=$1
    shift
    DIFFMAMBA_AUTOTUNE=0 timeout "$TESTS_S" "$PY" -m pytest -q -x -p no:cacheprovider "$@" 2>&1 \
        | tail -30 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "$name exit $rc" | tee -a "$OUT/$name.txt"
    [ "$rc" = 0 ] || status=1
}

for part in $PARTS; do
    case $part in
    env)
        { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
          "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
        } 2>&1 | tee "$OUT/env.txt" ;;
    tests)
        # The backward first (never yet run on a GPU), then the rest (the forward matrix passed on
        # an H100 before, docs/benchmarks.md); the forced split-value-dim forward config goes last
        # in its own process: its config family once raised an illegal memory access on the H100,
        # which would poison the CUDA context of every test after it.
        # DIFFMAMBA_AUTOTUNE=0: one config per kernel (test_step_and_configs still launches each).
        tests tests-backward tests/kernels/test_backward_core.py tests/kernels/test_scan.py \
            -k "backward or resume or test_awkward_shapes or core or prepass or switch or tf32 or compile"
        tests tests-rest tests/kernels/test_model_on_kernels.py tests/kernels/test_scan.py \
            tests/kernels/test_step_and_configs.py -k "not (backward or resume or test_awkward_shapes or split_p)"
        tests tests-split-p tests/kernels/test_step_and_configs.py -k split_p ;;
    bench)
        timeout "$BENCH_S" "$PY" scripts/bench_kernels.py --shapes bt16k-h16 mimo4-bt16k-h16 \
            --ops fwd bi fwdbwd bibwd bwdparts step --rep 50 --warmup 10 --json "$OUT/bench.json" \
            2>&1 | tee "$OUT/bench.txt"
        rc=${PIPESTATUS[0]}; echo "bench exit $rc" | tee -a "$OUT/bench.txt"; [ "$rc" = 0 ] || status=1 ;;
    decode)
        # Speculative decoding on the GPU: what a draft and a scoring call cost against an AR step
        # (the break-even tokens per round), on the demo model's shape (call costs need no training).
        timeout "$BENCH_S" "$PY" -m diffmamba.cli bench speculative --device cuda --batch-sizes 1 8 64 \
            2>&1 | tee "$OUT/decode.txt"
        rc=${PIPESTATUS[0]}; echo "decode exit $rc" | tee -a "$OUT/decode.txt"; [ "$rc" = 0 ] || status=1 ;;
    *) echo "unknown part '$part' (PARTS takes: env tests bench decode)" >&2; exit 2 ;;
    esac
done
exit $status
