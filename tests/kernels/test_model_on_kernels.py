"""The model on the Triton kernels: what the mixer sees through ``diffmamba.ops`` dispatch.

A DiffMamba forward + backward in both modes on the kernels equals the same model on the
PyTorch reference scan (logits and every parameter gradient), with either forward kernel, SISO
and MIMO; and AR decoding (prefill, then the step kernel) equals the AR forward. On a GPU the
kernels are what dispatch picks anyway; on CPU ``DIFFMAMBA_SCAN_IMPL=triton`` forces them into
the interpreter, so this file is also the CPU check that the model wiring reaches them.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import CUDA, DEVICE, check

import diffmamba.kernels as kernels
from diffmamba.config import ModelConfig
from diffmamba.kernels import autograd as kernel_autograd
from diffmamba.model import DiffMamba

V = 37


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(kernel_autograd, "POISON_OUTPUTS", True)


def make_model(rank: int) -> DiffMamba:
    # d_state 32 / headdim 16 are the smallest heads the kernels take without padding on a GPU
    cfg = ModelConfig(vocab_size=V, d_model=64 if CUDA else 32, n_layers=2, headdim=16, d_state=32,
                      mimo_rank=rank, chunk_size=16 // rank, max_seq_len=256)
    torch.manual_seed(rank)
    return DiffMamba(cfg).to(DEVICE)


def run(model, tokens, mode, impl, monkeypatch):
    monkeypatch.setenv("DIFFMAMBA_SCAN_IMPL", impl)
    model.zero_grad(set_to_none=True)
    logits = model(tokens, mode=mode)
    finite = torch.isfinite(logits)  # the mask token's logit is -inf by design
    (logits[finite] * torch.linspace(-1, 1, int(finite.sum()), device=logits.device)).sum().backward()
    return logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("forward", ["fused", "split"])
@pytest.mark.parametrize("rank", [1, 2], ids=["siso", "mimo2"])
@pytest.mark.parametrize("mode", ["diffusion", "ar"])
def test_model_on_kernels_matches_reference(mode, rank, forward, monkeypatch):
    monkeypatch.setenv("DIFFMAMBA_SCAN_FWD", forward)
    model = make_model(rank)
    B, T = (8, 200) if CUDA else (2, 21)
    tokens = torch.randint(0, V + 1, (B, T), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ref_logits, ref_grads = run(model, tokens, mode, "reference", monkeypatch)
    launches = []
    real = kernel_autograd.scan_forward
    monkeypatch.setattr(kernel_autograd, "scan_forward", lambda *a, **kw: launches.append(1) or real(*a, **kw))
    logits, grads = run(model, tokens, mode, "triton", monkeypatch)
    # diffusion: a forward and a reverse scan per layer; AR: the forward one
    assert len(launches) == model.config.n_layers * (2 if mode == "diffusion" else 1)
    finite = torch.isfinite(ref_logits)
    assert torch.equal(finite, torch.isfinite(logits))
    check("logits", logits[finite], ref_logits[finite], torch.float32)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        check(f"grad {name}", grads[name], ref_grads[name], torch.float32)


@pytest.mark.parametrize("rank", [1, 2], ids=["siso", "mimo2"])
def test_decode_on_kernels_matches_ar_forward(rank, monkeypatch):
    """prefill (scan kernel) then step (step kernel) == one AR forward on the reference."""
    model = make_model(rank)
    B, T, k = (4, 40, 25) if CUDA else (2, 9, 5)
    tokens = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    with torch.no_grad():
        monkeypatch.setenv("DIFFMAMBA_SCAN_IMPL", "reference")
        ref = model(tokens, mode="ar")
        monkeypatch.setenv("DIFFMAMBA_SCAN_IMPL", "triton")
        launches = []
        real = kernels.launch_step
        monkeypatch.setattr(kernels, "launch_step", lambda *a, **kw: launches.append(1) or real(*a, **kw))
        logits, state = model.prefill(tokens[:, :k])
        steps = []
        for t in range(k, T):
            step_logits, state = model.step(tokens[:, t], state)
            steps.append(step_logits)
    assert len(launches) == (T - k) * model.config.n_layers, "decode did not run the step kernel"
    got = torch.cat((logits, torch.stack(steps, 1)), 1)
    finite = torch.isfinite(ref)
    check("AR logits via prefill + steps", got[finite], ref[finite], torch.float32)


@pytest.mark.skipif(not CUDA, reason="a CUDA graph needs a GPU (the protocol itself: tests/ar/test_graphs.py)")
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("rank", [1, 2], ids=["siso", "mimo2"])
def test_cuda_graph_decode_matches_eager(rank, amp):
    """AR decoding with the step replayed from a CUDA graph gives eager decoding's tokens and logits;
    block and whole-canvas diffusion sampling with the denoiser replayed give eager sampling's
    tokens, and so does greedy speculative decoding with its draft and scoring calls replayed."""
    from diffmamba.sampling.ar import ar_generate
    from diffmamba.sampling.base import SamplerOptions
    from diffmamba.sampling.bd3lm import block_sample
    from diffmamba.sampling.generate import generate
    from diffmamba.sampling.graphs import GraphedStep
    from diffmamba.sampling.speculative import speculative_generate
    model = make_model(rank).eval()
    prompt = torch.randint(0, V, (4, 30), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    amp_ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cuda", enabled=False)
    with torch.no_grad(), amp_ctx:
        for knobs in (dict(temperature=0.0), dict(temperature=1.0, top_p=0.9)):
            eager = ar_generate(model, prompt, 40, torch.Generator(DEVICE).manual_seed(0), **knobs)
            graphed = ar_generate(model, prompt, 40, torch.Generator(DEVICE).manual_seed(0), cuda_graph=True, **knobs)
            assert torch.equal(eager.tokens, graphed.tokens), knobs
        _, state = model.prefill(prompt)
        step = GraphedStep(model, state)
        for t in range(10):
            token = prompt[:, t]
            logits, state = model.step(token, state)
            got = step(token)
            finite = torch.isfinite(logits)
            check(f"graph logits step {t}", got[finite], logits[finite], torch.bfloat16 if amp else torch.float32)
        canvas = torch.full((4, 48), model.mask_token_id, device=DEVICE)
        canvas[:, :20] = prompt[:, :20]
        fixed = canvas != model.mask_token_id
        blocks = [block_sample(model, canvas, fixed, 8, options=SamplerOptions(steps=4),
                               generator=torch.Generator(DEVICE).manual_seed(0), cuda_graph=graph)
                  for graph in (False, True)]
        assert torch.equal(blocks[0].tokens, blocks[1].tokens)
        runs = [generate(model, "diffusion", canvas, fixed, SamplerOptions(steps=6, cuda_graph=graph),
                         torch.Generator(DEVICE).manual_seed(0)) for graph in (False, True)]
        assert torch.equal(runs[0].tokens, runs[1].tokens) and runs[0].nfe == runs[1].nfe
        # one row: a batch that shrinks is padded back to the captured size, whose GEMMs may round differently
        runs = [speculative_generate(model, prompt[:1], 20, torch.Generator(DEVICE).manual_seed(0), draft_len=3,
                                     temperature=0.0, cuda_graph=graph) for graph in (False, True)]
        assert torch.equal(runs[0].tokens, runs[1].tokens) and runs[0].accepted == runs[1].accepted
