"""Tiny checkpoints for the tests that run the CLI end to end: a freshly initialised DiffMamba saved
with save_pretrained next to its tokenizer and a run_config.yaml. (A module of its own, put on sys.path
by pyproject's pytest ``pythonpath``: every test folder has a ``conftest``, so `from conftest import`
would pick whichever was imported first, and an installed package already owns the name ``tests``.)"""
import os

import torch
import yaml

from diffmamba.config import DataConfig, ModelConfig, ObjectiveConfig, RunConfig, TrainConfig, to_dict
from diffmamba.model import DiffMamba


def write_checkpoint(folder: str, tokenizer, data: DataConfig, objective: ObjectiveConfig, seed: int = 0,
                     max_seq_len: int = 128, train: TrainConfig | None = None) -> str:
    """``folder`` as save_pretrained leaves it, with the tokenizer and the run config beside the weights."""
    model = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2, headdim=16, d_state=16,
                        chunk_size=16, max_seq_len=max_seq_len)
    run = RunConfig(model=model, data=data, objective=objective, train=train or TrainConfig())
    torch.manual_seed(seed)
    DiffMamba(model).save_pretrained(folder)
    tokenizer.save(folder)
    with open(os.path.join(folder, "run_config.yaml"), "w") as f:
        yaml.safe_dump(to_dict(run), f)
    return folder


def write_run(folder: str, tokenizer, corpus: str, objective: str, block_size: int = 0, seed: int = 0) -> str:
    """A run folder with final/ as `diffmamba train` leaves it; its data section points at ``corpus``,
    so an evaluation rebuilds the validation split exactly as in training."""
    final = os.path.join(folder, "final")
    data = DataConfig(source=corpus, tokenizer=os.path.join(final, "tokenizer.json"), seq_len=32, val_fraction=0.2,
                      cache_dir=os.path.join(os.path.dirname(corpus), "data-cache"))
    write_checkpoint(final, tokenizer, data, ObjectiveConfig(name=objective, block_size=block_size), seed,
                     train=TrainConfig(max_steps=1, micro_batch_size=4, global_batch_size=4))
    return folder
