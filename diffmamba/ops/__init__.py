"""Mamba-3 scan op: the public entry (``mamba3_scan``, ``mamba3_step``) and its state type.

The pure-PyTorch spec lives in ``diffmamba.ops.reference``; contract: docs/contracts.md §1.
"""

from .scan import mamba3_scan, mamba3_scan_pair, mamba3_scan_ref, mamba3_scan_states, mamba3_step
from .state import Mamba3State

__all__ = ["mamba3_scan", "mamba3_scan_pair", "mamba3_step", "mamba3_scan_ref", "mamba3_scan_states", "Mamba3State"]
