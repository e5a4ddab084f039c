"""AR decoding and both objectives on a tiny real DiffMamba (float64, CPU reference scan)."""
import torch

from diffmamba.sampling.ar import ar_generate
from diffmamba.objectives.ar import ar_loss
from diffmamba.config import ModelConfig
from diffmamba.sampling.categorical import sample_tokens
from diffmamba.objectives.mdlm import diffusion_loss, masked_diffusion_nll
from diffmamba.objectives.masking import mask_tokens
from diffmamba.objectives.schedule import LogLinearSchedule
from diffmamba.model import DiffMamba

V = 13


def tiny_model() -> DiffMamba:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=V, d_model=16, n_layers=2, headdim=8, d_state=8, chunk_size=4)
    return DiffMamba(config).double().eval()


def test_prefill_and_step_decode_equals_full_forward_decode():
    model = tiny_model()
    prompt = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(1))
    for knobs in (dict(temperature=0), dict(temperature=1.0, top_p=0.95)):
        result = ar_generate(model, prompt, 8, torch.Generator().manual_seed(3), prefill_chunk=4, **knobs)
        x, generator = prompt, torch.Generator().manual_seed(3)
        with torch.no_grad():
            for _ in range(8):
                logits = model(x, mode="ar")[:, -1]
                x = torch.cat([x, sample_tokens(logits, model.mask_token_id, generator, **knobs)[:, None]], 1)
        assert torch.equal(result.tokens, x), knobs
        assert result.nfe == 2 + 7


def test_objectives_run_and_head_at_masked_positions_matches_full_logits():
    model = tiny_model()
    x0 = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    schedule = LogLinearSchedule()
    terms = diffusion_loss(model, x0, t, schedule, torch.Generator().manual_seed(5))
    xt, _ = mask_tokens(x0, t, schedule, model.mask_token_id, torch.Generator().manual_seed(5))
    reference = masked_diffusion_nll(model(xt, mode="diffusion"), x0, xt, t, schedule, model.mask_token_id)
    torch.testing.assert_close(terms.nll_sum, reference.nll_sum)
    (terms.loss + ar_loss(model, x0).loss).backward()
    assert model.embedding.weight.grad.abs().sum() > 0
