"""AR objective and recurrent decoding on a causal mock (docs/masked-diffusion.md §4)."""
import math

import pytest
import torch
from ar_mocks import PreviousTokenLM

from diffmamba.sampling.ar import ar_generate
from diffmamba.objectives.ar import ar_loss, ar_nll, shifted_nll
from diffmamba.sampling.categorical import sample_tokens


def test_shifted_nll_hand_computed_with_padding():
    # V = 2 clean tokens + mask id 2. Position i predicts token i + 1.
    logits = torch.tensor([[[0.0, 1.0, 7.0], [2.0, 0.0, 7.0], [5.0, 5.0, 7.0]]])
    tokens = torch.tensor([[0, 1, 0]])
    ce01 = -(1.0 - math.log(1 + math.e))  # position 0 -> token 1
    ce12 = -(2.0 - math.log(math.exp(2.0) + 1))  # position 1 -> token 0
    terms = shifted_nll(logits, tokens, mask_id=2)
    assert terms.nll_sum.item() == pytest.approx(ce01 + ce12, rel=1e-6) and int(terms.num_tokens) == 2
    valid = torch.tensor([[True, True, False]])
    padded = shifted_nll(logits, tokens, valid, mask_id=2)
    assert padded.nll_sum.item() == pytest.approx(ce01, rel=1e-6) and int(padded.num_tokens) == 1


def test_ar_loss_and_eval_nll_agree():
    model = PreviousTokenLM()
    tokens = torch.randint(0, 12, (3, 9), generator=torch.Generator().manual_seed(0))
    terms = ar_loss(model, tokens)
    terms.loss.backward()
    total, count = ar_nll(model, tokens)
    assert count == 3 * 8 and total.dtype == torch.float64
    assert total.item() == pytest.approx(terms.nll_sum.item(), rel=1e-6)
    assert model.current.grad is not None


def full_forward_decode(model, prompt, new_tokens, generator, **knobs):
    """Reference: re-run the whole sequence for every token (what the recurrent decode replaces)."""
    x = prompt
    for _ in range(new_tokens):
        logits = model(x, mode="ar")[:, -1]
        x = torch.cat([x, sample_tokens(logits, model.mask_token_id, generator, **knobs)[:, None]], 1)
    return x


@pytest.mark.parametrize("knobs", [dict(temperature=0), dict(temperature=1.0),
                                   dict(temperature=0.7, top_k=5, top_p=0.9)])
def test_recurrent_decode_equals_full_forward_decode(knobs):
    model = PreviousTokenLM()
    prompt = torch.randint(0, 12, (4, 7), generator=torch.Generator().manual_seed(1))
    result = ar_generate(model, prompt, 10, torch.Generator().manual_seed(2), prefill_chunk=3, **knobs)
    reference = full_forward_decode(model, prompt, 10, torch.Generator().manual_seed(2), **knobs)
    assert torch.equal(result.tokens, reference)
    assert result.steps == 10 and model.calls["prefill"] == 3 and model.calls["step"] == 9
    assert result.nfe == 3 + 9


def test_eos_stops_rows_and_decoding():
    model = PreviousTokenLM()
    with torch.no_grad():
        model.current[:, 5] += 100  # after any token, EOS (= 5) is by far the most likely
    prompt = torch.tensor([[1, 2], [3, 4]])
    result = ar_generate(model, prompt, 20, torch.Generator().manual_seed(0), eos_id=5)
    assert result.steps == 1 and result.tokens.shape == (2, 3) and (result.tokens[:, 2] == 5).all()
    with torch.no_grad():
        model.current[:, 5] -= 200  # now EOS only ever follows token 3, and 3 is never produced
        model.current[3, 5] += 200
        model.current[:, 3] -= 100
    result = ar_generate(model, torch.tensor([[3], [0]]), 6, torch.Generator().manual_seed(0), eos_id=5)
    assert result.steps == 6, "decoding must go on while a row is unfinished"
    assert (result.tokens[0, 1:] == 5).all(), "a finished row keeps EOS as padding"
    assert not (result.tokens[1] == 5).any()


def test_decode_rejects_empty_prompt_and_bad_knobs():
    model = PreviousTokenLM()
    with pytest.raises(ValueError, match="P >= 1"):
        ar_generate(model, torch.zeros(2, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="top_p"):
        ar_generate(model, torch.zeros(2, 1, dtype=torch.long), 3, top_p=0)
