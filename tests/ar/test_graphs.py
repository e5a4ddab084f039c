"""The static-buffer calls of ``diffmamba.sampling.graphs`` on CPU: the protocol a CUDA graph
replays, run eagerly (``graph=False``). The graphs themselves are checked against eager decoding
on a GPU (tests/kernels/test_model_on_kernels.py, run by scripts/gpu_check.sh)."""
import copy

import pytest
import torch
from graph_helpers import run_captures_eagerly

from diffmamba.config import ModelConfig
from diffmamba.core.errors import UserError
from diffmamba.model import DiffMamba
from diffmamba.sampling import bd3lm, graphs
from diffmamba.sampling.ar import ar_generate
from diffmamba.sampling.base import SamplerOptions, denoiser_from_model
from diffmamba.sampling.generate import generate
from diffmamba.sampling.graphs import GraphedDenoiser, GraphedStep
from diffmamba.sampling.speculative import speculative_generate

V = 13


def tiny_model(rank: int = 1, pattern: str = "M") -> DiffMamba:
    torch.manual_seed(rank)
    config = ModelConfig(vocab_size=V, d_model=16, n_layers=2, headdim=8, d_state=8, chunk_size=4,
                         mimo_rank=rank, layer_pattern=pattern, attn_headdim=8)
    return DiffMamba(config).eval()


@pytest.fixture
def eager_captures(monkeypatch) -> list:
    """Captures run eagerly (no GPU here); one list entry per capture made."""
    return run_captures_eagerly(monkeypatch)


def same_state(a, b):
    return all(torch.equal(x, y) for la, lb in zip(a, b) for x, y in zip(la, lb))


@pytest.mark.parametrize("rank", [1, 2], ids=["siso", "mimo2"])
def test_step_buffers_advance_like_model_step(rank):
    """After a prefill, each call equals model.step on the returned state: logits and every state field."""
    model = tiny_model(rank)
    tokens = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, state = model.prefill(tokens[:, :5])
        step = GraphedStep(model, state, graph=False)
        for t in range(5, 12):
            logits, state = model.step(tokens[:, t], state)
            assert torch.equal(step(tokens[:, t]), logits)
            assert same_state(step.state, state)
        # load restarts from another state; loading the live state changes nothing
        _, other = model.prefill(tokens[:, :2])
        step.load(other)
        assert same_state(step.state, other)
        step.load(step.state)
        assert same_state(step.state, other)


def test_denoiser_buffers_answer_like_the_block_denoiser():
    model = tiny_model()
    tokens = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        graphed = None
        for prefix in (4, 8, 12):  # one capture, rebound per block
            cache = bd3lm.prefill_cache(model, tokens[:, :prefix], 4)[0]
            graphed = graphed or GraphedDenoiser(model, cache, 4, graph=False)
            denoise = graphed.bind(cache)
            for x in (tokens[:, prefix:prefix + 4], torch.full((2, 4), model.mask_token_id)):
                assert torch.equal(denoise(x), bd3lm.block_denoiser(model, cache)(x))


@pytest.mark.parametrize("pattern", ["M", "MA"], ids=["mamba3", "hybrid"])
def test_canvas_denoiser_answers_like_the_model_and_samples_the_same(eager_captures, pattern):
    """The whole-canvas denoiser (mode diffusion; no state across calls, so attention layers are
    fine): each call equals denoiser_from_model; generate(mode="diffusion", cuda_graph=True) gives the
    same tokens and NFE, with one capture per canvas shape kept across calls."""
    model = tiny_model(pattern=pattern)
    x = torch.randint(0, V + 1, (3, 10), generator=torch.Generator().manual_seed(4))
    denoise = GraphedDenoiser(model, None, 10, batch=3, graph=False).bind()
    with torch.no_grad():
        for canvas in (x, torch.full_like(x, model.mask_token_id)):
            first = denoise(canvas)
            assert torch.equal(first, denoiser_from_model(model)(canvas))
        assert not torch.equal(first, denoise(x))  # a copy: the next call does not overwrite it
    built = eager_captures
    canvas = torch.full((2, 12), model.mask_token_id)
    canvas[:, :3] = x[:2, :3]
    fixed = canvas != model.mask_token_id
    for sampler in ("ancestral", "confidence", "parallel"):
        runs = [generate(model, "diffusion", canvas, fixed, SamplerOptions(steps=5, cuda_graph=graph),
                         torch.Generator().manual_seed(0), sampler=sampler) for graph in (False, True)]
        assert torch.equal(runs[0].tokens, runs[1].tokens) and runs[0].nfe == runs[1].nfe, sampler
    assert built == [1, 1]  # the one above, then one capture ([B, L] canvas, no states) for every sampler and call


def test_decoding_with_the_captured_calls_gives_the_same_tokens(eager_captures):
    """ar_generate / block_sample with cuda_graph=True, the captures run eagerly here: same tokens;
    one capture per shape, kept on the model across calls until its weights move."""
    built = eager_captures
    model = tiny_model()
    prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(2))
    for _ in range(2):
        runs = [ar_generate(model, prompt, 9, torch.Generator().manual_seed(0), top_p=0.9, cuda_graph=graph)
                for graph in (False, True)]
        assert torch.equal(runs[0].tokens, runs[1].tokens) and runs[0].nfe == runs[1].nfe
    assert len(built) == 1  # the second decode reused the first capture
    canvas = torch.full((2, 14), model.mask_token_id)
    canvas[:, :5] = prompt
    fixed = canvas != model.mask_token_id
    for prompt_len in (5, 0):  # with a prompt block, and from an empty prefix (first block eager)
        fixed[:, prompt_len:] = False
        runs = [bd3lm.block_sample(model, canvas, fixed, 4, options=SamplerOptions(steps=3),
                                   generator=torch.Generator().manual_seed(0), cuda_graph=graph)
                for graph in (False, True)]
        assert torch.equal(runs[0].tokens, runs[1].tokens) and runs[0].nfe == runs[1].nfe
    assert len(built) == 2  # one denoiser capture for both block decodes
    model.double().float()  # new weight tensors: the kept captures would read freed memory
    ar_generate(model, prompt, 3, torch.Generator().manual_seed(0), cuda_graph=True)
    assert len(built) == 3
    twin = copy.deepcopy(model)  # a copy has its own weights, so none of the captures
    assert twin.__dict__["_captured_calls"].calls == {}


def test_kept_captures_are_the_most_recently_used(eager_captures, monkeypatch):
    """Each capture holds a memory pool, so a model keeps only the KEPT_CALLS most recently used."""
    monkeypatch.setattr(graphs, "KEPT_CALLS", 2)
    model = tiny_model()

    def denoiser(batch):
        return GraphedDenoiser.reused(model, None, 6, batch)

    first, second = denoiser(1), denoiser(2)
    assert denoiser(1) is first  # a hit makes batch 1 the most recent ...
    denoiser(3)  # ... so batch 2 is the one dropped for batch 3
    assert denoiser(1) is first and denoiser(2) is not second
    assert len(eager_captures) == 4 and len(model.__dict__["_captured_calls"].calls) == 2


def test_speculative_decoding_with_captured_calls_gives_the_same_tokens(eager_captures):
    """speculative_generate(cuda_graph=True): the draft and scoring calls of full rounds replay
    captures made for the first round's batch; rows that stop (EOS) leave the batch and are padded
    back up to it, so the same two captures serve every full round of both decodes (float64: a
    padded batch's rounding cannot flip a token)."""
    model = tiny_model().double()
    prompt = torch.randint(0, V, (6, 3), generator=torch.Generator().manual_seed(3))
    for temperature in (0.0, 1.0):
        runs = [speculative_generate(model, prompt, 12, torch.Generator().manual_seed(0), draft_len=3,
                                     temperature=temperature, eos_id=4, cuda_graph=graph) for graph in (False, True)]
        assert torch.equal(runs[0].tokens, runs[1].tokens), temperature
        assert (runs[0].nfe, runs[0].drafted, runs[0].accepted) == (runs[1].nfe, runs[1].drafted, runs[1].accepted)
        stopped = (runs[1].tokens[:, 3:-1] == 4).any(1)
        assert stopped.any() and not stopped.all()  # the batch shrank mid-way
    assert len(eager_captures) == 2  # the draft's denoiser and the scoring scan, captured once


def test_cuda_graph_default_is_on_where_it_works():
    """No flag: graphs on a CUDA device for the modes whose calls can be replayed (AR, block and
    speculative on Mamba-3 trunks, diffusion on any), eager elsewhere; --cuda-graph / --no-cuda-graph win."""
    mamba, hybrid = tiny_model(), tiny_model(pattern="MA")
    auto = lambda model, mode, device="cuda": graphs.resolve_cuda_graph(None, device, model, mode)  # noqa: E731
    assert [auto(mamba, mode) for mode in ("ar", "block", "diffusion", "speculative")] == [True] * 4
    assert [auto(hybrid, mode) for mode in ("ar", "block", "diffusion", "speculative")] == [False, False, True, False]
    assert not auto(mamba, "ar", device="cpu")
    assert graphs.resolve_cuda_graph(False, "cuda", mamba, "ar") is False
    assert graphs.resolve_cuda_graph(True, "cpu", hybrid, "ar") is True  # asked: the capture then refuses


def test_refusals_are_one_line():
    model = tiny_model()
    with pytest.raises(UserError, match="--cuda-graph needs a CUDA device"):
        GraphedStep(model, model.init_state(1))
    hybrid = tiny_model(pattern="MA")
    with pytest.raises(UserError, match="Mamba-3 layers only"):
        GraphedStep(hybrid, hybrid.init_state(1), graph=False)
    step = GraphedStep(model, model.init_state(2), graph=False)
    with pytest.raises(ValueError, match="do not match"):
        step.load(model.init_state(3))
    with pytest.raises(ValueError, match="do not match"):
        step.load([s._replace(k_prev=s.k_prev.double()) for s in model.init_state(2)])
    with pytest.raises(UserError, match="drop --cuda-graph"):
        ar_generate(model, torch.zeros(1, 2, dtype=torch.long), 4, cuda_graph=True)
