#!/usr/bin/env bash
# README command one: install into .venv, then run the main job on the built-in corpus:
# train a tiny masked-diffusion model and a tiny AR model with the same layers, sample from both,
# print the side-by-side comparison (about 10 minutes on a 2-core CPU; uses a GPU when present).
# Extra arguments go to `diffmamba quickstart` (see `diffmamba quickstart --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV=${VENV:-.venv}
exec "$VENV/bin/diffmamba" quickstart "$@"
