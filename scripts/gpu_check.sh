#!/usr/bin/env bash
# One command for a GPU machine: versions, the kernel tests at realistic shapes, the kernel benchmark,
# the training step of the small trunks (train), and decoding (decode): the AR step eager against
# its CUDA-graph replay, and the cost of speculative decoding's calls against an AR step.
#
#   bash scripts/gpu_check.sh                 # everything, logs under ./gpu-check/
#   OUT=/some/dir bash scripts/gpu_check.sh   # logs there (the device tool's $OUT comes back)
#   PARTS="env tests" bash scripts/gpu_check.sh; PARTS="bench decode" bash scripts/gpu_check.sh
#                                             # the same in two calls (a 10-minute command limit)
#   PARTS=train bash scripts/gpu_check.sh      # small (130M) trunks, one optimizer step, L = 1024
#   PARTS=speed bash scripts/gpu_check.sh      # the demo models' sampling speed (carry their final/)
#
# Works in an installed checkout (scripts/install.sh) and on a bare GPU image that already has
# torch + triton but cannot pip-install: then the package is imported from this checkout.
# Kernel failures must not hide behind the backward's compile-failure fallback, so the run sets
# DIFFMAMBA_SCAN_BWD=triton. Each pytest run and the benchmark have their own time limit
# (TESTS_S, BENCH_S, TRAIN_S seconds), so a slow compile still leaves the other logs. Kernel compiles
# dominate the tests, so with pytest-xdist at hand they run in WORKERS processes (default 6: each
# test's float64 oracle takes up to ~6 GB of GPU memory, ~40 GB in all; 8-12 workers with the
# earlier batch of 8192 sequences at T = 1 ran an H200 out of memory and failed tests for that
# reason alone).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
PARTS=${PARTS:-env tests bench train decode}
TESTS_S=${TESTS_S:-200}
BENCH_S=${BENCH_S:-240}
TRAIN_S=${TRAIN_S:-240}
WORKERS=${WORKERS:-6}
BENCH_SHAPES=${BENCH_SHAPES:-bt16k-h16 mimo4-bt16k-h16}
if [ -z "${PY:-}" ]; then
    PY=python3
    [ -x .venv/bin/python ] && PY=.venv/bin/python
fi
mkdir -p "$OUT"

if ! "$PY" -c "import diffmamba.kernels" 2>/dev/null; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "diffmamba not installed: importing it from $PWD"
fi
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 DIFFMAMBA_SCAN_BWD=triton
status=0
parallel=()
"$PY" -c "import xdist" 2>/dev/null && [ "$WORKERS" -gt 1 ] && parallel=(-n "$WORKERS")

tests() {  # tests <log name> <pytest arguments...>: one pytest process under its own time limit
    # -v: each test's result is in the log as it ends, so a run stopped by its time limit still
    # says what passed and what failed (pytest's failure summary comes only at the end).
    local name=$1
    shift
    DIFFMAMBA_AUTOTUNE=0 timeout "$TESTS_S" "$PY" -m pytest -v --tb=line -rf --maxfail=5 -p no:cacheprovider \
        -p no:benchmark "${parallel[@]}" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    grep -E "FAILED|ERROR|Error|[0-9]+ (passed|failed)" "$OUT/$name.txt" | tail -30
    echo "$name: $(grep -c PASSED "$OUT/$name.txt") passed, $(grep -c FAILED "$OUT/$name.txt") failed lines; exit $rc" \
        | tee -a "$OUT/$name.txt"
    [ "$rc" = 0 ] || status=1
}

test_group() {  # the kernel tests in three pytest processes, in this order
    case $1 in
    tests-backward) tests tests-backward tests/kernels/test_backward_core.py tests/kernels/test_scan.py \
            -k "backward or resume or test_awkward_shapes or core or prepass or switch or tf32 or compile" ;;
    tests-rest) tests tests-rest tests/kernels/test_model_on_kernels.py tests/kernels/test_step_fused.py \
            tests/kernels/test_scan.py tests/kernels/test_step_and_configs.py \
            -k "not (backward or resume or test_awkward_shapes or split_p)" ;;
    tests-split-p) tests tests-split-p tests/kernels/test_step_and_configs.py -k split_p ;;
    esac
}

for part in $PARTS; do
    case $part in
    env)
        { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
          "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
        } 2>&1 | tee "$OUT/env.txt" ;;
    tests)
        # The backward first (its first GPU run, on an H200, was cut short by memory; docs/benchmarks.md),
        # then the rest; the forced split-value-dim forward config goes last
        # in its own process: its config family once raised an illegal memory access on the H100,
        # which would poison the CUDA context of every test after it.
        # DIFFMAMBA_AUTOTUNE=0: one config per kernel (test_step_and_configs still launches each).
        # Each of the three is also a part of its own (PARTS="tests-backward", ...).
        for group in tests-backward tests-rest tests-split-p; do test_group $group; done ;;
    tests-backward|tests-rest|tests-split-p) test_group "$part" ;;
    bench)
        timeout "$BENCH_S" "$PY" scripts/bench_kernels.py --shapes $BENCH_SHAPES \
            --ops fwd bi fwdbwd bibwd bwdparts step --profile --rep 50 --warmup 10 --json "$OUT/bench.json" \
            2>&1 | tee "$OUT/bench.txt"
        rc=${PIPESTATUS[0]}; echo "bench exit $rc" | tee -a "$OUT/bench.txt"; [ "$rc" = 0 ] || status=1 ;;
    train)
        # One full optimizer step of the small (130M) Mamba-3, attention and hybrid trunks, bf16
        # autocast, 16k tokens per step at L = 1024: diffusion then AR objective (tokens/s, MFU).
        # The diffusion run also profiles one step per trunk (--profile: kernels by self time).
        for objective in diffusion ar; do
            profile=(); [ "$objective" = diffusion ] && profile=(--profile)
            timeout "$TRAIN_S" "$PY" -m diffmamba.cli bench train --size small --lengths 1024 --objective "$objective" \
                --warmup 2 --repeats 5 "${profile[@]}" --json "$OUT/train-$objective.json" 2>&1 \
                | tee "$OUT/train-$objective.txt"
            rc=${PIPESTATUS[0]}; echo "train $objective exit $rc" | tee -a "$OUT/train-$objective.txt"
            [ "$rc" = 0 ] || status=1
        done ;;
    decode)
        # AR per-token latency of the small model, eager steps against the CUDA-graph replay, at
        # context 512 and 8192, batch 1 and 64, unfused and fused, with the kernels a token launches
        # (--profile); then what speculative decoding's calls cost against an AR step (the break-even
        # tokens per round), all replayed from CUDA graphs, on the demo model's shape (no training needed).
        timeout "$BENCH_S" "$PY" -m diffmamba.cli bench decode --profile --json "$OUT/decode.json" 2>&1 | tee "$OUT/decode.txt"
        rc=${PIPESTATUS[0]}; echo "bench decode exit $rc" | tee -a "$OUT/decode.txt"; [ "$rc" = 0 ] || status=1
        timeout "$BENCH_S" "$PY" -m diffmamba.cli bench speculative --device cuda --batch-sizes 1 8 64 \
            2>&1 | tee "$OUT/speculative.txt"
        rc=${PIPESTATUS[0]}; echo "speculative exit $rc" | tee -a "$OUT/speculative.txt"; [ "$rc" = 0 ] || status=1 ;;
    speed)
        # Sampling tokens/s of the CPU-trained demo models (carry runs/demo-{ar,adapted,block,dual}/final):
        # AR, diffusion, block diffusion and the dual checkpoint's modes (AR, block on AR states,
        # lossless speculative) at batch 1, 8 and 64, eager (a few minutes on an H200: host-bound)
        # and with CUDA graphs.
        models=(runs/demo-ar/final runs/demo-adapted/final runs/demo-block/final runs/demo-dual/final)
        for m in "${models[@]}"; do
            [ -d "$m" ] || { echo "speed: $m is missing (train it with configs/demo.yaml, then carry it)"; status=1; continue 2; }
        done
        for graph in --cuda-graph --no-cuda-graph; do  # graphed first: the numbers not yet measured
            name=speed-${graph#--}
            timeout "$BENCH_S" "$PY" -m diffmamba.cli eval speed --ar "${models[0]}" --diffusion "${models[1]}" \
                --block "${models[2]}" --dual "${models[3]}" --batch-sizes 1 8 64 --lengths 128 \
                --speed-samplers ancestral --speed-steps 64 $graph --out "$OUT/$name" 2>&1 | tee "$OUT/$name.txt"
            rc=${PIPESTATUS[0]}; echo "$name exit $rc" | tee -a "$OUT/$name.txt"; [ "$rc" = 0 ] || status=1
        done ;;
    *) echo "unknown part '$part' (PARTS takes: env tests tests-backward tests-rest tests-split-p bench train decode speed)" >&2; exit 2 ;;
    esac
done
exit $status
