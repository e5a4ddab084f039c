#!/usr/bin/env python
"""Diffusion vs AR comparison report: a thin entry to `diffmamba eval compare`.

    python scripts/eval_compare.py --diffusion runs/tiny-diffusion --ar runs/tiny-ar --judge smollm2 --out eval/tiny
    python scripts/eval_compare.py --checkpoint runs/tiny-diffusion --out eval/one   # one checkpoint, both modes

All options: python scripts/eval_compare.py --help (the same as `diffmamba eval compare --help`).
"""
import sys

from diffmamba.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "compare", *sys.argv[1:]]))
