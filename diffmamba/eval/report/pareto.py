"""Quality against speed: the Pareto table, the goal check and ``pareto.png``.

A *point* joins an unconditional generation row (gen-PPL under the judge, unigram entropy) with
the speed row of the same system and setting at the generation length, once per batch size
measured. Within a batch size a point is on the front when no other point is at least as fast and
at least as good, and strictly better in one.

The goal check asks, per batch size and per AR system R: is there a point of another decoding
family (diffusion, block, parallel, speculative) with tokens/s >= R's and gen-PPL <= (1 + 10%)
R's, at R's top-p and at matched entropy (within ``ENTROPY_TOLERANCE`` nats of R's)? The lines say
which points meet it, or, plainly, that none does and which came closest.
"""
from __future__ import annotations

from typing import Optional

from diffmamba.eval.report.plots import MARKERS, judge_name, pyplot, save_figure
from diffmamba.eval.report.tables import ENTROPY_TOLERANCE, finite, fmt, sampler_label, table

GOAL_PPL_SLACK = 0.10  # gen-PPL within 10% of AR's
_SAME_SETTING = ("system", "sampler", "steps", "threshold")


def pareto_points(results: dict, batch_size: Optional[int] = None) -> list[dict]:
    """One point per (unconditional generation row, speed row of that batch size); only the largest
    batch measured when ``batch_size`` is None."""
    speed = results.get("speed", [])
    points = []
    for r in results.get("generation", []):
        if r.get("mode") == "reference" or r.get("task") != "unconditional" or not finite(r.get("gen_ppl")):
            continue
        match = [s for s in speed
                 if all(s.get(k) == r.get(k) for k in _SAME_SETTING) and s["length"] == r.get("length")]
        if batch_size is not None:
            match = [s for s in match if s["batch_size"] == batch_size]
        elif match:
            match = [max(match, key=lambda s: s["batch_size"])]
        points += [{"system": r["system"], "mode": r.get("mode"), "sampler": r.get("sampler"), "nfe": r.get("nfe"),
                    "entropy": r.get("entropy"), "top_p": r.get("top_p"), "threshold": r.get("threshold"),
                    "gen_ppl": r["gen_ppl"], "tokens_per_s": s["tokens_per_s"], "batch_size": s["batch_size"],
                    "length": s["length"]} for s in match]
    return points


def points_by_batch(results: dict) -> dict[int, list[dict]]:
    """{batch size: its points}, ascending, for the batch sizes that have any."""
    sizes = sorted({s["batch_size"] for s in results.get("speed", [])})
    by_batch = {b: pareto_points(results, b) for b in sizes}
    return {b: points for b, points in by_batch.items() if points}


def pareto_front(points: list[dict]) -> list[dict]:
    """Points not dominated by another that is at least as fast and at least as good (and better in one)."""
    front = []
    for p in points:
        dominated = any(q is not p and q["tokens_per_s"] >= p["tokens_per_s"] and q["gen_ppl"] <= p["gen_ppl"]
                        and (q["tokens_per_s"] > p["tokens_per_s"] or q["gen_ppl"] < p["gen_ppl"]) for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p["tokens_per_s"])


def meets_goal(point: dict, ar: dict) -> bool:
    """``point`` is at least as fast as ``ar``, within 10% of its gen-PPL, at its top-p and entropy."""
    return (point["tokens_per_s"] >= ar["tokens_per_s"] and point["gen_ppl"] <= (1 + GOAL_PPL_SLACK) * ar["gen_ppl"]
            and point.get("top_p") == ar.get("top_p") and finite(point.get("entropy")) and finite(ar.get("entropy"))
            and abs(point["entropy"] - ar["entropy"]) <= ENTROPY_TOLERANCE)


def goal_lines(points: list[dict]) -> list[str]:
    """The goal verdict for one batch size's points, one line per AR reference point."""
    lines = []
    others = [p for p in points if p["mode"] != "ar"]
    for ar in (p for p in points if p["mode"] == "ar"):
        head = (f"batch {ar['batch_size']}, vs {ar['system']} ({fmt(ar['tokens_per_s'])} tokens/s, gen-PPL "
                f"{fmt(ar['gen_ppl'])}, H {fmt(ar.get('entropy'))}, top-p {fmt(ar.get('top_p'))}): ")
        met = [p for p in others if meets_goal(p, ar)]
        if met:
            lines.append(head + "**met** by " + "; ".join(
                f"{p['system']} {sampler_label(p)} ({fmt(p['tokens_per_s'] / ar['tokens_per_s'])}× the tokens/s, gen-PPL "
                f"{fmt(p['gen_ppl'])}, H {fmt(p.get('entropy'))})" for p in met) + ".")
            continue
        fast = [p for p in others if p["tokens_per_s"] >= ar["tokens_per_s"] and p.get("top_p") == ar.get("top_p")]
        closest = min(fast, key=lambda p: p["gen_ppl"]) if fast else None
        line = head + "**not met**: no point is at least as fast with gen-PPL within 10% at matched entropy."
        if closest is not None:
            line += (f" The best at least as fast is {closest['system']} {sampler_label(closest)}: gen-PPL "
                     f"{fmt(closest['gen_ppl'])} ({fmt(closest['gen_ppl'] / ar['gen_ppl'])}× AR's), H "
                     f"{fmt(closest.get('entropy'))}.")
        lines.append(line)
    return lines


def pareto_section(results: dict, plot_file: Optional[str] = None) -> list[str]:
    """Markdown lines: per batch size, the points sorted by tokens/s with the front marked, then the goal check."""
    by_batch = points_by_batch(results)
    if not by_batch:
        return []
    lines = ["## Quality vs speed (Pareto)", "",
             "Each unconditional generation setting joined with its decoding speed at each batch size (same "
             "system, sampler, steps and threshold, at the generation length). ★ marks the Pareto front of its "
             "batch size. Goal: a diffusion-family point (diffusion, block, parallel, speculative) at ≥ an AR "
             f"system's tokens/s with gen-PPL within {round(100 * GOAL_PPL_SLACK)}% of that AR's, at the same top-p "
             f"and entropy within {ENTROPY_TOLERANCE} nats.", ""]
    verdicts = []
    for b, points in by_batch.items():
        front = pareto_front(points)
        rows = [["★" if p in front else "", p["system"], sampler_label(p), fmt(p.get("nfe")), fmt(p.get("top_p")),
                 fmt(p["gen_ppl"]), fmt(p.get("entropy")), fmt(p["tokens_per_s"])]
                for p in sorted(points, key=lambda p: -p["tokens_per_s"])]
        lines += [f"Batch {b}:", "", table(["front", "system", "setting", "NFE", "top-p", "gen-PPL", "entropy",
                                            "tokens/s"], rows), ""]
        verdicts += goal_lines(points)
    lines += ["Goal check:", ""] + [f"- {v}" for v in verdicts] + [""]
    if plot_file:
        lines += [f"![pareto]({plot_file})", ""]
    return lines


def plot_pareto(results: dict, path: str):
    """gen-PPL against tokens/s, one panel per batch size, the front drawn through each; one legend
    below the panels, so a setting keeps its marker and colour in every panel and hides no point."""
    by_batch = points_by_batch(results)
    if not by_batch:
        return None
    plt = pyplot()
    groups = sorted({(p["system"], sampler_label(p)) for points in by_batch.values() for p in points})
    # 20 colours against 10 markers: the 11th setting no longer looks like the 1st
    style = {g: (MARKERS[i % len(MARKERS)], plt.cm.tab20(i % 20)) for i, g in enumerate(groups)}
    rows = -(-len(groups) // 3) + 1  # legend rows (3 columns, and the front)
    legend_height = 0.14 * rows + 0.1  # inches
    fig, axes = plt.subplots(1, len(by_batch), figsize=(6.0 * len(by_batch), 4.6 + legend_height), squeeze=False)
    for ax, (b, points) in zip(axes[0], by_batch.items()):
        for group in groups:
            g = [p for p in points if (p["system"], sampler_label(p)) == group]
            if not g:
                continue
            marker, colour = style[group]
            ax.scatter([p["tokens_per_s"] for p in g], [p["gen_ppl"] for p in g], marker=marker, color=colour, s=40,
                       label=f"{group[0]}: {group[1]}")
            for p in g:
                label = (f"NFE {p['nfe']:g}" if finite(p.get("nfe")) else "") + \
                    (f", H {p['entropy']:.2f}" if finite(p.get("entropy")) else "")
                ax.annotate(label, (p["tokens_per_s"], p["gen_ppl"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        front = pareto_front(points)
        ax.plot([p["tokens_per_s"] for p in front], [p["gen_ppl"] for p in front], color="gray", linewidth=1,
                label="Pareto front")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens/s (unconditional; higher is better)")
        ax.set_ylabel("gen-PPL (lower is better)")
        ax.set_title(f"batch {b}: quality vs speed (H = unigram entropy, nats)\njudge: {judge_name(results)}",
                     fontsize=9)
        ax.grid(alpha=0.3)
    legend = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_height / (4.6 + legend_height), 1, 1))
    return save_figure(fig, path)
