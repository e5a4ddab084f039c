"""Thin entry: `python scripts/bench_kernels.py ...` = `diffmamba bench kernels ...` (diffmamba/bench/kernels.py)."""
import sys

from diffmamba.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main())
