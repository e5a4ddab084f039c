"""Trunks side by side in ``diffmamba eval``: Mamba-3, attention and hybrid diffusion checkpoints.

    diffmamba eval compare --trunks runs/tiny-diffusion runs/tiny-attention runs/tiny-hybrid \\
        --judge none --contexts 64 512 2048 --out eval/trunks

Each ``--trunks`` checkpoint becomes a diffusion-mode system named by its trunk (``mamba3``,
``attention``, ``hybrid (MMMA)``, from its ``layer_pattern``), so the likelihood bound, gen-PPL with
entropy and the speed tables cover it like any system. With ``--contexts`` the report adds, per
trunk, sampling speed after contexts of those lengths (``diffmamba.block.evaluation``) and the bytes
of the decode cache per sequence: the per-layer state AR decoding and the block sampler keep after
a context of C tokens — a fixed-size ``Mamba3State`` per Mamba-3 layer, a ``KVCache`` growing
linearly with C per attention layer. Measured by prefilling C random tokens, not computed.

Kept free of torch imports at module level: the eval CLI builds its parser from here.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from diffmamba.errors import UserError

TRUNKS_TITLE = "## Trunks: Mamba-3, attention, hybrid"


# ------------------------------------------------------------------------------ cache and names

def cache_bytes(states) -> int:
    """Bytes held by a per-layer decode cache (a list of Mamba3State / KVCache, or None = empty)."""
    import torch

    from diffmamba.modules.attention import KVCache

    total = 0
    for state in states or ():
        if isinstance(state, KVCache):
            total += state.nbytes
        else:
            total += sum(t.numel() * t.element_size() for t in state if isinstance(t, torch.Tensor))
    return total


def trunk_name(config) -> str:
    """'mamba3', 'attention' or 'hybrid (MMMA)' from a ModelConfig's layer pattern."""
    kinds = set(config.layer_kinds)
    if kinds == {"M"}:
        return "mamba3"
    if kinds == {"A"}:
        return "attention"
    return f"hybrid ({config.layer_pattern})"


def _checkpoint_config(path: str):
    """The ModelConfig in a checkpoint's config.json (no weights loaded)."""
    from diffmamba.config import ModelConfig, config_from_dict
    from diffmamba.eval.loading import find_model_dir

    model_dir = find_model_dir(path)
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            return config_from_dict(ModelConfig, json.load(f)["model"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--trunks {path}: no readable config.json with a 'model' section; pass a run folder or "
                        "its final/ written by `diffmamba train`") from None


def trunk_systems(checkpoints: Sequence[str]) -> list:
    """One diffusion-mode ``System`` per checkpoint, named by its trunk (path added on a clash)."""
    from diffmamba.eval.systems import System

    described = []
    for path in checkpoints:
        config = _checkpoint_config(path)
        described.append((path, trunk_name(config), config.layer_kinds))
    names = [name for _, name, _ in described]
    return [System(f"diffusion · {name}" + ("" if names.count(name) == 1 else f" ({path})"), "diffusion", path,
                   {"trunk": name, "layers": kinds}) for path, name, kinds in described]


def add_trunk_arguments(parser, parts: tuple) -> None:
    parser.add_argument("--trunks", nargs="+", default=None, metavar="CKPT",
                        help="diffusion checkpoints of different trunks (Mamba-3, attention, hybrid), compared side "
                             "by side in diffusion mode; with --contexts also sampling speed and decode-cache bytes "
                             "against the context length")


def apply_trunk_options(args, opts) -> None:
    if getattr(args, "trunks", None):
        opts.systems = list(opts.systems) + trunk_systems(args.trunks)


# ---------------------------------------------------------------------------------- measuring

def evaluate_cache_bytes(systems, ckpts: dict, contexts: Sequence[int], seed: int = 0, device=None) -> list[dict]:
    """Rows {system, trunk, layers, context, cache_bytes, per_layer}: the decode cache per sequence
    (batch 1) after prefilling ``context`` random tokens, in the model's dtype."""
    import torch

    rows = []
    for system in systems:
        if "trunk" not in system.settings:
            continue
        model = ckpts[system.checkpoint].model
        vocab = model.config.vocab_size
        for context in contexts:
            if context < 1:
                continue
            tokens = torch.randint(0, vocab, (1, context), generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                _, state = model.prefill(tokens.to(device or next(model.parameters()).device))
            rows.append({"system": system.name, "trunk": system.settings["trunk"],
                         "layers": system.settings["layers"], "context": int(context),
                         "cache_bytes": cache_bytes(state), "per_layer": [cache_bytes([s]) for s in state],
                         "dtype": str(next(model.parameters()).dtype).replace("torch.", "")})
    return rows


# ------------------------------------------------------------------------------------- report

def _mib(n: float) -> str:
    return f"{n / 2**20:.3f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def trunk_section(results: dict, plot_file: Optional[str] = None) -> list[str]:
    """Markdown lines: one row per trunk system (empty when there is none)."""
    from diffmamba.block.report import _best_generation
    from diffmamba.eval.report import fmt, likelihood_label, table

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
        gen = _best_generation(results.get("generation", []), s["name"])
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
    from diffmamba.eval.plots import _plt

    cache = results.get("cache_bytes", [])
    if not cache:
        return None
    speed = results.get("context_speed", [])
    plt = _plt()
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
