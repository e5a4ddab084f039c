"""The attention mixer: directions, padding, grouped KV heads, rotary positions, the KV cache."""
import pytest
import torch

from diffmamba.config import ModelConfig
from diffmamba.modules.attention import Attention, KVCache, attention_mask, rotary


def mixer(kv_heads=0, seed=0) -> Attention:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, layer_pattern="A", n_layers=1, attn_headdim=4, attn_kv_heads=kv_heads)
    return Attention(cfg).double()


def inputs(batch=2, length=9, seed=1) -> torch.Tensor:
    return torch.randn(batch, length, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kv_heads", [0, 2, 1])
def test_causal_mode_is_causal_and_diffusion_mode_sees_the_future(kv_heads):
    layer, u = mixer(kv_heads), inputs()
    changed = u.clone()
    changed[:, 5] += 1.0
    ar, ar_changed = layer(u, causal=True), layer(changed, causal=True)
    torch.testing.assert_close(ar[:, :5], ar_changed[:, :5], rtol=0, atol=0)
    assert (ar[:, 5:] - ar_changed[:, 5:]).abs().amin(dim=-1).gt(0).all()
    both, both_changed = layer(u), layer(changed)
    assert (both[:, :5] - both_changed[:, :5]).abs().amin(dim=-1).gt(0).all()


@pytest.mark.parametrize("causal", [False, True])
def test_padding_keys_receive_zero_attention(causal):
    """Whatever sits at padded positions (values, keys), real positions' outputs do not move, bit
    for bit; and they equal the unpadded row's. Padded queries stay finite."""
    layer, u = mixer(2), inputs()
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[0, 6:] = False
    other = u.clone()
    other[0, 6:] = 100.0 * torch.randn(3, 16, dtype=torch.float64)
    out, out_other = layer(u, causal=causal, valid_mask=valid), layer(other, causal=causal, valid_mask=valid)
    assert torch.equal(out[valid], out_other[valid]) and torch.isfinite(out).all()
    alone = layer(u[:1, :6], causal=causal)
    torch.testing.assert_close(out[0, :6], alone[0], rtol=1e-12, atol=1e-12)


def test_padding_in_a_cache_stays_invisible():
    """A prefix cache remembers its padded keys: later tokens never attend to them either."""
    layer, u = mixer(), inputs(length=10)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    _, cache = layer(u[:, :6], causal=True, return_fwd_state=True, valid_mask=valid)
    assert cache.valid is not None and torch.equal(cache.valid, valid)
    out = layer(u[:, 6:], causal=True, fwd_initial_state=cache)
    poisoned = KVCache(cache.k.clone(), cache.v.clone(), cache.valid)
    poisoned.k[1, :, 4:] = 1e3
    poisoned.v[1, :, 4:] = -1e3
    assert torch.equal(out, layer(u[:, 6:], causal=True, fwd_initial_state=poisoned))


def test_prefill_then_steps_equal_the_causal_forward():
    layer, u = mixer(2), inputs(length=10)
    full = layer(u, causal=True)
    out, cache = layer(u[:, :4], causal=True, return_fwd_state=True)
    torch.testing.assert_close(out, full[:, :4], rtol=1e-12, atol=1e-12)
    out, cache = layer(u[:, 4:7], causal=True, fwd_initial_state=cache, return_fwd_state=True)
    torch.testing.assert_close(out, full[:, 4:7], rtol=1e-12, atol=1e-12)
    for t in range(7, 10):
        out_t, cache = layer.step(u[:, t], cache)
        torch.testing.assert_close(out_t, full[:, t], rtol=1e-12, atol=1e-12)
    assert cache.length == 10 and cache.nbytes == 2 * 2 * 2 * 10 * 4 * 8  # k and v, B, kv heads, T, hd, float64


def test_grouped_kv_heads_equal_full_heads_with_repeated_weights():
    grouped, full = mixer(kv_heads=2), mixer(kv_heads=0)
    q, k, v = grouped.qkv.weight.split([16, 8, 8])
    # Query heads 0, 1 share KV head 0; heads 2, 3 share KV head 1 (SDPA's enable_gqa grouping).
    repeat = (lambda w: w.unflatten(0, (2, 4)).repeat_interleave(2, dim=0).flatten(0, 1))
    with torch.no_grad():
        full.qkv.weight.copy_(torch.cat((q, repeat(k), repeat(v))))
        full.out_proj.weight.copy_(grouped.out_proj.weight)
    u = inputs()
    for causal in (False, True):
        torch.testing.assert_close(grouped(u, causal=causal), full(u, causal=causal), rtol=1e-12, atol=1e-12)


def test_rotary_scores_depend_only_on_relative_position():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=gen, dtype=torch.float64), torch.randn(1, 1, 1, 8, generator=gen,
                                                                                    dtype=torch.float64)
    score = lambda i, j: (rotary(q, torch.tensor([i]), 1e4) * rotary(k, torch.tensor([j]), 1e4)).sum()
    torch.testing.assert_close(score(3, 1), score(10, 8))
    assert not torch.isclose(score(3, 1), score(3, 2))


def test_mask_fast_paths():
    assert attention_mask(None, None, 5, causal=False, device="cpu") == (None, False)
    assert attention_mask(None, None, 5, causal=True, device="cpu") == (None, True)
    prefix = KVCache(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    mask, is_causal = attention_mask(prefix, None, 2, causal=True, device="cpu")
    assert not is_causal and mask.tolist() == [[[[True] * 4 + [False], [True] * 5]]]


def test_cache_append_does_not_touch_the_old_cache():
    cache = mixer().init_state(2)
    assert cache.length == 0 and cache.nbytes == 0
    grown = cache.append(torch.ones(2, 4, 3, 4, dtype=torch.float64), torch.ones(2, 4, 3, 4, dtype=torch.float64))
    assert cache.length == 0 and grown.length == 3 and grown.valid is None
