"""Backward of the chunked Mamba-3 scan.

Reference: autograd of ``diffmamba.ops.reference.scan_chunked_ref``; the split and the equations
are in diffmamba/kernels/README.md ("Backward").

Default (SISO and MIMO, any N): a **Triton backward** in three parts.

  (a) pre-pass. On [B, T, H]-sized tensors, differentiable PyTorch (``prepass.phase_and_scales`` and
      the lines after it): cumulative phase Phi, trapezoid gamma and the shifted scale
      gamma + beta~ (look-ahead one logical step), the per-step diagonal block
      c_rs = gamma (q_r . k_s) + D [r = s] (SISO: a scalar), the entry state
      G_0 = ssm0 + beta_first sum_r vp0_r kp0_r^T, and the final state's k_prev / phase.
      On the [B, T, H, R, N] tensors, Triton (``prepass.prepass_forward``): the rotated
      qr = R(Phi) q, K' = R(Phi) k * scale and the same-step q . k;
  (b) the core decayed linear recurrence in Triton (``core.core_backward``): dQr, dK',
      dv, d log_decay and dG_0, carrying the state adjoint backward over chunks;
  (c) the pre-pass backward in Triton (``prepass.prepass_backward``): dq, dk, and the
      per-step dPhi, dscale that seed, with dc = dy v^T, dG_0 and the final state's upstream
      gradients, one ``torch.autograd.grad`` over the small graph of (a).

Fallback: the **recompute** backward (``_recompute_backward``): re-run the differentiable
chunked reference in float32 under autograd. Used when the environment sets
``DIFFMAMBA_SCAN_BWD=recompute`` (debugging, A/B timing) and, by default, with a warning, when a
GPU's Triton compiler rejects the backward kernels (``DIFFMAMBA_SCAN_BWD=triton`` makes that an
error instead: the GPU tests set it, so a fallback cannot hide a failure).
"""

from __future__ import annotations

import os
import warnings

import torch
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources, PTXASError

from diffmamba.ops.reference import rotate, scan_chunked_ref
from diffmamba.ops.state import Mamba3State

from .core import chunk_rows, core_backward
from .prepass import entry_state, phase_and_scales, prepass_backward, prepass_forward


def backward_mode() -> str:
    """``DIFFMAMBA_SCAN_BWD``: 'auto' (unset: Triton, falling back to recompute with a warning if
    the GPU's compiler rejects the kernels), 'triton' (no fallback: a compile failure raises, as
    the GPU tests and the benchmark want) or 'recompute'."""
    mode = os.environ.get("DIFFMAMBA_SCAN_BWD", "auto")
    if mode not in ("auto", "triton", "recompute"):
        raise ValueError(f"DIFFMAMBA_SCAN_BWD must be 'auto', 'triton' or 'recompute', got {mode!r}")
    return mode


def scan_backward(q, k, v, a, dt, lam, dph, D, init, dy, dfinal, *, reverse, chunk_size, needs):
    """Gradients (q, k, v, a, dt, lam, dphase, D, ssm0, k_prev0, v_prev0, phase0), rank form.

    ``needs`` is ctx.needs_input_grad for those 12 inputs; entries not needed come back None.
    ``dfinal`` holds the upstream gradients of the final state's fields (None entries allowed)
    or is None when the forward returned no state.
    """
    global _TRITON_BWD_BROKEN
    mode = backward_mode()
    if mode == "triton":
        return _triton_backward(q, k, v, a, dt, lam, dph, D, init, dy, dfinal,
                                reverse=reverse, chunk_size=chunk_size, needs=needs)
    if mode == "auto" and not _TRITON_BWD_BROKEN:
        try:
            return _triton_backward(q, k, v, a, dt, lam, dph, D, init, dy, dfinal,
                                    reverse=reverse, chunk_size=chunk_size, needs=needs)
        except (CompilationError, OutOfResources, PTXASError) as e:
            # The Triton backward was validated under the interpreter; a GPU whose compiler or
            # resources reject it must still train, so fall back (correct, slower) and say so once.
            _TRITON_BWD_BROKEN = True
            warnings.warn(f"Triton scan backward failed to compile on this GPU ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); using the recompute backward from now on. "
                          "Please report it with `python scripts/bench_kernels.py` output.", RuntimeWarning)
    return _recompute_backward(q, k, v, a, dt, lam, dph, D, init, dy, dfinal,
                               reverse=reverse, chunk_size=chunk_size, needs=needs)


# Set once a GPU's Triton compiler rejects the backward kernels (see scan_backward).
_TRITON_BWD_BROKEN = False


def _triton_backward(q, k, v, a, dt, lam, dph, D, init, dy, dfinal, *, reverse, chunk_size, needs):
    """Pre-pass (Triton for the [B, T, H, R, N] tensors, autograd for the small ones), Triton
    core, then one ``torch.autograd.grad`` over the small graph (module docstring)."""
    T, R = q.shape[1], q.shape[3]
    first, last = (T - 1, 0) if reverse else (0, T - 1)
    dfinal = dfinal if dfinal is not None else (None,) * 4
    dh1, dkp1, dvp1, dph1 = dfinal
    # leaves of the small graph, float32, rank form; q and k reach it only as the last raw key
    raw = [dt, lam, dph, D, k[:, last]] + (list(init) if init is not None else [None] * 4)
    need_of = [needs[4], needs[5], needs[6], needs[7], needs[1]] + list(needs[8:12])
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().float().requires_grad_(bool(nd))
                  for t, nd in zip(raw, need_of)]
        ldt, llam, ldph, lD, lk_last, lh0, lkp0, lvp0, lph0 = leaves
        phase, gamma, beta, scale = phase_and_scales(ldt, llam, ldph, lph0, reverse)
    phase_c, scale_c, gamma_c = (t.detach().contiguous() for t in (phase, scale, gamma))
    qr, kp, qk = prepass_forward(q, k, phase_c, scale_c)
    with torch.enable_grad():
        # same-step block c_rs = gamma (q_r . k_s) + D [r = s]; qk is a constant here (its q, k
        # gradients come from prepass_backward)
        c = gamma[..., None, None] * qk
        if lD is not None:
            c = c + lD[:, None, None] * torch.eye(R, device=q.device, dtype=torch.float32)
        g0 = None
        if init is not None:
            g0 = entry_state(lh0, lkp0, lvp0, beta, first)
        ph_last = phase[:, last]
        kr_last = rotate(lk_last, ph_last.unsqueeze(2))

    dy = dy.contiguous()
    dq_core, dk_core, dv, da, dg0 = core_backward(
        qr, kp, v, a, None if g0 is None else g0.detach().contiguous(), dy,
        None if dh1 is None else dh1.float().contiguous(), reverse=reverse,
        chunk=chunk_rows(chunk_size, R))
    del qr, kp

    # diagonal block: y += c @ v  ->  dc = dy @ v^T, dv += c^T @ dy; the final v_prev is the last v
    dyf, vf = dy.float(), v.float()
    if R == 1:  # a dot product and a scaling: as batched 1 x P matmuls they took 0.9 ms at bt16k-h16
        dc = (dyf * vf).sum(-1, keepdim=True)  # [B, T, H, 1, 1]
        dv += c.detach() * dyf
    else:
        dc = dyf @ vf.transpose(-1, -2)
        dv += c.detach().transpose(-1, -2) @ dyf
    if dvp1 is not None:
        dv[:, last] += dvp1.float()
    dq, dk, dphi, dscale = prepass_backward(q, k, phase_c, scale_c, gamma_c, dq_core, dk_core,
                                            dc.contiguous())

    outs, seeds = [phase, scale, c], [dphi, dscale, dc]
    if g0 is not None:
        outs.append(g0)
        seeds.append(dg0)
    if dkp1 is not None:
        outs.append(kr_last)
        seeds.append(dkp1.float())
    if dph1 is not None:
        outs.append(ph_last)
        seeds.append(dph1.float())
    pairs = [(o, s) for o, s in zip(outs, seeds) if o.requires_grad]
    wanted = [i for i, t in enumerate(leaves) if t is not None and t.requires_grad]
    grads = [None] * len(leaves)
    if wanted and pairs:
        got = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in wanted],
                                  [s for _, s in pairs], allow_unused=True)
        for i, g in zip(wanted, got):
            grads[i] = g
    gdt, glam, gdph, gD, gk_last, gh0, gkp0, gvp0, gph0 = grads
    if gk_last is not None:  # the final k_prev is the last key, rotated
        dk[:, last] += gk_last

    inputs = [q, k, v, a, dt, lam, dph, D] + (list(init) if init is not None else [None] * 4)
    rank_form = [dq, dk, dv, da, gdt, glam, gdph, gD, gh0, gkp0, gvp0, gph0]
    out = [None] * 12
    for i, (g, x) in enumerate(zip(rank_form, inputs)):
        if x is None or not needs[i]:
            continue
        if g is None:
            g = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
        out[i] = g.to(x.dtype)
    return out


def _recompute_backward(q, k, v, a, dt, lam, dph, D, init, dy, dfinal, *, reverse, chunk_size, needs):
    """Re-run ``scan_chunked_ref`` in float32 under autograd and pull every gradient (fallback)."""
    inputs = [q, k, v, a, dt, lam, dph, D]
    inputs += list(init) if init is not None else [None] * 4
    with torch.enable_grad():
        leaves = [
            None if t is None else t.detach().float().requires_grad_(bool(need))
            for t, need in zip(inputs, needs)
        ]
        state = Mamba3State(*leaves[8:]) if init is not None else None
        y, final = scan_chunked_ref(
            *leaves[:7], D=leaves[7], reverse=reverse, initial_state=state,
            chunk_size=chunk_size,
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
