"""Judges (a tiny HF causal LM and a diffmamba AR checkpoint) and the speed/memory harness."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from diffmamba.core.errors import UserError
from diffmamba.eval import judge as judge_lib
from diffmamba.eval.speed import CPU_MEMORY_LABEL, measure, speed_row


def test_hf_judge_scores_every_token_after_bos(tiny_hf_judge):
    j = judge_lib.load_judge(tiny_hf_judge, "cpu")
    assert j.kind == "hf" and j.info["parameters"] > 0 and j.info["bos_prepended"]
    assert judge_lib.load_judge(tiny_hf_judge, "cpu") is j  # cached within the process
    text = "the quick brown fox"
    [(nll, n)] = j.score_texts([text])
    ids = [j.bos_id] + j.encode(text)
    from transformers import AutoModelForCausalLM
    ref_model = AutoModelForCausalLM.from_pretrained(tiny_hf_judge)
    with torch.no_grad():
        logits = ref_model(torch.tensor([ids])).logits[0, :-1]
    expect = float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
    print(f"judge {nll:.6f} direct {expect:.6f} over {n} tokens")
    assert n == len(ids) - 1
    assert abs(nll - expect) < 1e-4 * max(1.0, abs(expect))
    # A context is given but not scored; batching with padding does not change the numbers.
    both = j.score_texts([" jumps over", text], contexts=["the fox", "a"], batch_size=2)
    alone = j.score_texts([" jumps over"], contexts=["the fox"])
    assert both[0][1] == len(j.encode(" jumps over")) and abs(both[0][0] - alone[0][0]) < 1e-4


def test_diffmamba_judge_and_unloadable_judges(tiny_ckpts, tmp_path):
    j = judge_lib.load_judge(tiny_ckpts["ar"], "cpu")
    assert j.kind == "diffmamba"
    [(nll, n)] = j.score_texts(["the lazy dog sleeps"])
    assert n == len(j.encode("the lazy dog sleeps")) and math.isfinite(nll) and nll > 0
    with pytest.raises(UserError, match="cannot be loaded"):
        judge_lib.load_judge(str(tmp_path / "no-such-model"), "cpu")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{}")
    # Without transformers installed the message names the missing package instead.
    with pytest.raises(UserError, match="cannot be loaded|needs the 'transformers' package"):
        judge_lib.load_judge(str(tmp_path / "junk"), "cpu")


def test_measure_reports_median_and_labelled_memory():
    calls = []

    def work():
        calls.append(1)
        x = torch.ones(256, 256)
        return (x @ x).sum()

    t = measure(work, "cpu", warmup=2, repeats=3)
    assert len(calls) == 5 and t.repeats == 3
    assert 0 < t.min_s <= t.median_s <= t.max_s
    assert t.mem_label == CPU_MEMORY_LABEL and t.peak_mem_mib >= 0
    row = speed_row(t, batch_size=4, length=16)
    assert abs(row["tokens_per_s"] - 64 / t.median_s) < 1e-6 * row["tokens_per_s"]
