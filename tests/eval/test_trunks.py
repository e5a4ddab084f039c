"""`diffmamba eval compare --trunks`: Mamba-3, attention and hybrid checkpoints side by side."""
import json
import os

import pytest
import torch

from checkpoint_helpers import write_run
from diffmamba.cli import main
from diffmamba.config import ModelConfig
from diffmamba.model import DiffMamba


def trunk_run(tiny_ckpts, name, pattern):
    """A run folder like write_run's whose final/ holds a model with ``pattern``."""
    folder = write_run(os.path.join(tiny_ckpts["root"], f"trunk-{name}"), tiny_ckpts["tokenizer"],
                       tiny_ckpts["corpus"], "diffusion")
    final = os.path.join(folder, "final")
    with open(os.path.join(final, "config.json")) as f:
        values = json.load(f)["model"]
    torch.manual_seed(0)
    DiffMamba(ModelConfig(**{**values, "layer_pattern": pattern, "attn_headdim": 16})).save_pretrained(final)
    return folder


@pytest.mark.slow
def test_trunks_side_by_side_with_cache_bytes_against_context(tiny_ckpts, tmp_path, capsys):
    runs = [trunk_run(tiny_ckpts, n, p) for n, p in (("m", "M"), ("a", "A"), ("h", "MA"))]
    out = str(tmp_path / "trunks")
    assert main(["eval", "compare", "--trunks", *runs, "--judge", "none", "--out", out, "--max-rows", "2",
                 "--batch-size", "2", "--repeats", "1", "--samplers", "ancestral", "--steps", "2", "--length", "4",
                 "--num-samples", "2", "--tasks", "unconditional", "--infill-rows", "1", "--infill-span", "2",
                 "--batch-sizes", "1", "--speed-repeats", "1", "--warmup", "0", "--contexts", "8", "24"]) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    names = [s["name"] for s in results["systems"]]
    assert names == ["diffusion · mamba3", "diffusion · attention", "diffusion · hybrid (MA)"]
    assert {r["system"] for r in results["likelihood"]} == set(names)
    cache = {(r["system"], r["context"]): r["cache_bytes"] for r in results["cache_bytes"]}
    assert cache[names[0], 8] == cache[names[0], 24] > 0  # Mamba-3: fixed-size states
    # attention: 2 layers x (k + v) x 32 dims x 4 bytes per token; the hybrid has one such layer
    assert cache[names[1], 24] - cache[names[1], 8] == 16 * 2 * 2 * 32 * 4
    assert cache[names[2], 24] - cache[names[2], 8] == 16 * 2 * 32 * 4
    assert {r["system"] for r in results["context_speed"]} == set(names)
    report = open(os.path.join(out, "report.md")).read()
    assert "## Trunks: Mamba-3, attention, hybrid" in report and "| hybrid (MA) | MA |" in report
    assert os.path.isfile(os.path.join(out, "trunks.png"))


def test_trunks_need_a_checkpoint(tmp_path, capsys):
    assert main(["eval", "likelihood", "--trunks", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
