"""Forward-scan continuation states at every block boundary of one long Mamba-3 scan.

Block diffusion (docs/block-diffusion.md §1-2) starts the forward scan of noisy block b
from the state the *clean* prefix left at the end of block b-1, at the same layer. This module
computes those states for all blocks of a sequence at once, from the scan inputs of
``Mamba3Direction.scan_inputs`` (docs/contracts.md §1), without running the scan:

    entering[b] = the Mamba3State after tokens [0, b L')     (entering[0] = the initial state)

Each state is the scan op's *continuation* state: ``mamba3_scan(x[:, bL':], initial_state=
entering[b])`` equals the tail of ``mamba3_scan(x)``. Its ``ssm`` therefore excludes the trapezoid
term of the next token, (1 - lam_{t+1}) dt_{t+1} exp(a_{t+1}) kr_t v_t^T, which the continuing scan
adds itself from ``k_prev`` / ``v_prev``. (The chunked form's inter-chunk states include that term,
folded into the last key of the chunk by the shifted scale; they are *not* continuation states.)

Math, per head, for block b of length L' with tokens t_0 .. t_last and a block-local inclusive
cumsum l_j of a (recurrence of docs/contracts.md §1 unrolled over one block):

    h_after(b) = exp(l_last) [h_entering(b) + beta_{t_0} kr_prev v_prev^T]
               + sum_j exp(l_last - l_j) (gamma_j + beta~_j) kr_j v_j^T
    gamma_j = lam_j dt_j,  beta_j = (1 - lam_j) dt_j,  beta~_j = beta_{j+1} inside the block, 0 at t_last

where kr_prev, v_prev is the last token of block b-1 (or the initial state's). The per-block sums
are one einsum over all blocks; only the pass from block to block is sequential (n_blocks steps of
elementwise work on [B, H, P, N], like the inter-chunk loop of the chunked scan). Keys are rotated
by the *global* cumulative phase, so every state is in the frame the continuing scan expects.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from diffmamba.ops import Mamba3State
from diffmamba.ops.reference import (compute_dtype, cumulative_phase, rotate, state_in_compute_dtype,
                                      to_rank_form)


class BoundaryStates(NamedTuple):
    """entering: Mamba3State whose tensors have a block axis after B ([B, n_blocks, H, ...]):
    the state each block starts from. final: the Mamba3State after the last block ([B, H, ...])."""

    entering: Mamba3State
    final: Mamba3State


def block_boundary_states(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, dt: Tensor, trap: Tensor, dphase: Tensor,
    block_size: int, initial_state: Optional[Mamba3State] = None, **_unused,
) -> BoundaryStates:
    """Continuation states of the forward scan at every multiple of ``block_size``.

    Args: the forward scan's inputs (``mamba3_scan`` argument names and shapes; ``q`` and ``D``
        are accepted and unused: states do not depend on them):
        k [B, T, H, N] or [B, T, H, R, N]; v [B, T, H, P] or [B, T, H, R, P];
        log_decay, dt, trap [B, T, H]; dphase [B, T, H, S]. ``block_size`` must divide T.
        initial_state: the state before token 0 (None = fresh).

    Returns:
        BoundaryStates(entering [B, T / block_size, ...], final [B, ...]) in the scan op's
        state dtypes (ssm / phase float32, or float64 for float64 inputs; k_prev / v_prev in k's /
        v's dtype), differentiable with respect to the inputs and the initial state.
    """
    batch, length, heads = k.shape[:3]
    if block_size < 1 or length % block_size:
        raise ValueError(f"block_size must be >= 1 and divide T = {length}, got {block_size}")
    # States accumulate in float32 (float64) like the scan's; under bf16 autocast the einsums
    # below would otherwise run in bf16.
    with torch.autocast(device_type=k.device.type, enabled=False):
        return _boundary_states(k, v, log_decay, dt, trap, dphase, block_size, initial_state)


def _boundary_states(k, v, log_decay, dt, trap, dphase, block_size, initial_state) -> BoundaryStates:
    batch, length, heads = k.shape[:3]
    num_blocks = length // block_size
    dtype = compute_dtype(k, v, log_decay, dt, trap, dphase)
    out_k, out_v = k.dtype, v.dtype
    # The scan's own rank-form helpers; q plays no part in states, so k stands in for it.
    is_siso, _, k, v, init = to_rank_form(k, k, v, initial_state, time_axis=True)
    k, v = k.to(dtype), v.to(dtype)
    init = state_in_compute_dtype(init, batch, heads, k.shape[3], v.shape[-1], k.shape[-1], dphase.shape[-1],
                                   dtype, k.device)
    phase = cumulative_phase(init.phase, dphase, dtype)  # global, as the scan op computes it
    k_rotated = rotate(k, phase.unsqueeze(3))

    log_decay, dt, trap = (x.to(dtype) for x in (log_decay, dt, trap))
    gamma = trap * dt
    beta = (1.0 - trap) * dt

    def blocks(x: Tensor) -> Tensor:  # [B, T, ...] -> [B, nb, L', ...]
        return x.unflatten(1, (num_blocks, block_size))

    # beta~: the next token's trapezoid weight, inside the block only (the block's last token owes
    # its term to the next block's first token, which adds it from k_prev / v_prev).
    beta_ahead = torch.cat((blocks(beta)[:, :, 1:], beta.new_zeros(batch, num_blocks, 1, heads)), dim=2)
    key_scale = blocks(gamma) + beta_ahead  # [B, nb, L', H]
    local_cumsum = blocks(log_decay).cumsum(dim=2)  # [B, nb, L', H]
    decay_to_end = (local_cumsum[:, :, -1:] - local_cumsum).clamp(max=0.0).exp()
    block_inputs = torch.einsum("bclh,bclhrp,bclhrn->bchpn", decay_to_end * key_scale, blocks(v),
                                blocks(k_rotated))  # [B, nb, H, P, N]
    block_decay = local_cumsum[:, :, -1].clamp(max=0.0).exp()  # [B, nb, H]
    first_beta = blocks(beta)[:, :, 0]  # [B, nb, H]

    last_key = blocks(k_rotated)[:, :, -1]  # [B, nb, H, R, N]
    last_value = blocks(v)[:, :, -1]  # [B, nb, H, R, P]
    last_phase = blocks(phase)[:, :, -1]  # [B, nb, H, S]
    # The token before each block: the initial state's for block 0, else the previous block's last.
    prev_key = torch.cat((init.k_prev.unsqueeze(1), last_key[:, :-1]), dim=1)
    prev_value = torch.cat((init.v_prev.unsqueeze(1), last_value[:, :-1]), dim=1)
    trapezoid = torch.einsum("bchrp,bchrn->bchpn", prev_value, prev_key) * first_beta[..., None, None]

    # h_after(b) = decay_b h_entering(b) + update_b: everything but the carried state is batched;
    # unbind (not indexing) keeps the backward of the loop linear in the number of blocks.
    decay = block_decay[..., None, None]
    updates = (decay * trapezoid + block_inputs).unbind(dim=1)
    entering_ssm = []
    ssm = init.ssm
    for block_decay_b, update_b in zip(decay.unbind(dim=1), updates):
        entering_ssm.append(ssm)
        ssm = block_decay_b * ssm + update_b
    entering_ssm = torch.stack(entering_ssm, dim=1)

    squeeze = (lambda x: x.squeeze(-2)) if is_siso else (lambda x: x)
    entering = Mamba3State(
        entering_ssm,
        squeeze(prev_key).to(out_k),
        squeeze(prev_value).to(out_v),
        torch.cat((init.phase.unsqueeze(1), last_phase[:, :-1]), dim=1),
    )
    final = Mamba3State(ssm, squeeze(last_key[:, -1]).to(out_k), squeeze(last_value[:, -1]).to(out_v),
                        last_phase[:, -1])
    return BoundaryStates(entering, final)


def flatten_blocks(state: Mamba3State) -> Mamba3State:
    """[B, nb, ...] per field -> [B * nb, ...]: one state per block row of a [B * nb, L'] batch."""
    return Mamba3State(*(x.flatten(0, 1) for x in state))


def cat_states(states: list[Mamba3State]) -> Mamba3State:
    """Concatenate states along the batch axis (field by field)."""
    return Mamba3State(*(torch.cat(fields, dim=0) for fields in zip(*states)))


def select_rows(state: Mamba3State, rows) -> Mamba3State:
    """The states of the batch rows ``rows`` (an index, slice or bool mask)."""
    return Mamba3State(*(x[rows] for x in state))
