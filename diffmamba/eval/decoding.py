"""The decoding regimes of issue "where diffusion beats AR" in ``diffmamba eval``: the parallel
sampler's threshold in a sampler spec, and speculative systems.

- ``--samplers parallel:0.7 parallel:0.9``: ``split_sampler`` turns a spec into the registered
  sampler name and its knobs, so several thresholds are several settings (rows, plot points).
- ``System(mode="speculative", settings={"draft_len": k, "draft_steps": s})`` on a dual checkpoint
  (``decoding_options.dual_systems``): ``eval.sampling`` decodes it through ``sampling.generate``
  (``sampling.speculative``, AR's exact distribution, so its likelihood row is the AR NLL); NFE
  counts draft and verification calls (one verification per round: no rescans).
"""
from __future__ import annotations

from diffmamba.core.errors import UserError
from diffmamba.sampling.base import SamplerOptions

DEFAULT_THRESHOLD = SamplerOptions.threshold  # the parallel sampler's own default


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

