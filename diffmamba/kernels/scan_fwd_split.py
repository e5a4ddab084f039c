"""The chunk-parallel ("split") forward of the Mamba-3 scan, built from the backward's kernels.

The fused forward (``scan_fwd.py``) runs one program per (batch, head) through all chunks, so it
has only B*H programs: 128 at the benchmark shape, on a 132-SM H100 (11.5% of the memory roofline,
docs/benchmarks.md). This forward splits the work as Mamba-2's SSD does, into

  pre-pass     ``prepass.prepass_forward``: qr = R(Phi) q, K' = R(Phi) k scale, same-step q . k
               (one program per 16-64 rows: fully parallel)
  state walk   ``core.walk_states``: the state entering every chunk (one program per (b, h),
               one [N, rows] x [rows, P] product per chunk, against the fused kernel's seven)
  outputs      ``core.chunk_outputs``: y per chunk from its entering state (one program per
               (b*h, chunk, value block): fully parallel)

at the price of writing qr, K' (fp32) and the chunk states to memory. Which is faster depends on
B*H and the GPU: ``DIFFMAMBA_SCAN_FWD=split`` selects it, and ``scripts/bench_kernels.py`` times
both side by side (``triton-split`` rows). Same arguments and results as the fused forward; the
backward is the same either way. Equations: diffmamba/kernels/README.md ("Backward", the core recurrence).
"""

from __future__ import annotations

from diffmamba.ops.reference import rotate

from .core import chunk_outputs, chunk_rows, walk_states
from .prepass import entry_state, phase_and_scales, prepass_forward
from .scan_fwd import dot_mode


def forward_split(q, k, v, a, dt, lam, dph, D, init, reverse, chunk_size, want_final, y):
    """Fill ``y`` and return the final state tuple (ssm, k_prev, v_prev, phase) or None.

    Rank form, contiguous: q, k [B, T, H, R, N]; v, y [B, T, H, R, P]; a, dt, lam [B, T, H]
    float32; dph [B, T, H, S]; D [H] or None; init (ssm [B, H, P, N] fp32, k_prev [B, H, R, N],
    v_prev [B, H, R, P], phase [B, H, S] fp32) or None.
    """
    T, R = q.shape[1], q.shape[3]
    first, last = (T - 1, 0) if reverse else (0, T - 1)
    phase, gamma, beta, scale = phase_and_scales(dt, lam, dph, None if init is None else init[3], reverse)
    qr, kp, qk = prepass_forward(q, k, phase.contiguous(), scale.contiguous())
    c = gamma[..., None, None] * qk  # same-step block gamma (q_r . k_s); D is added in fp32 later
    g0 = None
    if init is not None:
        ssm0, kp0, vp0, _ = init
        g0 = entry_state(ssm0, kp0.float(), vp0.float(), beta, first).contiguous()
    rows = chunk_rows(chunk_size, R)
    hs, g_end = walk_states(kp, v, a, g0, backward=False, reverse=reverse, chunk=rows, want_end=want_final,
                           dot=dot_mode(v.dtype, forward=True))
    chunk_outputs(qr, kp, v, a, c.contiguous(), D, hs, y, reverse=reverse, chunk=rows)
    if not want_final:
        return None
    ph_last = phase[:, last].contiguous()
    k_prev = rotate(k[:, last].float(), ph_last.unsqueeze(2)).to(k.dtype)
    return g_end, k_prev, v[:, last].clone(), ph_last
