"""``diffmamba bench train``: every trunk at every length, same tokens per step, ratios in one table."""
import json
import re

import pytest
import yaml

from diffmamba.bench.train import main
from diffmamba.core.errors import UserError

BASE = dict(vocab_size=50, d_model=16, n_layers=2, headdim=8, d_state=8, chunk_size=8, attn_headdim=8, max_seq_len=16)


def configs(tmp_path):
    paths = []
    for name, pattern in (("mamba", "M"), ("attention", "A"), ("hybrid", "MA")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**BASE, "layer_pattern": pattern}))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("objective", ["diffusion", "block_diffusion"])
def test_rows_for_every_trunk_and_length_with_ratios(tmp_path, capsys, objective):
    out = tmp_path / "rows.json"
    assert main(["--configs", *configs(tmp_path), "--lengths", "16", "32", "--tokens", "64", "--warmup", "0",
                 "--repeats", "1", "--device", "cpu", "--objective", objective, "--block-size", "8",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "torch=" in printed and "64 tokens per optimizer step" in printed and "| 32 | attention | AA |" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [(r["length"], r["trunk"], r["batch"]) for r in rows] == [
        (16, "mamba3", 4), (16, "attention", 4), (16, "hybrid (MA)", 4),
        (32, "mamba3", 2), (32, "attention", 2), (32, "hybrid (MA)", 2)]  # 32 > max_seq_len 16: raised for the run
    assert all(r["tokens_per_s"] > 0 and r["final_loss"] > 0 for r in rows)
    # MFU needs a GPU's peak: n/a on CPU, but the FLOP count behind it is there
    assert all(r["flops_per_token"] > 0 and r["mfu"] is None for r in rows) and "| MFU |" in printed
    # the attention rows are the reference; every row's ratio is its tokens/s over theirs (another trunk
    # may land on 1.00x too, so the ratios are checked row by row, not counted)
    reference = {r["length"]: r["tokens_per_s"] for r in rows if r["trunk"] == "attention"}
    table_rows = [line for line in printed.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert len(table_rows) == len(rows)
    for line, r in zip(table_rows, rows):
        assert f" {r['tokens_per_s'] / reference[r['length']]:.2f}x |" in line
    assert all("| 1.00x |" in line for line in table_rows if "| attention |" in line)


def test_profile_shows_where_a_step_goes(tmp_path, capsys):
    assert main(["--configs", configs(tmp_path)[0], "--lengths", "16", "--tokens", "32", "--warmup", "0",
                 "--repeats", "1", "--device", "cpu", "--profile"]) == 0
    printed = capsys.readouterr().out
    assert "mamba3 L=16, one optimizer step profile, 1 calls" in printed and "Self CPU time total" in printed
    assert "aten ops dispatched (nested included) per call" in printed


def test_tokens_must_split_into_whole_rows(tmp_path):
    with pytest.raises(UserError, match="--tokens 100 is not a multiple of the length 16"):
        main(["--configs", *configs(tmp_path), "--lengths", "16", "--tokens", "100", "--device", "cpu"])
