#!/usr/bin/env bash
# README command two: install into a virtual environment and run the whole test suite (CPU, ~8 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-test,judge} bash scripts/install.sh
VENV=${VENV:-.venv}
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
# Most tests run on one core (the Triton interpreter, one-thread fixtures), so one pytest worker per
# core (pytest-xdist) roughly divides the wall time by the core count; WORKERS=0 runs in-process.
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -n "${WORKERS:-auto}" "$@"
