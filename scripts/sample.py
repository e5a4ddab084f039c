"""Thin entry point: ``python scripts/sample.py --checkpoint DIR ...`` == ``diffmamba sample ...``."""
import sys

from diffmamba.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
