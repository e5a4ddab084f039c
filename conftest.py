"""Repo-root pytest setup. Runs before any test module imports the Triton kernels."""
import os
import tempfile

import torch

# The Triton interpreter must be chosen before any @triton.jit decorator runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Never let a test reach for the Hub (a wrong name would otherwise retry for ~23 s).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", os.path.join(tempfile.gettempdir(), "diffmamba-test-hf"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
