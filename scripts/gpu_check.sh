#!/usr/bin/env bash
# One command for a GPU machine: versions, the kernel tests at realistic shapes, the kernel benchmark.
#
#   bash scripts/gpu_check.sh                 # everything, logs under ./gpu-check/
#   OUT=/some/dir bash scripts/gpu_check.sh   # logs there (the device tool's $OUT comes back)
#   PARTS="bench" bash scripts/gpu_check.sh   # a subset of: env tests bench
#
# Works in an installed checkout (scripts/install.sh) and on a bare GPU image that already has
# torch + triton but cannot pip-install: then it imports diffmamba from the source tree through a
# temporary package folder that maps diffmamba.kernels to kernels/ (as pyproject.toml does).
# Each part has its own time limit (TESTS_S, BENCH_S seconds) so a slow compile still leaves the
# other parts' logs. Kernel compilation dominates the test time on a fresh machine.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
PARTS=${PARTS:-env tests bench}
TESTS_S=${TESTS_S:-300}
BENCH_S=${BENCH_S:-240}
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
mkdir -p "$OUT"

if ! "$PY" -c "import diffmamba.kernels" 2>/dev/null; then
    pkgroot=$(mktemp -d)
    mkdir "$pkgroot/diffmamba"
    for entry in diffmamba/*; do ln -s "$PWD/$entry" "$pkgroot/diffmamba/"; done
    ln -s "$PWD/kernels" "$pkgroot/diffmamba/kernels"
    export PYTHONPATH="$pkgroot${PYTHONPATH:+:$PYTHONPATH}"
    echo "diffmamba not installed: importing it from $PWD via $pkgroot"
fi
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
status=0

for part in $PARTS; do
    case $part in
    env)
        { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
          "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
        } 2>&1 | tee "$OUT/env.txt" ;;
    tests)
        # Backward first (never yet run on a GPU), then the rest; the forward matrix passed on an
        # H100 before (docs/benchmarks.md) and goes last. -x stops at the first failure.
        # DIFFMAMBA_AUTOTUNE=0: one config per kernel (test_step_and_configs still launches each).
        DIFFMAMBA_AUTOTUNE=0 timeout "$TESTS_S" "$PY" -m pytest -q -x -p no:cacheprovider \
            tests/kernels/test_backward_core.py tests/kernels/test_scan.py::test_backward_siso \
            tests/kernels/test_scan.py::test_backward_mimo tests/kernels/test_scan.py::test_split_and_resume \
            tests/kernels/test_step_and_configs.py tests/kernels/test_model_on_kernels.py tests/kernels/test_scan.py \
            2>&1 | tail -40 | tee "$OUT/tests.txt"
        rc=${PIPESTATUS[0]}; echo "tests exit $rc" | tee -a "$OUT/tests.txt"; [ "$rc" = 0 ] || status=1 ;;
    bench)
        timeout "$BENCH_S" "$PY" scripts/bench_kernels.py --shapes bt16k-h16 mimo4-bt16k-h16 \
            --ops fwd bi fwdbwd bibwd bwdparts step --rep 50 --warmup 10 --json "$OUT/bench.json" \
            2>&1 | tee "$OUT/bench.txt"
        rc=${PIPESTATUS[0]}; echo "bench exit $rc" | tee -a "$OUT/bench.txt"; [ "$rc" = 0 ] || status=1 ;;
    *) echo "unknown part '$part' (PARTS takes: env tests bench)" >&2; exit 2 ;;
    esac
done
exit $status
