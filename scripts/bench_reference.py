"""Thin entry: `python scripts/bench_reference.py ...` = `diffmamba bench reference ...` (diffmamba/bench/reference.py)."""
import sys

from diffmamba.bench.reference import main

if __name__ == "__main__":
    sys.exit(main())
