"""Training objectives as the loop sees them: the name -> ``Objective`` registry.

| module | what |
|---|---|
| ``base`` | ``MicroBatch`` in, ``NLL`` (sum, count) out, the ``Objective`` record |
| ``schedule`` / ``masking`` | alpha_t and the NELBO weight; stratified times, q(x_t given x_0), length cuts |
| ``mdlm`` | SUBS masked-diffusion NELBO (one time per sequence), and the loops block diffusion shares |
| ``bd3lm`` | block-diffusion NELBO: one time per block of L' tokens, the two-stream forward |
| ``ar`` | shifted next-token cross-entropy on the same trunk |
| ``dual`` | AR loss + block diffusion on the AR stream's states, one forward (``objective.ar_weight`` mixes) |

To add an objective, write ``train(model, MicroBatch, ObjectiveConfig) -> NLL`` and
``evaluate(model, tokens, valid, generator, ObjectiveConfig) -> NLL`` and register them here.
"""
from __future__ import annotations

from diffmamba.objectives import ar, bd3lm, dual, mdlm
from diffmamba.objectives.base import NLL, MicroBatch, Objective
from diffmamba.objectives.mdlm import diffusion_times

OBJECTIVES: dict[str, Objective] = {
    "diffusion": Objective(mdlm.diffusion_train, mdlm.diffusion_eval, "diffusion"),
    "ar": Objective(ar.ar_train, ar.ar_eval, "ar"),
    "block_diffusion": Objective(bd3lm.block_diffusion_train, bd3lm.block_diffusion_eval, "block_diffusion"),
    # validation: the exact AR NLL (val_ppl comparable with an AR run); eval compare measures the block side
    "dual": Objective(dual.dual_train, ar.ar_eval, "dual"),
}

__all__ = ["NLL", "OBJECTIVES", "MicroBatch", "Objective", "diffusion_times"]
