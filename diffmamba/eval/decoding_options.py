"""``diffmamba eval`` options for a dual checkpoint: ``--dual CKPT`` and ``--draft-lens K...``.

A dual checkpoint (``--objective dual``) is one set of weights with three ways to decode, and
``--dual`` adds all three to the comparison: AR mode, block diffusion on its AR prefix states (its
training block size; any ``--samplers``, e.g. ``parallel:0.9``, inside each block) and
self-speculative decoding with each draft length. Kept free of torch imports (the eval CLI builds
its parser from these before anything heavy loads).
"""
from __future__ import annotations

from diffmamba.config import check_draft_len
from diffmamba.core.errors import UserError
from diffmamba.eval.bd3lm_options import trained_objective
from diffmamba.eval.systems import System


def dual_systems(checkpoint: str, draft_lens=None) -> list:
    """The three systems of a dual checkpoint: AR, block on AR states, speculative per draft length."""
    objective = trained_objective(checkpoint)
    if objective is None or objective.name != "dual":
        trained = "has no run config" if objective is None else f"was trained with objective {objective.name!r}"
        raise UserError(f"--dual {checkpoint} {trained}; --dual takes a checkpoint trained with --objective dual "
                        "(pass others with --ar / --diffusion / --block)")
    lens = list(draft_lens) if draft_lens else [max(objective.block_size - 1, 1)]
    for k in lens:
        check_draft_len(int(k), "--draft-lens")
    size = objective.block_size
    return ([System("AR (dual)", "ar", checkpoint),
             System(f"block L'={size} (dual)", "block", checkpoint,
                    {"block_size": size, "trained_block_size": size, "ar_prefix": True})]
            + [System(f"speculative k={k} (dual)", "speculative", checkpoint, {"draft_len": int(k), "draft_steps": 1})
               for k in lens])


def apply_decoding_options(args, opts) -> None:
    dual = getattr(args, "dual", None)
    if dual:
        opts.systems = list(opts.systems) + dual_systems(dual, getattr(args, "draft_lens", None))
    elif getattr(args, "draft_lens", None):
        raise UserError("--draft-lens applies to a --dual checkpoint; pass --dual CKPT as well")
