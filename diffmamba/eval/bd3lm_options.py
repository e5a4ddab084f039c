"""``diffmamba eval`` options for block diffusion: ``--block``, ``--block-sizes``, ``--contexts``.

Kept free of torch imports: the eval CLI builds its parser from these before anything heavy loads.
"""
from __future__ import annotations

from typing import Optional, Sequence

from diffmamba.config import ObjectiveConfig, RunConfig, load_config
from diffmamba.core.errors import UserError
from diffmamba.eval.loading import find_run_config
from diffmamba.eval.systems import System
from diffmamba.model_folder import find_model_dir


# ------------------------------------------------------------------------------------ systems

def trained_objective(checkpoint: str) -> Optional[ObjectiveConfig]:
    """The ``objective`` of a checkpoint's run config, None when it has no run config."""
    path = find_run_config(find_model_dir(checkpoint))
    return None if path is None else load_config(RunConfig, path).objective


def trained_block_size(checkpoint: str) -> Optional[int]:
    """``objective.block_size`` of a checkpoint's run config, None when not a block-diffusion run."""
    objective = trained_objective(checkpoint)
    return objective.block_size if objective is not None and objective.name == "block_diffusion" else None


def block_systems(checkpoints: Sequence[str], block_sizes: Optional[Sequence[int]] = None) -> list:
    """One ``System(mode="block")`` per checkpoint and block size (default: its trained size)."""

    sizes_of = {}
    for path in checkpoints:
        trained = trained_block_size(path)
        sizes = list(block_sizes) if block_sizes else [trained]
        if sizes == [None]:
            raise UserError(f"--block {path}: the checkpoint was not trained with objective block_diffusion, so it "
                            "has no block size; pass --block-sizes N (its numbers then come from weights never "
                            "trained for block sampling) or train with --objective block_diffusion")
        for size in sizes:
            if size < 1:
                raise UserError(f"--block-sizes must be >= 1, got {size}")
        sizes_of[path] = (trained, sizes)
    all_sizes = [size for _, sizes in sizes_of.values() for size in sizes]
    systems = []
    for path, (trained, sizes) in sizes_of.items():
        for size in sizes:
            # The checkpoint goes into the name only when two systems would share an L'.
            name = f"block L'={size}" + ("" if all_sizes.count(size) == 1 else f" ({path})")
            systems.append(System(name, "block", path, {"block_size": int(size), "trained_block_size": trained}))
    return systems




def apply_block_options(args, opts) -> None:
    """Add the block systems and context lengths of the parsed arguments to ``EvalOptions``."""
    if getattr(args, "block", None):
        opts.systems = list(opts.systems) + block_systems(args.block, args.block_sizes)
    elif getattr(args, "block_sizes", None):
        raise UserError("--block-sizes applies to --block checkpoints; pass --block CKPT as well")
    contexts = getattr(args, "contexts", None)
    if contexts:
        if min(contexts) < 0:
            raise UserError(f"--contexts must be >= 0, got {min(contexts)}")
        opts.contexts = tuple(contexts)
