"""The decoding regimes of issue "where diffusion beats AR" in ``diffmamba eval``: the parallel
sampler's threshold in a sampler spec, and speculative systems.

- ``--samplers parallel:0.7 parallel:0.9``: ``split_sampler`` turns a spec into the registered
  sampler name and its knobs, so several thresholds are several settings (rows, plot points).
- ``System(mode="speculative", settings={"draft_len": k, "draft_steps": s})`` on a dual checkpoint:
  ``generate_speculative_batch`` decodes with ``diffmamba.speculative`` (AR's exact distribution,
  so its likelihood row is the AR NLL); NFE counts drafts, verifications and rescans.
"""
from __future__ import annotations

from typing import Optional

import torch

from diffmamba.errors import UserError

DEFAULT_THRESHOLD = 0.9


def split_sampler(spec: str) -> tuple[str, dict]:
    """"parallel:0.7" -> ("parallel", {"threshold": 0.7}); "parallel" -> its default threshold;
    any other name -> (name, {})."""
    name, _, value = spec.partition(":")
    if name != "parallel":
        if value:
            raise UserError(f"sampler spec {spec!r}: only parallel takes a value (parallel:THRESHOLD)")
        return name, {}
    try:
        threshold = float(value) if value else DEFAULT_THRESHOLD
    except ValueError:
        raise UserError(f"sampler spec {spec!r}: write parallel:C with a threshold C in (0, 1], "
                        "e.g. parallel:0.9") from None
    if not 0 < threshold <= 1:
        raise UserError(f"sampler spec {spec!r}: the threshold must be in (0, 1], e.g. parallel:0.9")
    return name, {"threshold": threshold}


def generate_speculative_batch(model, system, setting, batch_size: int, length: int, generator: torch.Generator,
                               prompt: Optional[torch.Tensor] = None, eos_id: Optional[int] = None):
    """One batch for ``diffmamba.eval.sampling``: (tokens [B, P + length], nfe). Unconditional
    samples start from one EOS token (dropped from the output), as AR decoding's do."""
    from diffmamba.speculative import speculative_generate

    start = prompt if prompt is not None else torch.full((batch_size, 1), eos_id, dtype=torch.long,
                                                          device=generator.device)
    result = speculative_generate(model, start, length, generator, draft_len=int(system.settings["draft_len"]),
                                  draft_steps=int(system.settings.get("draft_steps", 1)),
                                  temperature=setting.temperature, top_p=setting.top_p,
                                  top_k=int(dict(setting.extra).get("top_k", 0)))
    return (result.tokens if prompt is not None else result.tokens[:, 1:]), result.nfe
