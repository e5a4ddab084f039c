"""Mamba-3 building blocks: one direction (``Mamba3Mixer``), the bidirectional ``BiMixer``,
the attention mixer of hybrid trunks (``Attention``, ``KVCache``), the pre-norm ``ResidualBlock``
(``make_block`` per ``layer_pattern`` letter) and ``RMSNorm``. Contract: docs/contracts.md §2."""

from .attention import Attention, KVCache
from .bimixer import TIE_MODES, BiMixer
from .mamba3 import Mamba3Direction, Mamba3Mixer, heavy_tail, ssm_proj_width
from .norms import RMSNorm
from .residual import ResidualBlock, SwiGLU, make_block

__all__ = [
    "Attention", "BiMixer", "KVCache", "ResidualBlock", "Mamba3Direction", "Mamba3Mixer", "RMSNorm", "SwiGLU",
    "TIE_MODES", "heavy_tail", "make_block", "ssm_proj_width",
]
