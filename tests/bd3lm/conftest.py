"""Fixtures of the block-diffusion tests (helpers live in block_helpers.py: test folders share the
``conftest`` module name)."""
from stream_helpers import single_thread  # noqa: F401  (an autouse fixture: importing it applies it here)
