"""Where a source checkout keeps its files: configs are looked up here after the current folder."""
import os

# diffmamba/core/paths.py -> the folder above the package (the repository root in a checkout).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_CONFIGS = os.path.join(REPO_ROOT, "configs", "model")  # the shipped model shapes (tiny, small, ...)
