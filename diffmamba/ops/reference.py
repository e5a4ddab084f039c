"""Pure-PyTorch Mamba-3 scan: the executable spec every kernel is tested against.

Shape glossary (used in every docstring of ``diffmamba.ops``):

    B  batch                         T  time (sequence length)
    H  heads                         P  value head dim (headdim)
    N  state size (q/k dim)          R  MIMO rank (absent for SISO)
    S  rotary angle pairs, S <= N // 2 (the pairs (2i, 2i+1), i < S, are rotated)
    C  chunk length of the chunked form (a number of time steps; a MIMO chunk has C*R rows)

Recurrence per head in the RoPE frame (docs/contracts.md §1, docs/mamba3.md §1.3-1.6):

    Phi_t = Phi_{t-1} + dphase_t (mod 2*pi)      kr_t = R(Phi_t) k_t,   qr_t = R(Phi_t) q_t
    h_t   = exp(a_t) h_{t-1} + (1 - lam_t) dt_t exp(a_t) kr_{t-1} v_{t-1}^T + lam_t dt_t kr_t v_t^T
    y_t   = h_t^T qr_t + D v_t

with h stored as [P, N] per head. MIMO replaces each outer product by a sum over the R ranks and
gives one output per rank. Everything here runs in float64 for float64 inputs and in float32
otherwise (bf16/fp16 inputs are upcast); ``y`` comes back in ``v``'s dtype. D is [H]; the scans
here also take a per-row D [B, H] (``mamba3_scan_pair`` stacks two directions, each with its own
D, along B).

Internally SISO tensors are given a rank axis of size 1 ("rank form"), so one code path serves both.
``reverse=True`` is defined as flip -> forward scan -> flip along T and implemented exactly so.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from einops import rearrange

from .state import Mamba3State

TWO_PI = 2.0 * math.pi


def rotate(x: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[2i], x[2i+1]), i < S, of the last axis by ``phase[..., i]``.

    x: [..., N]; phase: [..., S] broadcastable against x's leading axes, S <= N // 2.
    x0' = x0 cos - x1 sin, x1' = x0 sin + x1 cos; channels 2S..N-1 pass through unchanged.
    """
    num_pairs = phase.shape[-1]
    if num_pairs == 0:
        return x
    pairs = x[..., : 2 * num_pairs].unflatten(-1, (num_pairs, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = phase.cos(), phase.sin()
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    return torch.cat((rotated, x[..., 2 * num_pairs :]), dim=-1)


def _rotation_factor(phase: torch.Tensor, N: int) -> torch.Tensor:
    """exp(i * phase) on the first S of the N/2 complex pairs, 1 on the rest: [..., N/2] complex."""
    factor = torch.polar(torch.ones_like(phase), phase)
    num_pairs = phase.shape[-1]
    if num_pairs < N // 2:
        unrotated = factor.new_ones(()).expand(*factor.shape[:-1], N // 2 - num_pairs)
        factor = torch.cat((factor, unrotated), dim=-1)
    return factor


def _rotate_by_complex_product(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``rotate(x, phase)`` as one complex multiplication by ``_rotation_factor(phase, N)``.

    One pass over x instead of slicing, stacking and concatenating (the chunked form rotates
    every q and k, and q and k share the factor). x: float32/float64 [..., N], N even.
    """
    pairs = x.unflatten(-1, (x.shape[-1] // 2, 2))
    if pairs.storage_offset() % 2 or any(stride % 2 for stride in pairs.stride()[:-1]):
        pairs = pairs.clone(memory_format=torch.contiguous_format)  # complex-aligned copy
    return torch.view_as_real(torch.view_as_complex(pairs) * factor).flatten(-2)


def cumulative_phase(start: torch.Tensor, dphase: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Phi_t = start + sum_{s<=t} dphase_s, mod 2 pi: [B, T, H, S] from start [B, H, S].

    The running sum is taken in float64 so fp32 angles do not drift over long T, and reduced mod
    2 pi before any cos / sin (docs/mamba3.md §6.3); the result comes back in ``dtype``.
    """
    return torch.remainder(start.double().unsqueeze(1) + dphase.double().cumsum(dim=1), TWO_PI).to(dtype)


def compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """float64 if any input is float64, else float32 (low-precision inputs accumulate in fp32)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


# ----------------------------------------------------------------------------------------------
# rank form helpers


def to_rank_form(q, k, v, state: Optional[Mamba3State], time_axis: bool):
    """Give SISO tensors a rank axis of size 1 (after H); MIMO tensors pass through."""
    rank_axis = 3 if time_axis else 2
    is_siso = q.dim() == rank_axis + 1
    if is_siso:
        q, k, v = q.unsqueeze(rank_axis), k.unsqueeze(rank_axis), v.unsqueeze(rank_axis)
        if state is not None:
            state = state._replace(k_prev=state.k_prev.unsqueeze(2), v_prev=state.v_prev.unsqueeze(2))
    return is_siso, q, k, v, state


def from_rank_form(is_siso: bool, y: torch.Tensor, state: Optional[Mamba3State], time_axis: bool):
    if not is_siso:
        return y, state
    y = y.squeeze(3 if time_axis else 2)
    if state is None:
        return y, None
    return y, state._replace(k_prev=state.k_prev.squeeze(2), v_prev=state.v_prev.squeeze(2))


def state_in_compute_dtype(state, batch, heads, rank, P, N, S, dtype, device) -> Mamba3State:
    """The given rank-form state cast to the compute dtype, or a zero one (= no previous token)."""
    if state is None:
        zero = Mamba3State.zeros(batch, heads, P, N, S, R=rank, dtype=dtype, device=device)
        return zero
    return Mamba3State(*(t.to(dtype) for t in state))


def _state_out(state: Mamba3State, k_dtype, v_dtype) -> Mamba3State:
    """Contract dtypes: ssm/phase stay in the compute dtype, k_prev/v_prev in the input dtypes."""
    return state._replace(k_prev=state.k_prev.to(k_dtype), v_prev=state.v_prev.to(v_dtype))


def _flip_time(*tensors):
    return tuple(t.flip(1) for t in tensors)


# ----------------------------------------------------------------------------------------------
# one token


def _step_core(q, k, v, a, dt, lam, dphase, D, state: Mamba3State):
    """One token in rank form and compute dtype.

    q, k: [B, H, R, N]; v: [B, H, R, P]; a, dt, lam: [B, H]; dphase: [B, H, S]; D: [H] or None.
    Returns y [B, H, R, P] and the new state (k_prev rotated by its own phase).
    """
    phase = torch.remainder(state.phase + dphase, TWO_PI)
    qr = rotate(q, phase.unsqueeze(2))
    kr = rotate(k, phase.unsqueeze(2))
    alpha = a.exp()
    beta = (1.0 - lam) * dt * alpha
    gamma = lam * dt
    previous_input = torch.einsum("bhrp,bhrn->bhpn", state.v_prev, state.k_prev)
    current_input = torch.einsum("bhrp,bhrn->bhpn", v, kr)
    ssm = (
        alpha[..., None, None] * state.ssm
        + beta[..., None, None] * previous_input
        + gamma[..., None, None] * current_input
    )
    y = torch.einsum("bhpn,bhrn->bhrp", ssm, qr)
    if D is not None:
        y = y + D[..., None, None] * v  # D [H], or [B, H] per row
    return y, Mamba3State(ssm, kr, v, phase)


def scan_step_ref(q, k, v, log_decay, dt, trap, dphase, D=None, state=None):
    """One token: the recurrence of the module docstring, state in -> (y, state out).

    q, k: [B, H, N] or [B, H, R, N]; v: [B, H, P] or [B, H, R, P]; log_decay, dt, trap: [B, H];
    dphase: [B, H, S]; D: [H] or None; state: Mamba3State or None (fresh).
    Returns y (v's shape and dtype) and the new Mamba3State.
    """
    dtype = compute_dtype(q, k, v, log_decay, dt, trap, dphase)
    is_siso, q, k, v, state = to_rank_form(q, k, v, state, time_axis=False)
    batch, heads, rank, N = q.shape
    state = state_in_compute_dtype(
        state, batch, heads, rank, v.shape[-1], N, dphase.shape[-1], dtype, q.device
    )
    cast = [t.to(dtype) for t in (q, k, v, log_decay, dt, trap, dphase)]
    y, new_state = _step_core(*cast, None if D is None else D.to(dtype), state)
    new_state = _state_out(new_state, k.dtype, v.dtype)
    return from_rank_form(is_siso, y.to(v.dtype), new_state, time_axis=False)


# ----------------------------------------------------------------------------------------------
# per-token loop


def scan_recurrent_ref(
    q, k, v, log_decay, dt, trap, dphase, D=None, reverse=False, initial_state=None
):
    """The recurrence, literally, one token at a time (slow; the ground truth).

    q, k: [B, T, H, N] or [B, T, H, R, N]; v: [B, T, H, P] or [B, T, H, R, P];
    log_decay, dt, trap: [B, T, H]; dphase: [B, T, H, S]; D: [H] or None.
    Returns y (v's shape and dtype) and the final Mamba3State.
    """
    if reverse:
        flipped = _flip_time(q, k, v, log_decay, dt, trap, dphase)
        y, state = scan_recurrent_ref(*flipped, D=D, initial_state=initial_state)
        return y.flip(1), state
    dtype = compute_dtype(q, k, v, log_decay, dt, trap, dphase)
    out_dtypes = (k.dtype, v.dtype)
    is_siso, q, k, v, state = to_rank_form(q, k, v, initial_state, time_axis=True)
    batch, T, heads, rank, N = q.shape
    state = state_in_compute_dtype(
        state, batch, heads, rank, v.shape[-1], N, dphase.shape[-1], dtype, q.device
    )
    q, k, v, log_decay, dt, trap, dphase = (
        t.to(dtype) for t in (q, k, v, log_decay, dt, trap, dphase)
    )
    D = None if D is None else D.to(dtype)
    outputs = []
    for t in range(T):
        y_t, state = _step_core(
            q[:, t], k[:, t], v[:, t], log_decay[:, t], dt[:, t], trap[:, t], dphase[:, t], D, state
        )
        outputs.append(y_t)
    y = torch.stack(outputs, dim=1).to(out_dtypes[1])
    return from_rank_form(is_siso, y, _state_out(state, *out_dtypes), time_axis=True)


def scan_rotating_state_ref(q, k, v, log_decay, dt, trap, dphase, D=None):
    """Test oracle for the RoPE trick: rotate the *state* each step, keep q and k unrotated.

    The complex-eigenvalue form of docs/mamba3.md §1.4. With h stored as [P, N] the state's N axis
    is rotated by R(dphase_t)^T each step (i.e. h <- h R(dphase_t) row-wise), which is the sign
    that makes qr_t . kr_j = q_t . R(Phi_j - Phi_t) k_j hold:

        h~_t = exp(a_t) [h~_{t-1} + (1 - lam_t) dt_t k_{t-1} v_{t-1}^T] R(dphase_t) + lam_t dt_t k_t v_t^T
        y_t  = h~_t^T q_t + D v_t

    Fresh start only, forward only. Shapes as ``scan_recurrent_ref``. Returns y and the final
    state h~_T [B, H, P, N] in the unrotated frame; the RoPE-frame state is R(Phi_T) applied to it.
    """
    dtype = compute_dtype(q, k, v, log_decay, dt, trap, dphase)
    is_siso, q, k, v, _ = to_rank_form(q, k, v, None, time_axis=True)
    q, k, v, log_decay, dt, trap, dphase = (
        t.to(dtype) for t in (q, k, v, log_decay, dt, trap, dphase)
    )
    batch, T, heads, _, N = q.shape
    h = torch.zeros(batch, heads, v.shape[-1], N, dtype=dtype, device=q.device)
    previous_input = torch.zeros_like(h)
    outputs = []
    for t in range(T):
        alpha = log_decay[:, t].exp()[..., None, None]
        beta_over_alpha = ((1.0 - trap[:, t]) * dt[:, t])[..., None, None]
        gamma = (trap[:, t] * dt[:, t])[..., None, None]
        carried = rotate(h + beta_over_alpha * previous_input, -dphase[:, t].unsqueeze(2))
        current_input = torch.einsum("bhrp,bhrn->bhpn", v[:, t], k[:, t])
        h = alpha * carried + gamma * current_input
        y_t = torch.einsum("bhpn,bhrn->bhrp", h, q[:, t])
        if D is not None:
            y_t = y_t + D.to(dtype)[:, None, None] * v[:, t]
        outputs.append(y_t)
        previous_input = current_input
    y = torch.stack(outputs, dim=1)
    return (y.squeeze(3) if is_siso else y), h


# ----------------------------------------------------------------------------------------------
# every-token states (short scans)


def scan_states_ref(q, k, v, log_decay, dt, trap, dphase, D=None, reverse=False, initial_state=None):
    """The recurrence with its per-token work batched over T; returns y and the state after *each* token.

    Only h_t = alpha_t h_{t-1} + u_t runs token by token (two elementwise ops per token); the
    updates u_t = alpha_t beta_t v_{t-1} kr_{t-1}^T + gamma_t v_t kr_t^T and the readout
    y_t = h_t^T qr_t + D v_t are one batched op each. It writes all B*T states ([B, T, H, P, N]), so
    it is the form for *small* scans: a speculative draft or its scoring (T = k + 1 tokens) at batch
    1, an AR prompt of a few tokens, where it runs half the chunked form's ops (decoding on a CPU is
    then bound by the number of ops, not by FLOPs); past ~2^18 state floats its memory traffic makes
    it slower than the chunked form (docs/mamba3.md §2.5).

    Shapes as ``scan_recurrent_ref``. Returns y (v's shape and dtype) and a Mamba3State with a T
    axis after B whose entry t is the final state of the scan over the first t + 1 tokens *in scan
    order* (for ``reverse``: the last t + 1 tokens); entry T - 1 is the scan's final state.
    """
    if reverse:
        y, states = scan_states_ref(*_flip_time(q, k, v, log_decay, dt, trap, dphase), D=D,
                                    initial_state=initial_state)
        return y.flip(1), states
    with torch.autocast(device_type=q.device.type, enabled=False):  # the einsums accumulate in fp32/fp64
        return _scan_states(q, k, v, log_decay, dt, trap, dphase, D, initial_state)


def _scan_states(q, k, v, log_decay, dt, trap, dphase, D, initial_state):
    dtype = compute_dtype(q, k, v, log_decay, dt, trap, dphase)
    out_dtypes = (k.dtype, v.dtype)
    is_siso, q, k, v, state = to_rank_form(q, k, v, initial_state, time_axis=True)
    batch, T, heads, rank, N = q.shape
    state = state_in_compute_dtype(state, batch, heads, rank, v.shape[-1], N, dphase.shape[-1], dtype, q.device)
    q, k, v, log_decay, dt, trap = (t.to(dtype) for t in (q, k, v, log_decay, dt, trap))
    phase = cumulative_phase(state.phase, dphase, dtype)
    qr, kr = rotate(q, phase.unsqueeze(3)), rotate(k, phase.unsqueeze(3))
    current = torch.einsum("bthrp,bthrn->bthpn", v, kr)  # v_t kr_t^T, summed over ranks
    previous = torch.cat((torch.einsum("bhrp,bhrn->bhpn", state.v_prev, state.k_prev).unsqueeze(1),
                          current[:, :-1]), dim=1)
    alpha = log_decay.clamp(max=0.0).exp()[..., None, None]  # [B, T, H, 1, 1]
    update = alpha * ((1.0 - trap) * dt)[..., None, None] * previous + (trap * dt)[..., None, None] * current
    ssm, states = state.ssm, []
    for alpha_t, update_t in zip(alpha.unbind(1), update.unbind(1)):
        ssm = alpha_t * ssm + update_t
        states.append(ssm)
    ssm = torch.stack(states, dim=1)  # [B, T, H, P, N]
    y = torch.einsum("bthpn,bthrn->bthrp", ssm, qr)
    if D is not None:
        y = y + (D if D.dim() == 1 else D[:, None]).to(dtype)[..., None, None] * v  # [H] or per row [B, H]
    every = Mamba3State(ssm, kr.to(out_dtypes[0]), v.to(out_dtypes[1]), phase)
    if is_siso:
        y, every = y.squeeze(3), every._replace(k_prev=every.k_prev.squeeze(3), v_prev=every.v_prev.squeeze(3))
    return y.to(out_dtypes[1]), every


def last_state(every: Mamba3State) -> Mamba3State:
    """The final state of a ``scan_states_ref`` result (its entry T - 1)."""
    return Mamba3State(*(x[:, -1] for x in every))


# ----------------------------------------------------------------------------------------------
# chunked (SSD-style) form


def _strictly_lower_decay(local_cumsum: torch.Tensor, rank: int) -> torch.Tensor:
    """exp(l_i - l_j) for j < i inside each chunk, 0 elsewhere; rows/cols repeated R times.

    local_cumsum: [B, H, nc, C] inclusive cumsum of a_t <= 0, reset at every chunk start.
    Returns [B, H, nc, C*R, C*R] (the kron with ones(R, R) of the MIMO stacking).
    """
    C = local_cumsum.shape[-1]
    difference = local_cumsum[..., :, None] - local_cumsum[..., None, :]
    not_strictly_lower = torch.ones(C, C, dtype=torch.bool, device=local_cumsum.device).triu()
    # Masked exponents become -inf (exp -> 0, and exp's backward multiplies by that 0): left as
    # l_i - l_j > 0 they could overflow to inf, and inf * 0 is NaN. Kept ones are <= 0 since a <= 0.
    decay = difference.masked_fill(not_strictly_lower, float("-inf")).exp()
    if rank > 1:
        decay = decay.repeat_interleave(rank, dim=-1).repeat_interleave(rank, dim=-2)
    return decay


def _chunk_view(x: torch.Tensor, num_chunks: int, chunk: int) -> torch.Tensor:
    """[B, T', H, ...] (T' = num_chunks * chunk) -> a [B, H, nc, C, ...] view (no copy)."""
    return rearrange(x, "b (nc c) h ... -> b h nc c ...", nc=num_chunks, c=chunk)


def _pad_time(x: torch.Tensor, pad: int) -> torch.Tensor:
    if pad == 0:
        return x
    return torch.cat((x, x.new_zeros(x.shape[0], pad, *x.shape[2:])), dim=1)


def scan_chunked_ref(
    q, k, v, log_decay, dt, trap, dphase, D=None, reverse=False, initial_state=None, chunk_size=64,
    final_state=True,
):
    """Chunked parallel form with the shifted-scale trick (docs/mamba3.md §2.2); autograd-friendly.

    Shapes as ``scan_recurrent_ref``; returns y (v's shape and dtype) and the final Mamba3State,
    equal to the per-token loop up to rounding (None with ``final_state=False``, which skips the last
    chunk's state update: a [B, H, P, N] product and sum per call, the bulk of a short scan such as
    a block of block diffusion). Per chunk of C time steps (C*R rows for MIMO):

        y_i = exp(l_i) qr_i h_c^T                               inter-chunk (state entering it)
            + sum_{j<i} (qr_i . k'_j) exp(l_i - l_j) v_j        intra-chunk, strictly lower
            + (gamma_i (q_i . k_i) + D) v_i                     diagonal, unrotated q . k
        h_{c+1} = exp(l_last) h_c + sum_j exp(l_last - l_j) v_j k'_j^T

    with l the chunk-local cumsum of a, k'_t = kr_t (gamma_t + beta~_t), gamma_t = lam_t dt_t and
    beta~_t = (1 - lam_{t+1}) dt_{t+1} (looks one token ahead across chunk boundaries; 0 for the
    last token, so the returned h excludes the not-yet-known beta term of the next token).
    """
    if reverse:
        flipped = _flip_time(q, k, v, log_decay, dt, trap, dphase)
        y, state = scan_chunked_ref(
            *flipped, D=D, initial_state=initial_state, chunk_size=chunk_size, final_state=final_state
        )
        return y.flip(1), state
    dtype = compute_dtype(q, k, v, log_decay, dt, trap, dphase)
    out_dtypes = (k.dtype, v.dtype)
    is_siso, q, k, v, state = to_rank_form(q, k, v, initial_state, time_axis=True)
    batch, T, heads, rank, N = q.shape
    P = v.shape[-1]
    state = state_in_compute_dtype(state, batch, heads, rank, P, N, dphase.shape[-1], dtype, q.device)
    q, k, v, log_decay, dt, trap = (t.to(dtype) for t in (q, k, v, log_decay, dt, trap))
    # a <= 0 by contract; clamping it here (a [B, T, H] tensor) makes every decay exponent below
    # <= 0 -- cumsums of non-positive numbers are monotone even in floating point.
    log_decay = log_decay.clamp(max=0.0)

    phase = cumulative_phase(state.phase, dphase, dtype)

    # A resumed scan owes the first token's beta term to the cached previous token,
    # beta_0 kr_prev v_prev^T (R terms for MIMO); the decay of chunk 0 supplies its exp(a_0) factor.
    # Chunk 0's outputs take it as R rank-one terms, beta_0 (qr_i . kr_prev) v_prev (below), so the
    # [B, H, P, N] sum is formed only when a state passes on: several chunks, or a final state.
    resumed = initial_state is not None
    first_beta = ((1.0 - trap[:, 0]) * dt[:, 0])[..., None, None]  # [B, H, 1, 1]
    h_entering = state.ssm

    # Pad to whole chunks with inert tokens: a = 0 (decay 1), dt = 0 (no input, and beta~ of the
    # last real token becomes 0 by itself) and zero queries/keys/values.
    chunk = max(1, min(chunk_size, T))
    num_chunks = -(-T // chunk)
    pad = num_chunks * chunk - T
    # Chunk-major layout [B, H, nc, C, ...]. q, k, v are gathered into it once, contiguously:
    # elementwise ops keep a permuted input's strides, so every later reshape into [C*R, N]
    # matrices would otherwise gather again.
    q_c, k_c, v_c, phase_c, log_decay_c, dt_c, trap_c = (
        _chunk_view(_pad_time(x, pad), num_chunks, chunk)
        for x in (q, k, v, phase, log_decay, dt, trap)
    )
    q_c, k_c, v_c = q_c.contiguous(), k_c.contiguous(), v_c.contiguous()

    if N % 2 == 0:
        factor = _rotation_factor(phase_c.unsqueeze(-2), N)
        qr = _rotate_by_complex_product(q_c, factor)  # [B, H, nc, C, R, N]
        kr = _rotate_by_complex_product(k_c, factor)
    else:
        qr, kr = rotate(q_c, phase_c.unsqueeze(-2)), rotate(k_c, phase_c.unsqueeze(-2))
    gamma = trap_c * dt_c  # [B, H, nc, C]
    beta = ((1.0 - trap_c) * dt_c).flatten(2, 3)
    beta_ahead = torch.cat((beta[..., 1:], beta.new_zeros(batch, heads, 1)), dim=-1).view_as(gamma)
    k_scaled = kr * (gamma + beta_ahead)[..., None, None]

    rows = chunk * rank  # MIMO stacks the R rank rows of each time step: C*R rows per chunk
    q_rows = qr.reshape(batch, heads, num_chunks, rows, N)
    k_rows = k_scaled.reshape(batch, heads, num_chunks, rows, N)
    v_rows = v_c.reshape(batch, heads, num_chunks, rows, P)
    local_cumsum = log_decay_c.cumsum(dim=-1)  # [B, H, nc, C], reset at every chunk start

    # Intra-chunk: strictly causal decayed attention over the stacked rows ...
    mixing = (q_rows @ k_rows.transpose(-1, -2)) * _strictly_lower_decay(local_cumsum, rank)
    # ... whose (zero) diagonal R x R blocks take gamma_t (q_t^(r) . k_t^(s)) + D [r == s],
    # computed on the unrotated vectors: the rotation cancels at equal times, and this keeps its
    # rounding off the diagonal (docs/mamba3.md §6.6).
    diagonal = (q_c @ k_c.transpose(-1, -2)) * gamma[..., None, None]  # [B, H, nc, C, R, R]
    if D is not None:
        eye = torch.eye(rank, dtype=dtype, device=q.device)
        diagonal = diagonal + D.to(dtype)[..., None, None, None, None] * eye  # D [H] or per row [B, H]
    blocks = mixing.view(batch, heads, num_chunks, chunk, rank, chunk, rank)
    torch.diagonal(blocks, dim1=3, dim2=5).copy_(diagonal.movedim(3, -1))

    # Each chunk's own contribution to the state after it, and its total decay; without a final
    # state the last chunk's is never read.
    passed = num_chunks if final_state else num_chunks - 1
    decay_to_end = (local_cumsum[..., :passed, -1:] - local_cumsum[..., :passed, :]).exp()
    decay_to_end = decay_to_end.repeat_interleave(rank, dim=-1)
    chunk_inputs = (v_rows[:, :, :passed] * decay_to_end[..., None]).transpose(-1, -2) @ k_rows[:, :, :passed]
    chunk_decay = local_cumsum[..., -1].exp()  # [B, H, nc]
    if resumed and passed:  # the state leaving chunk 0 also holds the carried term, decayed over it
        carried_state = first_beta * torch.einsum("bhrp,bhrn->bhpn", state.v_prev, state.k_prev)
        chunk_inputs[:, :, 0] += chunk_decay[:, :, 0, None, None] * carried_state

    # Inter-chunk state passing: the only sequential part (nc = T / C steps).
    entering = []
    for c in range(num_chunks):
        entering.append(h_entering)
        if c < passed:
            h_entering = chunk_decay[:, :, c, None, None] * h_entering + chunk_inputs[:, :, c]
    entering_states = torch.stack(entering, dim=2)  # [B, H, nc, P, N]
    decay_from_start = local_cumsum.exp().repeat_interleave(rank, dim=-1)[..., None]

    # y = inter (state entering the chunk, decayed) + intra/diagonal, in one fused bmm-add; chunk 0
    # adds the carried beta term of the previous token as rank-one terms.
    matrices = batch * heads * num_chunks
    queries = q_rows * decay_from_start  # [B, H, nc, C*R, N]
    intra = mixing @ v_rows  # [B, H, nc, C*R, P]
    if resumed:
        carried = (queries[:, :, 0] @ state.k_prev.transpose(-1, -2)) * first_beta  # [B, H, C*R, R]
        intra[:, :, 0] += carried @ state.v_prev
    y = torch.baddbmm(
        intra.view(matrices, rows, P),
        queries.view(matrices, rows, N),
        entering_states.transpose(-1, -2).reshape(matrices, N, P),
    )
    y = rearrange(y, "(b h nc) (c r) p -> b (nc c) h r p", b=batch, h=heads, c=chunk, r=rank)[:, :T]
    y = y.to(out_dtypes[1]).contiguous()  # [B, T, H, R, P]
    if not final_state:
        return from_rank_form(is_siso, y, None, time_axis=True)
    last_chunk, last_position = divmod(T - 1, chunk)
    final = Mamba3State(h_entering, kr[:, :, last_chunk, last_position], v[:, -1], phase[:, -1])
    return from_rank_form(is_siso, y, _state_out(final, *out_dtypes), time_axis=True)
