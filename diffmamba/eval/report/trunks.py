"""The trunks section of report.md and its plot (``diffmamba eval compare --trunks``; the
measurements: ``diffmamba.eval.trunks``): one row per trunk system, decode-cache bytes and sampling
tokens/s against the context length."""
from __future__ import annotations

from typing import Optional

from diffmamba.eval.report.bd3lm import best_generation
from diffmamba.eval.report.plots import pyplot, save_figure
from diffmamba.eval.report.tables import fmt, likelihood_label, table

TRUNKS_TITLE = "## Trunks: Mamba-3, attention, hybrid"


def _mib(n: float) -> str:
    return f"{n / 2**20:.3f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def trunk_section(results: dict, plot_file: Optional[str] = None) -> list[str]:
    """Markdown lines: one row per trunk system (empty when there is none)."""
    systems = [s for s in results.get("systems", []) if "trunk" in s.get("settings", {})]
    if not systems:
        return []
    ckpts = results.get("checkpoints", {})
    likelihood = {r["system"]: r for r in results.get("likelihood", [])}
    cache = results.get("cache_bytes", [])
    speed = results.get("context_speed", [])
    contexts = sorted({r["context"] for r in cache} | {r["context"] for r in speed})
    body = []
    for s in systems:
        lik = likelihood.get(s["name"])
        gen = best_generation(results.get("generation", []), s["name"])
        params = ckpts.get(s["checkpoint"], {}).get("parameters")
        row = [s["settings"]["trunk"], s["settings"]["layers"], f"{params / 1e6:.2f}M" if params else "-",
               likelihood_label(lik) if lik else "-",
               "-" if gen is None else f"{fmt(gen['gen_ppl'])} ({fmt(gen.get('entropy'))})"]
        for c in contexts:
            tps = next((r["tokens_per_s"] for r in speed if r["system"] == s["name"] and r["context"] == c), None)
            size = next((r["cache_bytes"] for r in cache if r["system"] == s["name"] and r["context"] == c), None)
            row.append(f"{fmt(tps)} / {_mib(size) if size is not None else '-'}")
        body.append(row)
    headers = ["trunk", "layers", "parameters", "perplexity (≤ bound)", "best gen-PPL (entropy)"]
    headers += [f"context {c}: sampling tokens/s / cache per sequence" for c in contexts]
    lines = [TRUNKS_TITLE, "",
             "The same objective, tokenizer and validation tokens; only the mixer of each block differs "
             "(M = bidirectional Mamba-3, A = attention). Sampling tokens/s: batch 1, full-sequence diffusion "
             "generating the speed length after a context of the given length, one step per token. Cache: the "
             "per-layer decode state (AR decoding, block sampler) after that context, per sequence, measured: "
             "constant for Mamba-3 layers, linear in the context for attention layers.", "", table(headers, body), ""]
    if plot_file:
        lines += [f"![trunks]({plot_file})", ""]
    return lines


def plot_trunks(results: dict, path: str) -> Optional[str]:
    """Decode-cache bytes and sampling tokens/s against the context length, one line per trunk."""
    cache = results.get("cache_bytes", [])
    if not cache:
        return None
    speed = results.get("context_speed", [])
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["system"] for r in cache):
        pts = sorted((r["context"], r["cache_bytes"] / 2**20) for r in cache if r["system"] == name)
        left.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        pts = sorted((r["context"], r["tokens_per_s"]) for r in speed if r["system"] == name)
        if pts:
            right.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    for ax, ylabel in ((left, "decode cache per sequence (MiB)"), (right, "sampling tokens/s (batch 1)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
