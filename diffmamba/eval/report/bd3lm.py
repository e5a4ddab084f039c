"""The report's "L' dial" section and plot: block diffusion between AR decoding and full diffusion.

Reads the rows ``diffmamba.eval`` already writes (``likelihood``, ``generation``) plus
``context_speed`` (``diffmamba.eval.bd3lm.evaluate_context_speed``); every system is a row,
ordered AR, block L' ascending, full diffusion.
"""
from __future__ import annotations

from typing import Optional

from diffmamba.eval.report.plots import pyplot, save_figure
from diffmamba.eval.report.tables import finite, fmt, likelihood_label, table

DIAL_TITLE = "## Block diffusion: the L' dial"


def _order(system: dict) -> tuple:
    mode = system["mode"]
    rank = {"ar": 0, "block": 1}.get(mode, 2)
    return rank, system.get("settings", {}).get("block_size") or 0, system["name"]



def best_generation(rows: list[dict], system: str) -> Optional[dict]:
    """The lowest-gen-PPL row of ``system`` for the first task it has (unconditional first)."""
    mine = [r for r in rows if r.get("system") == system and finite(r.get("gen_ppl"))]
    for task in ("unconditional", "prompted"):
        of_task = [r for r in mine if r.get("task") == task]
        if of_task:
            return min(of_task, key=lambda r: r["gen_ppl"])
    return None


def has_dial(results: dict) -> bool:
    return any(s.get("mode") == "block" for s in results.get("systems", [])) or bool(results.get("context_speed"))


def dial_section(results: dict, plot_file: Optional[str] = None) -> list[str]:
    """Markdown lines of the section (empty when there is no block system and no context curve)."""
    if not has_dial(results):
        return []
    systems = sorted(results.get("systems", []), key=_order)
    likelihood = {r["system"]: r for r in results.get("likelihood", [])}
    generation = results.get("generation", [])
    speed = results.get("context_speed", [])
    contexts = sorted({r["context"] for r in speed})
    body = []
    for s in systems:
        lik = likelihood.get(s["name"])
        gen = best_generation(generation, s["name"])
        gen_cell = "-" if gen is None else (f"{fmt(gen['gen_ppl'])} (entropy {fmt(gen.get('entropy'))}, "
                                            f"{gen.get('sampler')}, NFE {fmt(gen.get('nfe'))})")
        per_context = {r["context"]: r for r in speed if r["system"] == s["name"]}
        cells = []
        for c in contexts:
            r = per_context.get(c)
            cells.append("-" if r is None else f"{fmt(r['decode_tokens_per_s'])} / {fmt(1e3 * r['decode_latency_per_token_s'])}")
        prefill = [per_context[c]["prefill_s"] for c in contexts if c in per_context]
        body.append([s["name"], s["mode"], s.get("settings", {}).get("block_size") or "-",
                     likelihood_label(lik) if lik else "-", gen_cell, *cells,
                     fmt(prefill[-1]) if prefill else "-"])
    headers = ["system", "mode", "L'", "perplexity (= exact, ≤ bound)", "best gen-PPL"]
    headers += [f"context {c}: tokens/s / ms per token" for c in contexts] + ["prefill s (longest context)"]
    lines = [DIAL_TITLE, "",
             "One trunk family from AR (L' = 1: next-token prediction from the prefix's scan states) through block "
             "diffusion (blocks of L' tokens denoised given an exact, constant-size per-layer state cache) to full "
             "diffusion (L' = T). Speed: batch 1, one denoising step per generated token, generating "
             f"{speed[0]['length'] if speed else '-'} tokens after a context of the given length; tokens/s and "
             "latency exclude the one-off prompt prefill, shown apart. Flat columns = cost independent of the "
             "context.", "", table(headers, body), ""]
    lines += _dial_summary(systems, speed, contexts)
    if plot_file:
        lines += [f"![block dial]({plot_file})", ""]
    return lines


def _dial_summary(systems: list[dict], speed: list[dict], contexts: list[int]) -> list[str]:
    """One line per system: how decode time per token changes from the shortest to the longest context."""
    if len(contexts) < 2:
        return []
    lines = []
    for s in systems:
        per = {r["context"]: r for r in speed if r["system"] == s["name"]}
        if contexts[0] in per and contexts[-1] in per:
            a, b = per[contexts[0]], per[contexts[-1]]
            ratio = b["decode_latency_per_token_s"] / a["decode_latency_per_token_s"]
            lines.append(f"- {s['name']}: decode time per token ×{fmt(ratio)} from context {contexts[0]} to "
                         f"{contexts[-1]} ({fmt(1e3 * a['decode_latency_per_token_s'])} → "
                         f"{fmt(1e3 * b['decode_latency_per_token_s'])} ms).")
    return lines + [""] if lines else []


def plot_dial(results: dict, path: str) -> Optional[str]:
    """Perplexity vs L' (AR and full diffusion as lines) and decode time per token vs context."""
    if not has_dial(results):
        return None
    likelihood = {r["system"]: r for r in results.get("likelihood", []) if finite(r.get("ppl"))}
    speed = results.get("context_speed", [])
    systems = sorted(results.get("systems", []), key=_order)
    blocks = [s for s in systems if s["mode"] == "block" and s["name"] in likelihood]
    if not blocks and not speed:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if blocks:
        sizes = [s["settings"]["block_size"] for s in blocks]
        left.plot(sizes, [likelihood[s["name"]]["ppl"] for s in blocks], marker="o", label="block diffusion")
        for s in systems:
            if s["mode"] != "block" and s["name"] in likelihood:
                r = likelihood[s["name"]]
                left.axhline(r["ppl"], linestyle="--" if s["mode"] == "ar" else ":",
                             label=f"{s['name']} ({'exact' if r['kind'] == 'exact' else 'bound'})")
        left.set_xscale("log", base=2)
        left.set_xlabel("block size L'")
        left.set_ylabel("validation perplexity (≤ bound; L' = 1 exact)")
        left.legend(fontsize=7)
        left.grid(alpha=0.3)
    for s in systems:
        pts = sorted((r["context"], 1e3 * r["decode_latency_per_token_s"]) for r in speed if r["system"] == s["name"])
        if pts:
            right.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s["name"])
    right.set_xlabel("context length (tokens)")
    right.set_ylabel("decode time per generated token (ms, batch 1)")
    right.grid(alpha=0.3)
    if speed:
        right.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
