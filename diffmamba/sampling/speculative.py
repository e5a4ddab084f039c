"""Lossless self-speculative decoding: the block denoiser drafts, AR mode on the same weights verifies.

    result = speculative_generate(model, prompt, max_new_tokens=128, generator=g, draft_len=7)

For a ``dual`` checkpoint (``diffmamba.objectives.dual``), whose denoiser was trained on blocks
that follow the AR state of their prefix. Per row the decoder holds S, the AR state after every committed
token but the last, and that last token c (committed, not yet scanned). One round:

1. **Draft** k tokens: the block [c, MASK x k] is denoised from S,
   ``model(block, mode="diffusion", fwd_states=S)`` — one call, or ``draft_steps`` calls that fill
   the k positions in contiguous left-to-right groups (each group drawn from the call that sees
   the groups before it). Left to right keeps the draft exact for the rule below: token i is drawn
   from q_i, a distribution that depends only on the draft tokens before it.
2. **Score** all of them in ONE chunked AR scan from S: ``model.prefill([c, d_1..d_k], S)`` gives
   p_1..p_{k+1}, the AR next-token distributions after c, d_1, ..., d_k (temperature / top-k /
   top-p applied exactly as ``ar_generate`` applies them).
3. **Accept** (speculative sampling, Leviathan et al. / Chen et al.): d_i is kept with probability
   min(1, p_i(d_i) / q_i(d_i)); at the first rejection, the token is redrawn from
   norm(max(0, p_i - q_i)) and the round ends; if all k are kept, a bonus token is drawn from
   p_{k+1}. Every emitted token is therefore distributed exactly as AR decoding would draw it
   (with greedy decoding: accepted iff it is AR's argmax, so the output equals greedy AR token for
   token).
4. **Advance** exactly: the new S is the AR state after c, d_1..d_j (j accepted). The scoring
   scan returns the state after every one of its tokens (``prefill(every_token=True)``, computed
   from the same scan inputs), so each row just takes its entry j: no second call. The emitted
   last token becomes the new c. This needs a pure Mamba-3 trunk: an attention layer's state is a
   KV cache, whose rows would then need different lengths (refused with a UserError).

Rows are independent: each accepts its own j, and a row leaves the batch once it has its
``max_new_tokens`` (extra tokens of its last round are cut, which keeps the law exact) or, with
``eos_id``, once it has emitted EOS (padded with EOS after it, as ``ar_generate`` pads). NFE counts
every network call (drafts, scores, prompt prefill).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from diffmamba.config import check_draft_len
from diffmamba.core.errors import UserError
from diffmamba.modules.attention import is_attention
from diffmamba.sampling.base import SampleResult, SamplerOptions, progress_bar
from diffmamba.sampling.bd3lm import block_denoiser, commit_block
from diffmamba.sampling.categorical import clean_distribution, gumbel_argmax
from diffmamba.sampling.graphs import GraphedDenoiser, GraphedScore


@dataclass
class SpeculativeResult(SampleResult):
    """SampleResult plus acceptance statistics, summed over rows (steps = rounds of the batch)."""

    row_rounds: int = 0  # rounds summed over rows
    drafted: int = 0  # draft tokens proposed, summed over rows
    accepted: int = 0  # draft tokens accepted, summed over rows
    # per draft position i (0-based), summed over rows and rounds: how often d_i was judged (every
    # draft before it kept) and how often it was kept
    reached: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)

    @property
    def tokens_per_round(self) -> float:
        """Mean tokens a row gains per round (accepted drafts + the corrected / bonus token)."""
        return (self.accepted + self.row_rounds) / max(self.row_rounds, 1)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.drafted, 1)

    @property
    def acceptance_by_position(self) -> list[float]:
        """P(d_i kept | d_1..d_{i-1} kept) per draft position: where a draft stops paying."""
        return [kept / max(reached, 1) for kept, reached in zip(self.kept, self.reached)]

    def absorb(self, other: "SpeculativeResult") -> None:
        """Add another decode's acceptance counts to this one's (totals over batches)."""
        self.row_rounds += other.row_rounds
        self.drafted += other.drafted
        self.accepted += other.accepted
        self._add_positions(other.reached, other.kept)

    def count_positions(self, accepted: Tensor, k: int) -> None:
        """Add a round's leading accepts ``accepted`` [rows] of a k-token draft to ``reached`` / ``kept``."""
        positions = torch.arange(k, device=accepted.device)
        reached, kept = torch.stack(((accepted[:, None] >= positions).sum(0),
                                     (accepted[:, None] > positions).sum(0))).tolist()  # one device sync
        self._add_positions(reached, kept)

    def _add_positions(self, reached: list[int], kept: list[int]) -> None:
        missing = len(reached) - len(self.reached)
        if missing > 0:
            self.reached += [0] * missing
            self.kept += [0] * missing
        for i, (reached_i, kept_i) in enumerate(zip(reached, kept)):
            self.reached[i] += reached_i
            self.kept[i] += kept_i


def format_acceptance_by_position(rates: list[float]) -> str:
    """'77/32/22%': the per-position acceptance of ``SpeculativeResult.acceptance_by_position``."""
    return "/".join(f"{100 * rate:.0f}" for rate in rates) + "%" if rates else "-"


# --------------------------------------------------------------------------- per-row states


def _take(state: list, *index: Tensor) -> list:
    """The per-layer states indexed along their leading axes (states are NamedTuples of batch-first
    tensors): ``_take(state, rows)`` keeps batch rows, ``_take(states, rows, t)`` picks per row a
    position of per-token states."""
    return [type(s)(*(x[index] for x in s)) for s in state]


# ------------------------------------------------------------------------------------- rounds


def _draft(model, last: Tensor, denoise, k: int, draft_steps: int, options: SamplerOptions,
           generator: torch.Generator) -> tuple[Tensor, Tensor, int]:
    """(draft [b, k], q [b, k, V + 1] float64 — the distribution each draft token was drawn from, calls).
    ``denoise``: the dual checkpoint's block denoiser from the AR state (``_calls``)."""
    mask_id = model.mask_token_id
    block = torch.cat((last[:, None], last.new_full((last.shape[0], k), mask_id)), dim=1)
    q = None
    groups = torch.arange(k).tensor_split(min(draft_steps, k))
    for group in groups:
        columns = group + 1
        logits = denoise(block)[:, columns]
        probs = clean_distribution(logits, mask_id, options.temperature, options.top_k, options.top_p)
        q = probs if q is None else torch.cat((q, probs), dim=1)
        block = block.clone()
        block[:, columns] = _sample(probs, options, generator)
    return block[:, 1:], q, len(groups)


def _calls(model, state, k: int, draft_len: int, batch: int, cuda_graph: bool):
    """A round's two network calls from the AR state ``state`` of the live rows: the draft's block
    denoiser (``denoise(block [b, k + 1])``) and the scoring scan (``score(tokens [b, k + 1])`` ->
    logits and the state after every token). With ``cuda_graph`` a full round (k = draft_len)
    replays two captures made for the first round's ``batch`` rows (live rows are padded up to it),
    so rows that finish cost no new capture; a round from no state (a one-token prompt's first) and
    the shorter drafts of the last rounds run eagerly (other shapes, a few calls per decode)."""
    if not cuda_graph or state is None or k < draft_len:
        return block_denoiser(model, state), lambda tokens: model.prefill(tokens, state, every_token=True)
    denoise = GraphedDenoiser.reused(model, state, k + 1, batch).bind(state)
    scorer = GraphedScore.reused(model, state, k + 1, batch)
    return denoise, lambda tokens: scorer(tokens, state)


def _sample(probs: Tensor, options: SamplerOptions, generator: torch.Generator) -> Tensor:
    return gumbel_argmax(probs, generator) if options.temperature > 0 else probs.argmax(-1)


def _residual(p: Tensor, q: Tensor) -> Tensor:
    """norm(max(0, p - q)) over the last axis; p where that is empty (p == q: a rejection is then impossible)."""
    rest = (p - q).clamp(min=0)
    total = rest.sum(-1, keepdim=True)
    return torch.where(total > 0, rest / total.clamp(min=1e-300), p)


def _stop_at_eos(out: Tensor, length: Tensor, active: Tensor, emitted: Tensor, write: Tensor, eos_id: int,
                 max_new_tokens: int) -> None:
    """Rows of this round that emitted EOS: EOS from there to the end of ``out``, and a length that
    leaves no room, so the row leaves the batch (in place)."""
    hit = write & (emitted == eos_id)
    for r in hit.any(dim=1).nonzero().flatten().tolist():
        row = int(active[r])
        out[row, int(length[row]) + int(hit[r].long().argmax()):] = eos_id
        length[row] = max_new_tokens  # done: the caller's ``+= accepted + 1`` keeps it past the end


@torch.no_grad()
def speculative_generate(
    model, prompt: Tensor, max_new_tokens: int, generator: torch.Generator, *, draft_len: int,
    draft_steps: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
    eos_id: Optional[int] = None, prefill_chunk: int = 1024, progress: bool = False, progress_desc: str = "speculative",
    cuda_graph: bool = False,
) -> SpeculativeResult:
    """Sample ``max_new_tokens`` after ``prompt`` [B, P] (P >= 1), with AR decoding's exact law.

    draft_len: k, draft tokens per round (the draft block is k + 1 tokens: the last committed token
        and k masks; ``k + 1 = objective.block_size`` matches training). draft_steps: denoiser calls
        per draft, 1..k. eos_id: a row stops at its first emitted EOS and is padded with EOS after
        it; decoding ends once every row has stopped. cuda_graph: replay the draft and scoring calls
        from CUDA graphs (``_calls``; same tokens). Other arguments as ``ar_generate``.

    Returns SpeculativeResult(tokens [B, P + max_new_tokens], nfe, steps = rounds, acceptance stats).
    """
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be [B, P] with P >= 1 (e.g. a single EOS token), got {tuple(prompt.shape)}")
    check_draft_len(draft_len)
    if not 1 <= draft_steps <= draft_len:
        raise UserError(f"--draft-steps must be in [1, --draft-len = {draft_len}], got {draft_steps}")
    if any(is_attention(block) for block in model.blocks):
        raise UserError(f"speculative decoding needs a pure Mamba-3 trunk (layer_pattern "
                        f"{model.config.layer_pattern!r} has attention layers, whose KV caches cannot rewind rows "
                        "by different amounts); decode this checkpoint with --mode ar or --mode block")
    if max_new_tokens < 0 or prefill_chunk < 1:
        raise ValueError("max_new_tokens must be >= 0 and prefill_chunk >= 1")
    options = SamplerOptions(temperature=temperature, top_k=top_k, top_p=top_p)  # validates the knobs
    mask_id = model.mask_token_id
    batch, device = prompt.shape[0], prompt.device
    out = torch.empty(batch, max_new_tokens + draft_len + 1, dtype=prompt.dtype, device=device)
    length = torch.zeros(batch, dtype=torch.long, device=device)
    result = SpeculativeResult(prompt, 0, 0)
    state = None
    if prompt.shape[1] > 1:
        for chunk in prompt[:, :-1].split(prefill_chunk, dim=1):
            state = commit_block(model, chunk, state, ar_prefix=True)  # the AR state, no head
            result.nfe += 1
    last = prompt[:, -1]
    active = torch.arange(batch, device=device)  # rows still generating; ``state`` / ``last`` hold only these
    with progress_bar(max_new_tokens, SamplerOptions(progress=progress, progress_desc=progress_desc)) as bar:
        while active.numel() and max_new_tokens:
            need = max_new_tokens - length[active]  # >= 1
            k = int(min(draft_len, int(need.max()) - 1))
            denoise, score = _calls(model, state, k, draft_len, batch, cuda_graph)
            if k:
                draft, q, calls = _draft(model, last, denoise, k, min(draft_steps, k), options, generator)
                result.nfe += calls
            else:
                draft = last.new_empty(last.shape[0], 0)
            logits, scored_states = score(torch.cat((last[:, None], draft), dim=1))
            result.nfe += 1
            p = clean_distribution(logits, mask_id, temperature, top_k, top_p)  # [a, k + 1, V + 1]
            rows = torch.arange(active.numel(), device=device)
            if k:
                p_draft = p[:, :k].gather(-1, draft[..., None]).squeeze(-1)
                q_draft = q.gather(-1, draft[..., None]).squeeze(-1)
                u = torch.rand(draft.shape, dtype=torch.float64, generator=generator, device=device)
                keep = u * q_draft < p_draft  # u < min(1, p / q); q > 0 at a drawn token
                accepted = keep.long().cumprod(dim=1).sum(dim=1)  # [a]: leading accepts j
                q_pad = torch.cat((q, torch.zeros_like(q[:, :1])), dim=1)  # bonus: residual of p and 0 = p
            else:
                accepted = torch.zeros_like(rows)
                q_pad = torch.zeros_like(p)
            p_j, q_j = p[rows, accepted], q_pad[rows, accepted]
            final = _sample(_residual(p_j, q_j), options, generator)  # [a]: correction, or bonus when j = k
            emitted = torch.cat((draft, final[:, None]), dim=1).clone()
            emitted[rows, accepted] = final
            columns = torch.arange(k + 1, device=device)
            write = columns[None] <= accepted[:, None]  # the j accepted drafts, then ``final``
            target_rows = active[:, None].expand(-1, k + 1)[write]
            out[target_rows, (length[active][:, None] + columns[None]).expand_as(write)[write]] = emitted[write]
            if eos_id is not None:  # cut at the first EOS: the tokens before it follow AR's law
                _stop_at_eos(out, length, active, emitted, write, eos_id, max_new_tokens)
            length[active] += accepted + 1
            result.row_rounds += active.numel()
            result.drafted += k * active.numel()
            result.accepted += int(accepted.sum())
            result.count_positions(accepted, k)
            result.steps += 1
            # Advance: row r continues from the state after its scored token accepted[r].
            state, last = _take(scored_states, rows, accepted), final
            running = length[active] < max_new_tokens
            bar.update(int(length.clamp(max=max_new_tokens).min()) - bar.n)
            if not running.all():
                keep_rows = running.nonzero().flatten()
                active, last, state = active[keep_rows], last[keep_rows], _take(state, keep_rows)
    result.tokens = torch.cat((prompt, out[:, :max_new_tokens]), dim=1)
    return result
