"""The two-stream block-diffusion forward pass (docs/block-diffusion.md §2).

For block size L' and T = n_blocks L', per layer and with the same parameters:

- **clean stream** over x_0: forward scan over the whole sequence (causal), reverse scan inside
  each block (block-local). Clean block b therefore sees clean blocks <= b.
- **noisy stream** over x_t: block b's forward scan starts from the clean stream's forward
  continuation state at the end of block b-1, at the same layer; its reverse scan is block-local.

Both streams run as a batch of blocks: the sequence is reshaped [B, T] -> [B * n_blocks, L'] and
each block row's forward scan is given its entering state as ``initial_state``; the reverse scan
of a row sees only that row, i.e. it is block-local with a zero start, with no extra code. The
clean stream's forward scan over a block row started from the right entering state *is* the
causal scan over the whole sequence (continuation, docs/contracts.md §1), so one ``ResidualBlock`` call
over the concatenated [clean rows; noisy rows] computes both streams. The entering states come
from ``block_boundary_states`` on the clean stream's forward scan inputs at that layer.

Cost per layer: the trunk on 2 T tokens (both streams) plus the clean stream's forward in_proj
rows once more (to read the boundary states) and an O(T H P N) state computation; the last layer
runs the noisy stream only (nothing reads the clean stream's output there), and a single block
with no prefix (L' = T) is plain diffusion mode, at its cost.

``dual_streams`` is the dual objective's variant (``diffmamba.objectives.dual``): the clean stream
is the AR pass (forward direction only, causal over the whole sequence), and each noisy block's
forward scan starts from the AR stream's state at its boundary, so the denoiser is trained on the
very state AR decoding holds after the prefix. It returns both outputs, (noisy, AR).

``DiffMamba.forward(tokens, block_size=L', noisy=x_t)`` (``mode="ar"`` for ``dual_streams``)
dispatches here, so data-parallel wrappers (DDP, FSDP, torch.compile) see one ordinary forward call.
"""
from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange
from torch import Tensor

from diffmamba.modules.attention import is_attention
from diffmamba.modules.two_stream_attention import attention_streams
from diffmamba.ops import Mamba3State
from diffmamba.ops.boundary import BoundaryStates, block_boundary_states, cat_states, flatten_blocks


def check_block_size(length: int, block_size: int) -> int:
    """Number of blocks; ValueError naming the divisors when ``block_size`` does not divide ``length``."""
    if block_size < 1 or length % block_size:
        divisors = [d for d in range(1, length + 1) if length % d == 0]
        raise ValueError(f"block_size {block_size} does not divide the sequence length {length}; "
                         f"pick one of {', '.join(map(str, divisors[:12]))}")
    return length // block_size


def _check_noisy(clean: Tensor, noisy: Optional[Tensor]) -> None:
    if noisy is not None and noisy.shape != clean.shape:
        raise ValueError(f"noisy {tuple(noisy.shape)} must have the clean tokens' shape {tuple(clean.shape)}")


def _boundary(block, clean_hidden: Tensor, valid_mask: Optional[Tensor], block_size: int,
              initial_state: Optional[Mamba3State] = None) -> BoundaryStates:
    """This layer's clean-stream forward states at every block boundary, from its scan inputs."""
    inputs = block.mixer.forward_scan_inputs(block.mixer_norm(clean_hidden), valid_mask)
    return block_boundary_states(**inputs, block_size=block_size, initial_state=initial_state)


def _output(model, hidden: Tensor, return_hidden: bool) -> Tensor:
    """The final norm, then the head unless ``return_hidden``."""
    hidden = model.final_norm(hidden)
    return hidden if return_hidden else model.logits(hidden)


def block_streams(
    model,
    clean: Tensor,
    block_size: int,
    noisy: Optional[Tensor] = None,
    valid_mask: Optional[Tensor] = None,
    initial_states: Optional[list[Mamba3State]] = None,
    return_hidden: bool = False,
    return_output: bool = True,
    return_final_states: bool = False,
):
    """Run the block-diffusion streams of a ``DiffMamba``.

    Args:
        model: a ``DiffMamba`` (its embedding, blocks, final norm and head are used directly).
        clean: [B, T] clean ids, T a multiple of ``block_size``.
        noisy: [B, T] noisy ids (mask where masked) or None (clean stream only: prefill).
        valid_mask: [B, T] bool, False at right padding, or None.
        initial_states: per-layer forward states before token 0 (a cache to continue), or None;
            a ``KVCache`` for an attention layer (``layer_pattern`` "A").
        return_hidden: hidden [B, T, D] after the final norm instead of logits.
        return_output: False skips the last layer's trunk and the head (when only states are wanted).
        return_final_states: also return the per-layer clean-stream forward states after the last
            block (the block sampler's cache).

    Returns:
        The noisy stream's logits [B, T, V + 1] (or hidden) when ``noisy`` is given, else the
        clean stream's; None when ``return_output`` is False. With ``return_final_states``, a
        pair (output, list of per-layer Mamba3State [B, ...] / KVCache).
    """
    batch, length = clean.shape
    _check_noisy(clean, noisy)
    num_blocks = check_block_size(length, block_size)
    if initial_states is not None and len(initial_states) != len(model.blocks):
        raise ValueError(f"initial_states must hold one state per layer ({len(model.blocks)}), "
                         f"got {len(initial_states)}")

    if noisy is not None and num_blocks == 1 and initial_states is None and not return_final_states:
        # One block, no prefix (L' = T): the clean stream carries nothing into the noisy one, so
        # this is plain diffusion mode at plain diffusion cost.
        kwargs = {} if valid_mask is None else {"valid_mask": valid_mask}
        return model(noisy, mode="diffusion", return_hidden=return_hidden, **kwargs)

    def rows(x: Tensor) -> Tensor:
        return rearrange(x, "b (nb l) ... -> (b nb) l ...", l=block_size)

    def sequences(x: Tensor) -> Tensor:
        return rearrange(x, "(b nb) l ... -> b (nb l) ...", b=batch)

    streams = 1 if noisy is None else 2
    block_valid = None if valid_mask is None else rows(valid_mask).repeat(streams, 1)
    clean_hidden = model.embedding(clean)
    noisy_rows = None if noisy is None else rows(model.embedding(noisy))
    final_states = []
    last_layer = len(model.blocks) - 1
    for layer, block in enumerate(model.blocks):
        if is_attention(block):  # an "A" layer of layer_pattern: modules/two_stream_attention.py
            clean_hidden, noisy_hidden, state = attention_streams(
                block, clean_hidden, None if noisy_rows is None else sequences(noisy_rows),
                None if initial_states is None else initial_states[layer], block_size, valid_mask,
                clean_out=layer != last_layer or (noisy is None and return_output),
                noisy_out=layer != last_layer or return_output)
            noisy_rows = None if noisy_hidden is None else rows(noisy_hidden)
            final_states.append(state)
            continue
        states = _boundary(block, clean_hidden, valid_mask, block_size,
                           None if initial_states is None else initial_states[layer])
        final_states.append(states.final)
        if layer == last_layer and not return_output:
            break
        entering = flatten_blocks(states.entering)
        if noisy is None:
            clean_hidden = sequences(block(rows(clean_hidden), valid_mask=block_valid, fwd_initial_state=entering))
        elif layer == last_layer:
            noisy_valid = None if block_valid is None else block_valid[batch * num_blocks:]
            noisy_rows = block(noisy_rows, valid_mask=noisy_valid, fwd_initial_state=entering)
        else:
            both = block(torch.cat((rows(clean_hidden), noisy_rows)), valid_mask=block_valid,
                         fwd_initial_state=cat_states([entering, entering]))
            clean_hidden = sequences(both[: batch * num_blocks])
            noisy_rows = both[batch * num_blocks:]

    output = None
    if return_output:
        output = _output(model, clean_hidden if noisy is None else sequences(noisy_rows), return_hidden)
    return (output, final_states) if return_final_states else output


def dual_streams(model, clean: Tensor, block_size: int, noisy: Tensor, valid_mask: Optional[Tensor] = None,
                 return_hidden: bool = False) -> tuple[Tensor, Tensor]:
    """(noisy-stream output, AR-stream output), each [B, T, V + 1] logits (or [B, T, D] hidden).

    clean, noisy: [B, T] ids with T a multiple of ``block_size``; valid_mask [B, T] or None. The AR
    stream is exactly ``model(clean, mode="ar")``; noisy block b is ``model(noisy block b,
    mode="diffusion", fwd_states=<AR state after blocks < b>)``.
    """
    _check_noisy(clean, noisy)
    if any(is_attention(block) for block in model.blocks):
        raise ValueError("dual_streams needs an all-Mamba trunk: attention layers have no per-token scan state")
    batch = clean.shape[0]
    check_block_size(clean.shape[1], block_size)

    def rows(x: Tensor) -> Tensor:
        return rearrange(x, "b (nb l) ... -> (b nb) l ...", l=block_size)

    clean_hidden = model.embedding(clean)
    noisy_rows = rows(model.embedding(noisy))
    row_valid = None if valid_mask is None else rows(valid_mask)
    for block in model.blocks:
        # The AR stream runs the whole sequence causally (not as block rows: its reverse direction is
        # off), so it is its own call; the noisy rows start from its states at the block boundaries.
        entering = flatten_blocks(_boundary(block, clean_hidden, valid_mask, block_size).entering)
        noisy_rows = block(noisy_rows, valid_mask=row_valid, fwd_initial_state=entering)
        clean_hidden = block(clean_hidden, causal=True, valid_mask=valid_mask)
    noisy_hidden = rearrange(noisy_rows, "(b nb) l ... -> b (nb l) ...", b=batch)
    return _output(model, noisy_hidden, return_hidden), _output(model, clean_hidden, return_hidden)
