"""Markdown building blocks of the report: number formatting and the per-section tables."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

from diffmamba.sampling.speculative import format_acceptance_by_position

ENTROPY_TOLERANCE = 0.3  # nats; larger gaps make a gen-PPL comparison suspect (docs/masked-diffusion.md §3.3)


def finite(x) -> bool:
    """A real, finite number (rows hold None or nan where a measurement is missing)."""
    return isinstance(x, (int, float)) and math.isfinite(x)


# ---------------------------------------------------------------------------------- formatting

def fmt(x, digits: int = 3) -> str:
    """Compact number formatting; '-' for missing, 'nan'/'inf' spelled out."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        a = abs(x)
        if a != 0 and (a >= 1e5 or a < 1e-3):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{max(digits - len(str(int(a))), 1) if a >= 1 else digits}f}"
    return str(x)


def table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def likelihood_label(row: dict) -> str:
    """'= 12.3' for an exact perplexity, '≤ 15.2 ± 0.1' for a bound (std over repeats, in ppl units)."""
    if row["kind"] == "bound":
        spread = row.get("ppl_std")
        s = f"≤ {fmt(row['ppl'])}"
        return s + (f" ± {fmt(spread)}" if spread is not None else "")
    return f"= {fmt(row['ppl'])}"


def likelihood_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        what = "exact NLL" if r["kind"] == "exact" else f"NELBO bound ({r.get('num_repeats', '?')} repeats)"
        body.append([r["system"], r["mode"], what, fmt(r["nll_per_token"], 4),
                     fmt(r.get("nll_std")) if r["kind"] == "bound" else "0 (deterministic)",
                     likelihood_label(r), r.get("tokens", "-")])
    return table(["system", "mode", "measure", "NLL/token (nats)", "std over repeats", "perplexity", "tokens"], body)


def sampler_label(row: dict) -> str:
    """The sampler of a row with its parallel threshold, e.g. 'parallel C=0.900' (rows that differ
    only in the threshold must not read alike)."""
    threshold = row.get("threshold")
    return f"{row.get('sampler', '-')}" + (f" C={fmt(threshold)}" if threshold is not None else "")


def generation_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        body.append([r.get("task", "-"), r["system"], sampler_label(r), fmt(r.get("steps")), fmt(r.get("nfe")),
                     fmt(r.get("top_p")), fmt(r.get("temperature")), fmt(r.get("gen_ppl")), fmt(r.get("entropy")),
                     fmt(r.get("distinct_2")), fmt(r.get("distinct_4")), fmt(r.get("corpus_distinct_4")),
                     r.get("num_samples", "-"), r.get("length", "-")])
    return table(["task", "system", "sampler", "steps", "NFE", "top-p", "temp.", "gen-PPL", "entropy (nats)",
                  "distinct-2", "distinct-4", "corpus distinct-4", "samples", "length"], body)


def infill_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        nll = fmt(r.get("nll_per_token"), 4)
        if r.get("nll_kind") == "bound":
            nll = "≤ " + nll + (f" ± {fmt(r['nll_std'])}" if r.get("nll_std") is not None else "")
        body.append([r["system"], r.get("context", "-"), r.get("decoding", "-"), r.get("span_length", "-"),
                     r.get("num_spans", "-"), fmt(r.get("token_accuracy")), nll, r.get("nll_kind", "-")])
    return table(["system", "context", "decoding", "span", "spans", "token accuracy", "span NLL/token", "NLL kind"],
                 body)


def speed_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        body.append([r["system"], sampler_label(r), fmt(r.get("steps")), fmt(r.get("nfe")), r["batch_size"],
                     r["length"], fmt(r["tokens_per_s"]), fmt(r["latency_s"]), fmt(r.get("prefill_s")),
                     fmt(r["peak_mem_mib"]), r.get("repeats", "-"), _acceptance(r)])
    return table(["system", "sampler", "steps", "NFE", "batch", "length", "tokens/s", "latency/seq (s, median)",
                  "prefill (s)", "peak mem (MiB)", "repeats", "tokens/round (acceptance; by draft position)"], body)


def _acceptance(r: dict) -> str:
    """Speculative decoding's mean tokens per round, draft acceptance rate and its rate per draft
    position (each given the drafts before it kept); '-' for other modes."""
    if "tokens_per_round" not in r:
        return "-"
    by_position = r.get("acceptance_by_position")
    positions = f"; {format_acceptance_by_position(by_position)}" if by_position else ""
    return f"{fmt(r['tokens_per_round'])} ({fmt(r.get('acceptance'))}{positions})"


# ---------------------------------------------------------------------------------- summary
