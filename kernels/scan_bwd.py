"""Backward of the chunked Mamba-3 scan.

Reference: autograd of ``diffmamba.ops.reference.scan_chunked_ref``.

What ships: a recompute backward. The forward inputs are kept (no activations are saved by the
Triton forward) and the backward re-runs the differentiable chunked reference in float32 under
autograd, then pulls the gradients of every input and of the initial state, seeded with the
upstream gradients of y and of the final state. It is exact (fp32) but pays the reference's
memory ([B, H, T/C, C, C] score tiles) and PyTorch launch overhead; kernels/README.md says so.
"""

from __future__ import annotations

import torch

from diffmamba.ops.reference import scan_chunked_ref
from diffmamba.ops.state import Mamba3State


def scan_backward(q, k, v, a, dt, lam, dph, D, init, dy, dfinal, *, reverse, chunk_size, needs):
    """Gradients (q, k, v, a, dt, lam, dphase, D, ssm0, k_prev0, v_prev0, phase0), rank form.

    ``needs`` is ctx.needs_input_grad for those 12 inputs; entries not needed come back None.
    ``dfinal`` holds the upstream gradients of the final state's fields (None entries allowed)
    or is None when the forward returned no state.
    """
    inputs = [q, k, v, a, dt, lam, dph, D]
    inputs += list(init) if init is not None else [None] * 4
    with torch.enable_grad():
        leaves = [
            None if t is None else t.detach().float().requires_grad_(bool(need))
            for t, need in zip(inputs, needs)
        ]
        state = Mamba3State(*leaves[8:]) if init is not None else None
        R = q.shape[3]
        y, final = scan_chunked_ref(
            *leaves[:7], D=leaves[7], reverse=reverse, initial_state=state,
            chunk_size=max(1, chunk_size // R),
        )
        outs, seeds = [y], [dy.float()]
        if dfinal is not None:
            for t, g in zip(final, dfinal):
                if g is not None:
                    outs.append(t)
                    seeds.append(g.float())
        wanted = [i for i, t in enumerate(leaves) if t is not None and t.requires_grad]
        grads = torch.autograd.grad(outs, [leaves[i] for i in wanted], seeds, allow_unused=True)
    out = [None] * 12
    for i, g in zip(wanted, grads):
        if g is None:
            g = torch.zeros_like(leaves[i])
        out[i] = g.to(inputs[i].dtype)
    return out
