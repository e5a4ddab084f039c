"""PNG plots of a comparison (matplotlib, Agg backend; no display needed).

- ``gen_ppl_vs_nfe.png``: gen-PPL against NFE, one line per diffusion sampler (and system), the AR
  gen-PPL as a horizontal line, one panel per (task, top-p); the judge is named in the title.
- ``pareto.png``: drawn by ``diffmamba.eval.report.pareto`` with its table.
- ``likelihood.png``: perplexity bars; bounds drawn hatched, labelled "≤", with ±std error bars.
- ``speed.png``: tokens/s against batch size per system/sampler/NFE, one panel per length.
"""
from __future__ import annotations


from diffmamba.core.io import atomic_path
from diffmamba.eval.report.tables import finite

MARKERS = "osD^v<>ph*"


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib  # lazy: choosing the Agg backend is process-wide; done only when a plot is drawn
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # lazy: after the backend is chosen (line above)
    return plt


def save_figure(fig, path: str) -> str:
    """Write ``fig`` to ``path`` (PNG, atomically) and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)
    return path


def judge_name(results: dict) -> str:
    judge = results.get("judge") or {}
    return judge.get("name", "?")


def _style_log_panel(ax, xlabel: str, ylabel: str, title: str, legend_fontsize: int) -> None:
    """One panel of a per-task / per-length grid: log-log, x in base 2 (NFE and batch sizes are powers of two)."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_fontsize)


def plot_gen_ppl_vs_nfe(results: dict, path: str):
    rows = [r for r in results.get("generation", []) if finite(r.get("gen_ppl"))]
    panels = sorted({(r.get("task"), r.get("top_p")) for r in rows if r.get("mode") != "reference"},
                    key=lambda k: (str(k[0]), str(k[1])))
    if not panels or not any(r.get("mode") not in ("ar", "reference") for r in rows):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (task, top_p) in zip(axes[0], panels):
        g = [r for r in rows if (r.get("task"), r.get("top_p")) == (task, top_p)
             or (r.get("mode") == "reference" and r.get("task") == task)]
        curves = sorted({(r["system"], r.get("sampler")) for r in g if r.get("mode") not in ("ar", "reference")})
        for i, (system, sampler) in enumerate(curves):
            pts = sorted((r["nfe"], r["gen_ppl"], r.get("entropy")) for r in g
                         if (r["system"], r.get("sampler")) == (system, sampler) and finite(r.get("nfe")))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=MARKERS[i % len(MARKERS)],
                        label=f"{system}: {sampler}")
                for x, y, h in pts:  # entropy beside each point: low gen-PPL at low entropy is degenerate text
                    if finite(h):
                        ax.annotate(f"H {h:.2f}", (x, y), fontsize=6, xytext=(3, -8), textcoords="offset points")
        for r in (r for r in g if r.get("mode") == "ar"):
            h = f", H {r['entropy']:.2f}" if finite(r.get("entropy")) else ""
            ax.axhline(r["gen_ppl"], color="black", linestyle="--", linewidth=1.2,
                       label=(f"{r['system']} (NFE = {r['nfe']:g}{h})" if finite(r.get("nfe")) else r["system"]))
        for r in (r for r in g if r.get("mode") == "reference"):
            h = f" (H {r['entropy']:.2f})" if finite(r.get("entropy")) else ""
            ax.axhline(r["gen_ppl"], color="green", linestyle=":", linewidth=1.2, label=f"validation text{h}")
        _style_log_panel(ax, "NFE (network evaluations per sample)",
                         "generative perplexity (lower is better; H = entropy, nats)", f"{task}, top-p {top_p}",
                         legend_fontsize=7)
    fig.suptitle(f"gen-PPL vs NFE, judge: {judge_name(results)}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_likelihood(results: dict, path: str):
    rows = [r for r in results.get("likelihood", []) if finite(r.get("ppl"))]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(rows) + 1.5), 4.0))
    for i, r in enumerate(rows):
        bound = r["kind"] == "bound"
        err = r.get("ppl_std") if bound else None
        ax.bar(i, r["ppl"], yerr=err, capsize=5, color="tab:orange" if bound else "tab:blue",
               hatch="//" if bound else None, edgecolor="black")
        ax.annotate(("≤ " if bound else "= ") + f"{r['ppl']:.3g}", (i, r["ppl"]), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['system']}\n({'bound' if r['kind'] == 'bound' else 'exact'})" for r in rows], fontsize=8)
    ax.set_ylabel("validation perplexity (lower is better)")
    ax.set_title("likelihood on the same tokens (hatched = upper bound)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_speed(results: dict, path: str):
    rows = results.get("speed", [])
    lengths = sorted({r["length"] for r in rows})
    if not rows or len({r["batch_size"] for r in rows}) < 2:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(lengths), figsize=(5.5 * len(lengths), 4.0), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        g = [r for r in rows if r["length"] == length]
        for i, key in enumerate(sorted({(r["system"], r.get("sampler"), r.get("nfe")) for r in g}, key=str)):
            pts = sorted((r["batch_size"], r["tokens_per_s"]) for r in g if (r["system"], r.get("sampler"), r.get("nfe")) == key)
            label = f"{key[0]}: {key[1]}" + (f", NFE {key[2]:g}" if finite(key[2]) else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=MARKERS[i % len(MARKERS)],
                    linestyle="--" if any(r.get("mode") == "ar" for r in g if r["system"] == key[0]) else "-",
                    label=label)
        _style_log_panel(ax, "batch size", "tokens/s", f"length {length}", legend_fontsize=6)
    env = results.get("speed_environment") or ""
    fig.suptitle(f"generation throughput ({env[:90]})", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
