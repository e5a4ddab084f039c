"""The static-buffer decode step (``diffmamba.sampling.graphs``) on CPU: the protocol a CUDA graph
replays, run eagerly. The graph itself is checked against eager decoding on a GPU
(tests/kernels/test_model_on_kernels.py, run by scripts/gpu_check.sh)."""
import pytest
import torch

from diffmamba.config import ModelConfig
from diffmamba.core.errors import UserError
from diffmamba.model import DiffMamba
from diffmamba.sampling.ar import ar_generate
from diffmamba.sampling.graphs import GraphedStep

V = 13


def tiny_model(rank: int = 1, pattern: str = "M") -> DiffMamba:
    torch.manual_seed(rank)
    config = ModelConfig(vocab_size=V, d_model=16, n_layers=2, headdim=8, d_state=8, chunk_size=4,
                         mimo_rank=rank, layer_pattern=pattern, attn_headdim=8)
    return DiffMamba(config).eval()


@pytest.mark.parametrize("rank", [1, 2], ids=["siso", "mimo2"])
def test_static_buffers_step_like_model_step(rank):
    """After a prefill, each call equals model.step on the returned state: logits and every state field."""
    model = tiny_model(rank)
    tokens = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, state = model.prefill(tokens[:, :5])
        step = GraphedStep(model, state, graph=False)
        for t in range(5, 12):
            logits, state = model.step(tokens[:, t], state)
            got = step(tokens[:, t])
            assert torch.equal(got, logits)
            for mine, ref in zip(step.state, state):
                assert all(torch.equal(a, b) for a, b in zip(mine, ref))
    # the live state is the buffers' own: loading it again changes nothing
    before = [t.clone() for layer in step.state for t in layer]
    step.load(step.state)
    assert all(torch.equal(a, b) for a, b in zip(before, [t for layer in step.state for t in layer]))


def test_refusals_are_one_line():
    model = tiny_model()
    with pytest.raises(UserError, match="needs the model on a CUDA device"):
        GraphedStep(model, model.init_state(1))
    hybrid = tiny_model(pattern="MA")
    with pytest.raises(UserError, match="Mamba-3 layers only"):
        GraphedStep(hybrid, hybrid.init_state(1), graph=False)
    step = GraphedStep(model, model.init_state(2), graph=False)
    with pytest.raises(ValueError, match="does not match"):
        step.load(model.init_state(3))
    with pytest.raises(ValueError, match="does not match"):
        step.load([s._replace(k_prev=s.k_prev.double()) for s in model.init_state(2)])
    with pytest.raises(UserError, match="drop --cuda-graph"):
        ar_generate(tiny_model(), torch.zeros(1, 2, dtype=torch.long), 4, cuda_graph=True)
