"""Helpers for the block-diffusion tests: tiny float64 models, scan inputs, state comparisons, micro
training runs."""
import math
import random

import torch

from diffmamba.config import ModelConfig
from diffmamba.model import DiffMamba
from diffmamba.ops import Mamba3State

V = 11  # tokenizer vocabulary; the mask token is id 11


def tiny_model(dtype=torch.float64, seed=0, **overrides) -> DiffMamba:
    values = dict(vocab_size=V, d_model=16, n_layers=2, headdim=8, d_state=8, chunk_size=4)
    values.update(overrides)
    torch.manual_seed(seed)
    return DiffMamba(ModelConfig(**values)).to(dtype).eval()


def random_tokens(batch=2, length=12, seed=0, high=V) -> torch.Tensor:
    """Clean ids in [0, high) (no mask token)."""
    return torch.randint(0, high, (batch, length), generator=torch.Generator().manual_seed(seed))


def scan_inputs(B=2, T=12, H=2, P=3, N=6, S=2, R=None, seed=0):
    """Float64 keyword arguments for ``mamba3_scan`` with decays in ~(0.3, 1) and biased keys."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    rank = () if R is None else (R,)
    dt = torch.exp(torch.empty(B, T, H, dtype=torch.float64).uniform_(math.log(1e-3), math.log(0.1), generator=gen)) * 4
    return dict(
        q=randn(B, T, H, *rank, N) + 1.0, k=randn(B, T, H, *rank, N) + 1.0, v=randn(B, T, H, *rank, P),
        log_decay=-torch.exp(randn(B, T, H)) * dt, dt=dt, trap=torch.sigmoid(randn(B, T, H)),
        dphase=dt[..., None] * math.pi * torch.tanh(randn(B, T, H, S)), D=randn(H),
    )


def random_state(B=2, H=2, P=3, N=6, S=2, R=None, seed=1) -> Mamba3State:
    gen = torch.Generator().manual_seed(seed)
    rank = () if R is None else (R,)
    return Mamba3State(torch.randn(B, H, P, N, generator=gen, dtype=torch.float64),
                       torch.randn(B, H, *rank, N, generator=gen, dtype=torch.float64),
                       torch.randn(B, H, *rank, P, generator=gen, dtype=torch.float64),
                       torch.rand(B, H, S, generator=gen, dtype=torch.float64) * 2 * math.pi)


def assert_states_close(got: Mamba3State, want: Mamba3State, tol=1e-12):
    for name, a, b in zip(Mamba3State._fields, got, want):
        if name == "phase":  # phases are reduced mod 2 pi and may wrap differently
            diff = torch.remainder(a - b + math.pi, 2 * math.pi) - math.pi
            assert diff.abs().max() <= tol, name
        else:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)


def assert_logits_close(got, want, tol=1e-10):
    """Logits whose mask column is -inf in both."""
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=tol, atol=tol)


def micro_run_overrides(root, words: list[str], **values) -> list[str]:
    """KEY=VALUE overrides for a micro training run (1 layer, 32 tokens) on a small pseudo-English
    corpus of ``words`` written under ``root`` with its own BPE tokenizer; ``values`` add or replace
    overrides (dotted keys spelled with ``__``, e.g. ``objective__block_size=8``)."""
    from diffmamba.data.tokenizer import train_bpe

    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 40))) for _ in range(120)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(texts) + "\n")
    train_bpe(texts, vocab_size=300, show_progress=False).save(str(root / "tokenizer"))
    overrides = {
        "model.d_model": 32, "model.n_layers": 1, "model.headdim": 16, "model.d_state": 16, "model.chunk_size": 16,
        "data.source": corpus, "data.tokenizer": root / "tokenizer", "data.cache_dir": root / "cache",
        "data.seq_len": 32, "data.num_proc": 1, "data.val_fraction": 0.1,
        "train.global_batch_size": 4, "train.micro_batch_size": 2, "train.warmup_steps": 1,
        "train.eval_batches": 1, "train.log_every": 1, "train.ema": 0.9,
        **{key.replace("__", "."): value for key, value in values.items()},
    }
    return [f"{k}={v}" for k, v in overrides.items()]
