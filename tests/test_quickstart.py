"""The main job end to end on a micro run: two models trained on a local corpus with a local
tokenizer, evaluated, and the side-by-side printed from the evaluation's own numbers."""
import json
import os

from diffmamba.cli import main

WORDS = "the cat sat on a warm mat while the dog slept by the old door and birds sang".split()


def test_quickstart_micro_run(tmp_path, capsys, monkeypatch):
    import random

    from diffmamba.data.tokenizer import train_bpe

    monkeypatch.setenv("DIFFMAMBA_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 50))) for _ in range(120)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(docs))
    tok_dir = tmp_path / "tok"
    train_bpe(docs, 300, show_progress=False).save(str(tok_dir))
    out = tmp_path / "qs"
    rc = main(["quickstart", "--steps", "2", "--out", str(out), "--sample-length", "16", "--sampler-steps", "4",
               f"data.source={corpus}", f"data.tokenizer={tok_dir / 'tokenizer.json'}", "data.seq_len=32",
               "data.val_fraction=0.2", "model.d_model=32", "model.n_layers=1", "model.headdim=16",
               "model.d_state=16", "train.micro_batch_size=4", "train.global_batch_size=4", "train.eval_batches=1"])
    assert rc == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "eval" / "results.json").read_text())
    kinds = {r["system"]: r["kind"] for r in results["likelihood"]}
    assert kinds == {"diffusion": "bound", "AR": "exact"}
    assert "validation PPL bound (<=)" in printed and "validation PPL (exact)" in printed
    for r in results["likelihood"]:  # the printed numbers are the evaluation's numbers
        assert f"{r['ppl']:.2f}" in printed
    assert os.path.isfile(out / "diffusion" / "final" / "model.safetensors")
    assert os.path.isfile(out / "ar" / "final" / "tokenizer.json")

    # A second call reuses the finished runs instead of retraining them.
    assert main(["quickstart", "--steps", "2", "--out", str(out), "--sample-length", "16", "--sampler-steps", "4",
                 f"data.source={corpus}", f"data.tokenizer={tok_dir / 'tokenizer.json'}", "data.seq_len=32",
                 "data.val_fraction=0.2", "model.d_model=32", "model.n_layers=1", "model.headdim=16",
                 "model.d_state=16", "train.micro_batch_size=4", "train.global_batch_size=4",
                 "train.eval_batches=1"]) == 0
    assert "reusing the finished diffusion run" in capsys.readouterr().out


def test_quickstart_bad_input(tmp_path, capsys):
    assert main(["quickstart", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
