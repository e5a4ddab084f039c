"""Write a comparison: ``results.json`` (every number with its settings), ``report.md`` (tables and
a summary generated from the numbers) and PNG plots (``diffmamba.eval.report.plots``).

``results`` is a plain dict:

    meta        device, dtype, versions, command, created, seed
    validation  where the validation tokens came from (source, rows, tokens, seq_len, packing)
    judge       the judge's info (or absent)
    systems     [System.as_dict()]
    likelihood  rows: system, mode, kind ("exact" | "bound"), nll_per_token, ppl, (bound: nll_std, repeats)
    generation  rows: system, mode, task, sampler, steps, nfe, top_p, temperature, length, gen_ppl, entropy, distinct_n
    infill      rows: system, mode, context, span_length, token_accuracy, nll_per_token, nll_kind
    speed       rows: system, mode, sampler, steps, nfe, batch_size, length, tokens_per_s, latency_s, peak_mem_mib
    cache_bytes rows (--trunks with --contexts): system, trunk, layers, context, cache_bytes, per_layer, dtype
    notes       free-text caveats collected during the run

Any section may be missing; the tables and the summary cover what is there.
"""
from __future__ import annotations

import os
from typing import Optional

from diffmamba.core.io import write_json, write_text
from diffmamba.eval.report.bd3lm import dial_section, plot_dial
from diffmamba.eval.report.pareto import pareto_section, plot_pareto
from diffmamba.eval.report.plots import plot_gen_ppl_vs_nfe, plot_likelihood, plot_speed
from diffmamba.eval.report.tables import (ENTROPY_TOLERANCE, finite, fmt, generation_table, infill_table,
                                          likelihood_table, sampler_label, speed_table)
from diffmamba.eval.report.trunks import plot_trunks, trunk_section

UNSTABLE_TIMING = 1.5  # slowest / fastest timed repeat above this marks a speed comparison as noisy


# ---------------------------------------------------------------------------------- results.json

def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


# ---------------------------------------------------------------------------------- tables

def _by_mode(rows: list[dict], ar: bool) -> list[dict]:
    return [r for r in rows if (r.get("mode") == "ar") == ar and r.get("mode") != "reference"]


def likelihood_summary(rows: list[dict]) -> list[str]:
    exact = [r for r in rows if r["kind"] == "exact"]
    bounds = [r for r in rows if r["kind"] == "bound"]
    out = []
    for a in exact:
        for b in bounds:
            ratio = b["ppl"] / a["ppl"]
            if b["ppl"] > a["ppl"]:
                out.append(f"Likelihood: {a['system']} has exact perplexity {fmt(a['ppl'])}; {b['system']}'s bound is "
                           f"≤ {fmt(b['ppl'])} ({fmt(ratio)}× higher). The bound is only an upper limit, so the true "
                           f"gap is at most this large; on the numbers measured, {a['system']} wins.")
            else:
                out.append(f"Likelihood: {b['system']}'s bound ≤ {fmt(b['ppl'])} is already below {a['system']}'s exact "
                           f"perplexity {fmt(a['ppl'])}, so {b['system']} wins on likelihood.")
    return out


def generation_summary(rows: list[dict]) -> list[str]:
    out = []
    refs = [r for r in rows if r.get("mode") == "reference" and finite(r.get("gen_ppl"))]
    groups = sorted({(r.get("task"), r.get("top_p"), r.get("temperature"), r.get("length")) for r in rows
                     if r.get("mode") != "reference"}, key=lambda k: tuple(str(x) for x in k))
    for task, top_p, temp, length in groups:
        g = [r for r in rows if (r.get("task"), r.get("top_p"), r.get("temperature"), r.get("length"))
             == (task, top_p, temp, length) and finite(r.get("gen_ppl"))]
        ar = _by_mode(g, ar=True)
        diff = _by_mode(g, ar=False)
        ref = [r for r in refs if (r.get("task"), r.get("length")) == (task, length)]
        if not ar or not diff:
            continue
        a = min(ar, key=lambda r: r["gen_ppl"])
        d = min(diff, key=lambda r: r["gen_ppl"])
        head = f"Generation ({task}, top-p {fmt(top_p)}, temperature {fmt(temp)}, length {length}): "
        winner, loser = (a, d) if a["gen_ppl"] <= d["gen_ppl"] else (d, a)
        line = (head + f"{_who(winner)} has the lower gen-PPL, {fmt(winner['gen_ppl'])} vs {fmt(loser['gen_ppl'])} "
                f"for {_who(loser)}.")
        if len(diff) > 1:
            line += (f" The diffusion figure is the lowest of {len(diff)} settings measured on "
                     f"{d.get('num_samples', '?')} samples each, so it is an optimistic pick.")
        gap = loser.get("entropy", float("nan")) - winner.get("entropy", float("nan"))
        if finite(gap) and gap > ENTROPY_TOLERANCE:
            line += (f" Caution: the winner's unigram entropy is {fmt(gap)} nats lower ({fmt(winner['entropy'])} vs "
                     f"{fmt(loser['entropy'])}), so part of its advantage may be less diverse text, not better text.")
        elif finite(gap):
            line += f" Entropies are within {ENTROPY_TOLERANCE} nats ({fmt(winner['entropy'])} vs {fmt(loser['entropy'])})."
        if ref:
            line += f" Validation text itself scores gen-PPL {fmt(ref[0]['gen_ppl'])} at entropy {fmt(ref[0]['entropy'])}."
        out.append(line)
        for sampler in sorted({r.get("sampler") for r in diff}):
            curve = sorted((r for r in diff if r.get("sampler") == sampler), key=lambda r: r.get("nfe") or 0)
            match = [r for r in curve if r["gen_ppl"] <= a["gen_ppl"]]
            if match and len(curve) > 1:
                out.append(f"  - {sampler}: matches the AR gen-PPL from NFE {fmt(match[0].get('nfe'))} on.")
            elif len(curve) > 1:
                out.append(f"  - {sampler}: does not reach the AR gen-PPL at any NFE measured (best "
                           f"{fmt(min(r['gen_ppl'] for r in curve))} at NFE up to {fmt(curve[-1].get('nfe'))}).")
    return out


def _who(r: dict) -> str:
    if r.get("mode") == "ar":
        return r["system"]
    return f"{r['system']} ({sampler_label(r)}, NFE {fmt(r.get('nfe'))})"


def infill_summary(rows: list[dict]) -> list[str]:
    ar = _by_mode(rows, ar=True)
    diff = _by_mode(rows, ar=False)
    out = []
    for d in diff:
        for a in ar:
            if a.get("span_length") != d.get("span_length"):
                continue
            better = d["system"] if d["token_accuracy"] > a["token_accuracy"] else a["system"]
            if d["token_accuracy"] == a["token_accuracy"]:
                better = "neither"
            out.append(f"Infilling (span {d.get('span_length')}): {d['system']} with both contexts fills "
                       f"{fmt(100 * d['token_accuracy'])}% of tokens correctly vs {fmt(100 * a['token_accuracy'])}% for "
                       f"{a['system']} with the left context only; more accurate: {better}. Span NLL/token: "
                       f"≤ {fmt(d['nll_per_token'], 4)} (bound) vs {fmt(a['nll_per_token'], 4)} (exact).")
    return out


def speed_summary(rows: list[dict]) -> list[str]:
    out = []
    for bs, length in sorted({(r["batch_size"], r["length"]) for r in rows}):
        g = [r for r in rows if (r["batch_size"], r["length"]) == (bs, length)]
        ar = _by_mode(g, ar=True)
        diff = _by_mode(g, ar=False)
        if not ar or not diff:
            continue
        a = max(ar, key=lambda r: r["tokens_per_s"])
        faster = [r for r in diff if r["tokens_per_s"] > a["tokens_per_s"]]
        fastest = max(diff, key=lambda r: r["tokens_per_s"])
        line = (f"Speed (batch {bs}, length {length}): {a['system']} decodes {fmt(a['tokens_per_s'])} tokens/s; "
                f"fastest diffusion setting {fastest.get('sampler')} at NFE {fmt(fastest.get('nfe'))}: "
                f"{fmt(fastest['tokens_per_s'])} tokens/s ({fmt(fastest['tokens_per_s'] / a['tokens_per_s'])}× AR).")
        if faster:
            which = ", ".join(sorted({f"{r.get('sampler')} NFE {fmt(r.get('nfe'))}" for r in faster}))
            line += f" Diffusion settings faster than AR here: {which}."
        else:
            line += " No diffusion setting measured is faster than AR here."
        spread = max((r["latency_max_s"] / r["latency_min_s"] for r in g
                      if r.get("latency_min_s") and r.get("latency_max_s")), default=1.0)
        if spread > UNSTABLE_TIMING:
            line += (f" Caution: timings were unstable (slowest/fastest repeat up to {fmt(spread)}×, e.g. a shared "
                     "or busy machine); treat these ratios as indicative only.")
        mem_a, mem_d = a["peak_mem_mib"], fastest["peak_mem_mib"]
        line += f" Peak memory: AR {fmt(mem_a)} MiB vs diffusion {fmt(mem_d)} MiB ({a.get('mem_kind', 'see label')})."
        out.append(line)
    return out


def summary(results: dict) -> list[str]:
    return (likelihood_summary(results.get("likelihood", [])) + generation_summary(results.get("generation", []))
            + infill_summary(results.get("infill", [])) + speed_summary(results.get("speed", [])))


# ---------------------------------------------------------------------------------- markdown

def render_markdown(results: dict, plots: Optional[dict] = None) -> str:
    meta = results.get("meta", {})
    lines = ["# diffmamba: diffusion vs AR comparison", ""]
    if meta:
        lines += [f"- created: {meta.get('created', '-')}"]
        commands = meta.get("commands") or [meta.get("command", "-")]
        lines += [f"- command: `{c}`" for c in commands]
        lines += [f"- environment: {meta.get('environment_line', '-')}"]
    ckpts = results.get("checkpoints", {})
    for s in results.get("systems", []):
        settings = ", ".join(f"{k}={v}" for k, v in s.get("settings", {}).items())
        c = ckpts.get(s["checkpoint"], {})
        facts = [f"{c['parameters'] / 1e6:.2f}M parameters" if c.get("parameters") else None,
                 f"trained objective {c['trained_objective']}" if c.get("trained_objective") else None,
                 f"{c['trained_steps']} steps" if c.get("trained_steps") is not None else None,
                 f"started from `{c['init_from']}`" if c.get("init_from") else None,
                 f"{c['weights']} weights" if c.get("weights") else None]
        facts = ", ".join(f for f in facts if f)
        lines.append(f"- system **{s['name']}**: mode `{s['mode']}`, checkpoint `{s['checkpoint']}`"
                     + (f" ({facts})" if facts else "") + (f", {settings}" if settings else ""))
    judge = results.get("judge")
    if judge:
        lines.append(f"- judge LM: **{judge.get('name')}** ({judge.get('kind')}, {judge.get('parameters', '?')} "
                     f"parameters, tokenizer of {judge.get('tokenizer_vocab_size', '?')} tokens, context "
                     f"{judge.get('max_length', '?')})" + (f"; {judge['note']}" if judge.get("note") else ""))
    val = results.get("validation")
    if val:
        lines.append(f"- validation tokens: {val.get('rows')} rows × {val.get('seq_len')} = {val.get('tokens')} tokens "
                     f"from `{val.get('source')}` (packing {val.get('packing')}, config from {val.get('config_from')})")
    lines.append("")
    summ = summary(results)
    lines += ["## Summary", "", "Generated from the numbers below (lower perplexity is better; the diffusion "
              "likelihood is an upper bound).", ""]
    lines += [f"- {s}" if not s.startswith("  ") else s for s in summ] or ["- (nothing to compare)"]
    lines.append("")
    plots = plots or {}
    if results.get("likelihood"):
        lines += ["## Likelihood on the same validation tokens", "",
                  "AR: exact negative log-likelihood (the first token of each row is scored after an EOS "
                  "separator, so both modes score the same tokens). Diffusion: the continuous-time NELBO, an upper "
                  "bound on its NLL (reported with ≤), estimated with one antithetic time per row, fixed seeds, and "
                  "repeated to show its spread.", "", likelihood_table(results["likelihood"]), ""]
        lines += _plot_line(plots, "likelihood")
    if results.get("generation"):
        judge_name = judge.get("name") if judge else "?"
        lines += ["## Generation quality", "",
                  f"gen-PPL under the judge **{judge_name}** (decoded text re-tokenised with the judge's tokenizer), "
                  "with unigram entropy (nats, per sample, mean) and distinct-n (unique/total n-grams within a "
                  "sample; corpus = pooled over samples) of the model's token ids. Compare gen-PPL only at matched "
                  "top-p and similar entropy.", "", generation_table(results["generation"]), ""]
        lines += _plot_line(plots, "gen_ppl_vs_nfe")
    if results.get("infill"):
        lines += ["## Infilling", "", "Middle spans of validation rows are masked. Diffusion sees both sides; AR "
                  "sees the left context only. Accuracy of the generated fill against the original tokens.", "",
                  infill_table(results["infill"]), ""]
    if results.get("speed"):
        speed_env = results.get("speed_environment") or meta.get("environment_line", "-")
        labels = sorted({r.get("mem_label", "") for r in results["speed"]})
        lines += ["## Speed and memory", "", f"Environment: {speed_env}. Median of the timed repeats after warm-up; "
                  "tokens/s = batch × generated length / latency.", ""]
        lines += [f"Memory: {lbl}." for lbl in labels if lbl] + ["", speed_table(results["speed"]), ""]
        lines += _plot_line(plots, "speed")
    lines += pareto_section(results, os.path.basename(plots["pareto"]) if plots.get("pareto") else None)
    lines += dial_section(results, os.path.basename(plots["block_dial"]) if plots.get("block_dial") else None)
    lines += trunk_section(results, os.path.basename(plots["trunks"]) if plots.get("trunks") else None)
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)


def _plot_line(plots: dict, key: str) -> list[str]:
    if key in plots and plots[key]:
        return [f"![{key}]({os.path.basename(plots[key])})", ""]
    return []


def write_results(results: dict, out_dir: str) -> str:
    """Write ``out_dir/results.json`` (atomically; also after each finished section); return its path."""
    json_path = os.path.join(out_dir, "results.json")
    write_json(json_path, results, default=_json_default)
    return json_path


def write_report(results: dict, out_dir: str) -> dict:
    """Write results.json, the plots and report.md into ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    plots = make_plots(results, out_dir)
    results["plots"] = {k: os.path.basename(v) for k, v in plots.items()}
    json_path = write_results(results, out_dir)
    md_path = os.path.join(out_dir, "report.md")
    write_text(md_path, render_markdown(results, plots))
    return {"results": json_path, "report": md_path, **plots}


def make_plots(results: dict, out_dir: str) -> dict:
    """Draw every plot the results support; returns {name: path} of the files written."""
    makers = {"gen_ppl_vs_nfe": plot_gen_ppl_vs_nfe, "pareto": plot_pareto,
              "likelihood": plot_likelihood, "speed": plot_speed, "block_dial": plot_dial,
              "trunks": plot_trunks}
    out = {}
    for name, fn in makers.items():
        path = fn(results, os.path.join(out_dir, f"{name}.png"))
        if path:
            out[name] = path
    return out
