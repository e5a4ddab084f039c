"""What is compared: a list of *systems*, each a named way of producing text from a checkpoint.

    System(name="AR", mode="ar", checkpoint="runs/ar/final")
    System(name="diffusion", mode="diffusion", checkpoint="runs/mdlm/final")
    System(name="block L'=4", mode="block", checkpoint=..., settings={"block_size": 4})

Every row of ``results.json`` names its system, so the report builder never has to know how many
systems there are or which modes exist: a new mode (block diffusion) adds systems and rows, and the
tables and plots pick them up. ``settings`` is copied into every row the system produces.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from diffmamba.core.errors import UserError

AR_MODES = ("ar",)
DIFFUSION_MODES = ("diffusion",)
# "block": diffmamba/eval/bd3lm.py; "speculative": diffmamba/eval/decoding.py (AR's law, exact)
KNOWN_MODES = AR_MODES + DIFFUSION_MODES + ("block", "speculative")


@dataclass
class System:
    name: str
    mode: str  # "ar" | "diffusion" | a mode registered later (e.g. block diffusion)
    checkpoint: str
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def is_ar(self) -> bool:
        return self.mode in AR_MODES


def default_systems(diffusion_ckpts: Sequence[str], ar_ckpt: str | None) -> list[System]:
    """The diffusion-vs-AR pair. ``diffusion_ckpts`` may hold several checkpoints (e.g. one trained
    from scratch and one adapted from AR), then named by their paths. Given one checkpoint for both
    modes, the same weights run in both, and the names say so."""
    if len(set(diffusion_ckpts)) < len(diffusion_ckpts):
        raise UserError("--diffusion got the same checkpoint twice; pass each checkpoint once")
    systems = []
    same = len(diffusion_ckpts) == 1 and ar_ckpt is not None and diffusion_ckpts[0] == ar_ckpt
    if ar_ckpt is not None:
        systems.append(System("AR mode (same weights)" if same else "AR", "ar", ar_ckpt))
    for path in diffusion_ckpts:
        name = ("diffusion mode (same weights)" if same else "diffusion" if len(diffusion_ckpts) == 1
                else f"diffusion ({path})")
        systems.append(System(name, "diffusion", path))
    return systems
