"""Helpers of the training tests: a small local corpus and a micro model config, so that a training
step takes a fraction of a second on a laptop CPU. (A module of its own: every test folder has a
``conftest`` and `from conftest import` would pick whichever was imported first.)"""
import os
import random

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ("the model reads a long sentence and masks some of its words before it guesses them again "
         "while the state space layer carries what it saw from left to right and from right to left").split()


def write_corpus(path: str, paragraphs: int = 240, seed: int = 0) -> None:
    """Paragraphs of pseudo-English (blank-line separated): one document each."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(paragraphs):
            sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))).capitalize() + "."
                         for _ in range(rng.randint(2, 5))]
            f.write(" ".join(sentences) + "\n\n")


def micro_overrides(tiny_data, **train) -> list[str]:
    """Overrides that turn configs/tiny.yaml into a micro run on the fixture's corpus."""
    corpus, tokenizer_dir, cache = tiny_data
    values = {
        "model.d_model": 32, "model.n_layers": 1, "model.headdim": 16, "model.d_state": 16, "model.chunk_size": 16,
        "data.source": corpus, "data.tokenizer": tokenizer_dir, "data.cache_dir": cache, "data.seq_len": 32,
        "data.num_proc": 1, "data.val_fraction": 0.1,
        "train.global_batch_size": 8, "train.micro_batch_size": 4, "train.max_steps": 4, "train.warmup_steps": 2,
        "train.eval_every": 0, "train.eval_batches": 2, "train.save_every": 0, "train.log_every": 1,
        "train.lr": 3e-3, "train.ema": 0.9,
    }
    values.update({f"train.{k}": v for k, v in train.items()})
    return [f"{k}={v}" for k, v in values.items()]


TINY_CONFIG = os.path.join(REPO, "configs", "tiny.yaml")
