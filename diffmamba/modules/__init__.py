"""Mamba-3 building blocks: one direction (``Mamba3Mixer``), the bidirectional ``BiMixer``,
the pre-norm ``ResidualBlock`` and ``RMSNorm``. Contract: docs/contracts.md §2."""

from .bimixer import TIE_MODES, BiMixer
from .mamba3 import Mamba3Direction, Mamba3Mixer, heavy_tail, ssm_proj_width
from .norms import RMSNorm
from .residual import ResidualBlock, SwiGLU

__all__ = [
    "BiMixer", "ResidualBlock", "Mamba3Direction", "Mamba3Mixer", "RMSNorm", "SwiGLU", "TIE_MODES",
    "heavy_tail", "ssm_proj_width",
]
