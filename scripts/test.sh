#!/usr/bin/env bash
# README command two: install into a virtual environment and run the whole test suite (CPU, ~13 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-test,judge} bash scripts/install.sh
VENV=${VENV:-.venv}
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
