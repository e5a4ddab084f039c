"""The fused decode step (diffmamba/kernels/step_fused.py, ``DIFFMAMBA_STEP=fused``) against the unfused
module step run in float64: each token's gated output and every state field, over a few tokens
from a fresh state, SISO and MIMO (R = 2, and R = 3: not a power of two, with N / 2 and P not
powers of two either), fp32 and bf16 activations; then a whole model's decode logits."""

from __future__ import annotations

import copy

import pytest
import torch
from kernel_testlib import CUDA, DEVICE, check, check_state

from diffmamba.config import ModelConfig
from diffmamba.model import DiffMamba
from diffmamba.modules.mamba3 import Mamba3Direction
from diffmamba.ops.scan import fused_step_entry

CASES = {  # (R, N, P, d_model): H = 2 * d_model / P heads
    "siso": (1, 32, 16, 16),
    "mimo2": (2, 32, 16, 16),
    "mimo3-ragged": (3, 18, 12, 12),  # 9 rotary pairs in a 16-lane tile, 12 value rows
}


def direction(R, N, P, d_model, seed=0) -> Mamba3Direction:
    cfg = ModelConfig(vocab_size=11, d_model=d_model, headdim=P, d_state=N, mimo_rank=R)
    torch.manual_seed(seed)
    layer = Mamba3Direction(cfg)
    with torch.no_grad():  # every parameter away from its init, so a mixed-up one shows
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer.to(DEVICE)


def projection(layer, B, dtype, seed):
    """A projection row as ``in_proj`` makes it, [z | x | ssm_proj], and its three strided views."""
    H, P = layer.nheads, layer.headdim
    width = 2 * layer.rank * layer.d_state + 3 * H + layer.num_angles
    g = torch.Generator().manual_seed(seed)
    row = torch.randn(B, 2 * H * P + width, generator=g, dtype=torch.float64)
    row[:, 2 * H * P + 2 * layer.rank * layer.d_state:] *= 2  # dt, decay, trap and angle pre-activations
    row = row.to(DEVICE, dtype)
    return row.split([H * P, H * P, width], dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_step_matches_the_module_step_in_float64(monkeypatch, case, dtype):
    R, N, P, d_model = CASES[case]
    layer = direction(R, N, P, d_model)
    oracle = copy.deepcopy(layer).double()
    B = 3
    fused_state = ref_state = None
    with torch.no_grad():
        for t in range(4):  # from a fresh state on: each step reads the previous one's k_prev / v_prev
            z, x, proj = projection(layer, B, dtype, seed=10 * t + R)
            monkeypatch.setenv("DIFFMAMBA_STEP", "fused")
            assert fused_step_entry(x) is not None
            got, fused_state = layer.step(x, z, proj, fused_state)
            monkeypatch.delenv("DIFFMAMBA_STEP")
            want, ref_state = oracle.step(x.double(), z.double(), proj.double(), ref_state)
            assert got.dtype == dtype and got.shape == (B, layer.nheads * P)
            check(f"{case} y[{t}]", got, want, dtype)
            check_state(f"{case} state[{t}]", fused_state, ref_state, dtype)


def test_fused_step_is_used_only_where_it_can_run(monkeypatch):
    x = torch.zeros(1, 4, device=DEVICE)
    monkeypatch.delenv("DIFFMAMBA_STEP", raising=False)
    assert fused_step_entry(x) is None  # opt-in
    monkeypatch.setenv("DIFFMAMBA_STEP", "fused")
    assert fused_step_entry(x.double()) is None  # float64: the reference
    with torch.enable_grad():
        assert fused_step_entry(x) is None  # no backward
    with torch.no_grad():
        assert fused_step_entry(x) is not None
        if not CUDA:  # a CPU run without the interpreter takes the unfused path
            monkeypatch.setenv("TRITON_INTERPRET", "0")
            assert fused_step_entry(x) is None
    monkeypatch.setenv("DIFFMAMBA_STEP", "yes")
    with pytest.raises(ValueError, match="'unfused' or 'fused'"):
        fused_step_entry(x)


@pytest.mark.parametrize("rank", [1, 2], ids=["siso", "mimo2"])
def test_model_decodes_the_same_with_the_fused_step(monkeypatch, rank):
    """Prefill, then AR steps through every layer: logits and states as with the unfused step."""
    cfg = ModelConfig(vocab_size=13, d_model=16, n_layers=2, headdim=16, d_state=32, mimo_rank=rank)
    torch.manual_seed(rank)
    model = DiffMamba(cfg).to(DEVICE).eval()
    tokens = torch.randint(0, 13, (2, 9), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    runs = []
    for mode in ("unfused", "fused"):
        monkeypatch.setenv("DIFFMAMBA_STEP", mode)
        with torch.no_grad():
            _, state = model.prefill(tokens[:, :4])
            logits = []
            for t in range(4, 9):
                step_logits, state = model.step(tokens[:, t], state)
                logits.append(step_logits)
        runs.append((torch.stack(logits, 1), state))
    (want, want_state), (got, got_state) = runs
    finite = torch.isfinite(want)  # the mask token's logit is -inf by design
    assert torch.equal(finite, torch.isfinite(got))
    check("fused-step logits", got[finite], want[finite], torch.float32)
    for layer, (a, b) in enumerate(zip(got_state, want_state)):
        check_state(f"layer {layer}", a, b, torch.float32)


@pytest.mark.skipif(not CUDA, reason="a CUDA graph needs a GPU")
def test_fused_step_replays_from_a_cuda_graph(monkeypatch):
    """The fused step captured in a CUDA graph (as decoding runs it by default on a GPU) gives the
    unfused eager step's logits, token after token."""
    from diffmamba.sampling.graphs import GraphedStep
    cfg = ModelConfig(vocab_size=13, d_model=64, n_layers=2, headdim=16, d_state=32)
    torch.manual_seed(0)
    model = DiffMamba(cfg).to(DEVICE).eval()
    tokens = torch.randint(0, 13, (4, 12), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    with torch.no_grad():
        _, state = model.prefill(tokens[:, :4])
        monkeypatch.setenv("DIFFMAMBA_STEP", "fused")
        graphed = GraphedStep(model, state)
        monkeypatch.setenv("DIFFMAMBA_STEP", "unfused")
        for t in range(4, 12):
            want, state = model.step(tokens[:, t], state)
            got = graphed(tokens[:, t])
            finite = torch.isfinite(want)
            check(f"graphed fused step {t}", got[finite], want[finite], torch.float32)
