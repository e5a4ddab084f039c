"""Likelihood on the same validation tokens: AR exact NLL and the diffusion NELBO bound.

Both modes score the **same tokens**: every valid token of every validation row.

- AR (exact): ``-sum log p(x_i | x_<i)``. So that the first token of a row is scored too, an EOS
  (the document separator the model saw in training) is put in front as context; the AR count
  then equals the diffusion count. ppl = exp(NLL / tokens).
- Diffusion (bound): the continuous-time NELBO of ``diffmamba.objectives.mdlm.diffusion_nll`` with the
  schedule the checkpoint was trained with, one time per row, stratified across each evaluation
  batch (antithetic), masks and times drawn from a generator seeded with ``seed + repeat``. It is
  an upper bound on the model's NLL, reported with "≤" and the standard deviation over
  ``repeats`` (>= 3) full passes.

Rows may carry right padding (``valid_mask`` False), which is excluded from both counts.
"""
from __future__ import annotations

import contextlib
import math
import statistics
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffmamba.objectives.mdlm import diffusion_nll
from diffmamba.objectives.schedule import make_schedule


@torch.no_grad()
def ar_nll(model, tokens: torch.Tensor, bos_id: int, valid_mask: Optional[torch.Tensor] = None) -> tuple[float, int]:
    """Exact AR NLL (sum in nats, float64) and token count of ``tokens`` [B, T], each row preceded by ``bos_id``."""
    B, T = tokens.shape
    bos = torch.full((B, 1), bos_id, dtype=tokens.dtype, device=tokens.device)
    inp = torch.cat([bos, tokens], dim=1)
    if valid_mask is None:
        logits = model(inp, mode="ar")
        valid = torch.ones_like(tokens, dtype=torch.bool)
    else:
        vm = torch.cat([torch.ones((B, 1), dtype=torch.bool, device=tokens.device), valid_mask], dim=1)
        logits = model(inp, mode="ar", valid_mask=vm)
        valid = valid_mask
    logits = logits[:, :-1].float()
    mask_id = getattr(model, "mask_token_id", None)
    if mask_id is not None and mask_id < logits.shape[-1]:
        logits[..., mask_id] = float("-inf")
    nll = F.cross_entropy(logits.reshape(B * T, -1), tokens.reshape(-1), reduction="none").view(B, T)
    return float(nll.double()[valid].sum()), int(valid.sum())


def _batches(rows: torch.Tensor, valid: Optional[torch.Tensor], batch_size: int, device):
    for start in range(0, rows.shape[0], batch_size):
        x = rows[start:start + batch_size].to(device)
        v = valid[start:start + batch_size].to(device) if valid is not None else None
        yield x, v


def ar_likelihood(model, rows: torch.Tensor, valid: Optional[torch.Tensor], *, bos_id: int, batch_size: int = 8,
                  device=None, amp=None, desc: str = "AR NLL") -> dict:
    """Exact AR NLL over all rows: {nll_per_token, ppl, tokens, sequences, kind: 'exact'}."""
    total, count = 0.0, 0
    n_batches = math.ceil(rows.shape[0] / batch_size)
    for x, v in tqdm(_batches(rows, valid, batch_size, device or rows.device), total=n_batches, desc=desc,
                     leave=False):
        with amp or contextlib.nullcontext():
            s, n = ar_nll(model, x, bos_id, v)
        total += s
        count += n
    nll = total / max(count, 1)
    return {"kind": "exact", "nll_per_token": nll, "ppl": math.exp(nll), "tokens": count,
            "sequences": int(rows.shape[0]), "settings": {"first_token_context": "EOS", "batch_size": batch_size}}


def repeated_bound(score: Callable, rows: torch.Tensor, valid: Optional[torch.Tensor], *, repeats: int, seed: int,
                   batch_size: int, device, amp=None, desc: str = "NELBO bound") -> dict:
    """Run a stochastic bound over all rows ``repeats`` times, the noise of repeat r drawn from a
    generator seeded ``seed + r``. ``score(x, v, generator) -> (summed NLL, tokens)`` scores one batch.

    Returns {nll_per_token (mean over repeats), nll_std, ppl = exp(mean), ppl_std, repeats:
    [per-repeat NLL/token], num_repeats, tokens, sequences}."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    dev = torch.device(device) if device is not None else rows.device
    per_repeat, count = [], 0
    n_batches = math.ceil(rows.shape[0] / batch_size)
    with tqdm(total=repeats * n_batches, desc=desc, leave=False) as bar:
        for r in range(repeats):
            generator = torch.Generator(device=dev).manual_seed(seed + r)
            total, count = 0.0, 0
            for x, v in _batches(rows, valid, batch_size, dev):
                with amp or contextlib.nullcontext():
                    s, n = score(x, v, generator)
                total, count = total + float(s), count + int(n)
                bar.update(1)
            per_repeat.append(total / max(count, 1))
    mean = statistics.fmean(per_repeat)
    spread = len(per_repeat) > 1
    ppls = [math.exp(x) for x in per_repeat]
    return {"nll_per_token": mean, "nll_std": statistics.stdev(per_repeat) if spread else 0.0, "ppl": math.exp(mean),
            "ppl_std": statistics.stdev(ppls) if spread else 0.0, "repeats": per_repeat, "num_repeats": repeats,
            "tokens": count, "sequences": int(rows.shape[0])}


def diffusion_likelihood(model, rows: torch.Tensor, valid: Optional[torch.Tensor], *, schedule: str = "loglinear",
                         schedule_eps: float = 1e-3, sampling_eps: float = 1e-3, antithetic: bool = True,
                         repeats: int = 3, seed: int = 0, batch_size: int = 8, device=None, amp=None,
                         desc: str = "NELBO bound") -> dict:
    """NELBO bound over all rows, ``repeats`` times with seeds seed, seed+1, ... (``repeated_bound``).

    Returns {kind: 'bound', nll_per_token (mean over repeats), nll_std, ppl = exp(mean), ppl_std,
    repeats: [per-repeat NLL/token], tokens, sequences, settings}."""
    sched = make_schedule(schedule, schedule_eps)

    def score(x, v, generator):
        return diffusion_nll(model, x, sched, generator, valid_mask=v, antithetic=antithetic,
                             sampling_eps=sampling_eps)

    result = repeated_bound(score, rows, valid, repeats=repeats, seed=seed, batch_size=batch_size, device=device,
                            amp=amp, desc=desc)
    return {"kind": "bound", **result,
            "settings": {"schedule": schedule, "schedule_eps": schedule_eps, "sampling_eps": sampling_eps,
                         "antithetic": antithetic, "seed": seed, "seeds": [seed + r for r in range(repeats)],
                         "batch_size": batch_size, "time_samples_per_row": 1}}
