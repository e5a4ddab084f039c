"""Generation-quality metrics: generative perplexity under a judge, unigram entropy, distinct-n.

Generative perplexity alone rewards degenerate text (a repeated phrase scores very well), so it is
always reported beside the sample's unigram entropy and its distinct-n ratios
(docs/masked-diffusion.md §3.3). Definitions:

- ``unigram_entropy(ids)``: entropy, in nats, of the token-id histogram of one sample (BD3-LM's
  check; OWT-like 1024-token text is ~5.2-5.6 nats, < 4 is degenerate). A constant sequence has 0.
- ``distinct_n(ids, n)``: unique n-grams / total n-grams within one sample (1.0 = no repeats).
- ``corpus_distinct_n(samples, n)``: the same over the n-grams of all samples pooled, which falls
  when different samples repeat each other (mode collapse across samples).
- gen-PPL: exp(sum of judge NLL / sum of judge tokens) over all samples (token-weighted, MDLM).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence

from tqdm.auto import tqdm

from diffmamba.core.errors import UserError
from diffmamba.eval.judge import Judge, perplexity
from diffmamba.eval.sampling import generate, settings_for

DISTINCT_NS = (1, 2, 3, 4)


def unigram_entropy(ids: Sequence[int]) -> float:
    """Entropy (nats) of the empirical token distribution of one sequence; 0 for an empty one."""
    ids = list(ids)
    if not ids:
        return 0.0
    total = len(ids)
    h = -sum((c / total) * math.log(c / total) for c in Counter(ids).values())
    return max(h, 0.0)  # -0.0 for a constant sequence


def ngrams(ids: Sequence[int], n: int) -> list[tuple]:
    ids = list(ids)
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def distinct_n(ids: Sequence[int], n: int) -> float:
    """Unique n-grams / total n-grams of one sequence (NaN when it is shorter than n)."""
    grams = ngrams(ids, n)
    return len(set(grams)) / len(grams) if grams else float("nan")


def corpus_distinct_n(samples: Sequence[Sequence[int]], n: int) -> float:
    """Unique / total n-grams over all samples pooled (n-grams never cross sample boundaries)."""
    grams = [g for ids in samples for g in ngrams(ids, n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def _std(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    if len(values) < 2:
        return 0.0 if values else float("nan")
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def diversity_metrics(samples: Sequence[Sequence[int]], ns: Sequence[int] = DISTINCT_NS) -> dict:
    """Entropy (mean and std over samples) and distinct-n (per-sample mean and pooled) of token ids."""
    ent = [unigram_entropy(s) for s in samples]
    out = {"entropy": _mean(ent), "entropy_std": _std(ent), "num_samples": len(samples),
           "mean_length": _mean([float(len(s)) for s in samples])}
    for n in ns:
        out[f"distinct_{n}"] = _mean([distinct_n(s, n) for s in samples])
        out[f"corpus_distinct_{n}"] = corpus_distinct_n(samples, n)
    return out


def judge_metrics(judge: Judge, texts: Sequence[str], contexts: Optional[Sequence[str]] = None,
                  batch_size: int = 8) -> dict:
    """Generative perplexity of ``texts`` (continuations of ``contexts`` when given) under ``judge``."""
    scores = judge.score_texts(texts, contexts, batch_size=batch_size, desc=f"gen-PPL ({judge.kind})")
    per_sample = [math.exp(s / n) for s, n in scores if n > 0]
    return {"gen_ppl": perplexity(scores), "gen_nll_per_token": (sum(s for s, _ in scores)
                                                                 / max(sum(n for _, n in scores), 1)),
            "judge_tokens": sum(n for _, n in scores), "gen_ppl_median_sample": _median(per_sample)}


def _median(values: Sequence[float]) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def split_documents(ids: Sequence[int], eos_id: int) -> list[list[int]]:
    """Cut a generated id sequence at EOS tokens into non-empty documents."""
    docs, cur = [], []
    for t in ids:
        if int(t) == eos_id:
            if cur:
                docs.append(cur)
            cur = []
        else:
            cur.append(int(t))
    if cur:
        docs.append(cur)
    return docs


def sample_text(tokenizer, ids: Sequence[int]) -> str:
    """Decoded text of generated ids, with EOS (document boundaries) written as a blank line, so a
    judge sees separate documents rather than words glued across a boundary."""
    return "\n\n".join(tokenizer.decode(doc) for doc in split_documents(ids, tokenizer.eos_id))


# ---------------------------------------------------------------------------------- evaluation loop

def evaluate_generation(systems, ckpts: dict, judge: Optional[Judge], data, *, tasks=("unconditional", "prompted"),
                        num_samples: int = 16, length: int = 64, prompt_len: int = 32, batch_size: int = 8,
                        samplers=("ancestral",), steps=(8, 32), top_ps=(0.9,), temperature: float = 1.0,
                        seed: int = 0, device=None, amp=None, judge_batch_size: int = 8) -> tuple[list, list]:
    """Generation rows (one per system x setting x task) plus the validation-text reference rows,
    and the decoded samples ({system, setting, task, text, prompt}) for samples.jsonl."""


    rows, records = [], []
    tok = next(iter(ckpts.values())).tokenizer
    task_inputs = {}
    for task in tasks:
        if task == "unconditional":
            ref = [r[:length] for r in data.rows[:num_samples].tolist()]
            task_inputs[task] = (None, None, ref)
        else:
            if prompt_len >= data.rows.shape[1]:
                raise UserError(f"--prompt-len {prompt_len} leaves nothing to continue in validation rows of "
                                f"{data.rows.shape[1]} tokens; use a smaller --prompt-len")
            if data.rows.shape[0] < num_samples:
                raise UserError(f"only {data.rows.shape[0]} validation rows for {num_samples} prompts; lower "
                                "--num-samples or raise --max-rows")
            usable = data.rows[:, : prompt_len + length]
            prompts = usable[:num_samples, :prompt_len]
            ctx_text = [sample_text(tok, p) for p in prompts.tolist()]
            task_inputs[task] = (prompts, ctx_text, usable[:num_samples, prompt_len:].tolist())
    plan = [(s, st, task) for s in systems for st in settings_for(s, list(samplers), list(steps), list(top_ps),
                                                                  temperature) for task in tasks]
    bar = tqdm(total=len(plan) * num_samples, desc="generating", unit=" samples")
    for system, setting, task in plan:
        prompts, ctx_text, _ = task_inputs[task]
        ck = ckpts[system.checkpoint]
        out = generate(ck.model, system, setting, num_samples, length, batch_size, seed, device,
                       prompts=prompts, eos_id=ck.tokenizer.eos_id, amp=amp, bar=bar)
        texts = [sample_text(ck.tokenizer, ids) for ids in out.tokens]
        row = {"system": system.name, "mode": system.mode, "task": task, **setting.as_dict(),
               "nfe": sum(out.nfe) / len(out.nfe), "nfe_note": "network calls per batch, mean over batches",
               "length": length, "prompt_length": prompt_len if task == "prompted" else 0, "batch_size": batch_size,
               "seed": seed, **system.settings, **diversity_metrics(out.tokens)}
        if judge is not None:
            row.update(judge_metrics(judge, texts, ctx_text, batch_size=judge_batch_size), judge=judge.name)
        rows.append(row)
        for i, text in enumerate(texts):
            records.append({"system": system.name, "task": task, **setting.as_dict(), "index": i,
                            "prompt": ctx_text[i] if ctx_text else None, "text": text})
    bar.close()
    for task in tasks:  # what real text scores under the same metrics
        _, ctx_text, ref = task_inputs[task]
        row = {"system": "validation text", "mode": "reference", "task": task, "sampler": "-", "steps": None,
               "nfe": None, "top_p": None, "temperature": None, "length": length,
               "prompt_length": prompt_len if task == "prompted" else 0, **diversity_metrics(ref)}
        if judge is not None:
            row.update(judge_metrics(judge, [sample_text(tok, r) for r in ref], ctx_text,
                                     batch_size=judge_batch_size), judge=judge.name)
        rows.append(row)
    return rows, records
