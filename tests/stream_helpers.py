"""The direct computation the two-stream block-diffusion forward is checked against (shared by
tests/bd3lm/test_streams.py for Mamba trunks and tests/test_hybrid.py for attention and hybrid ones),
and the one-thread fixture both use."""
import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors on a shared 2-core machine: intra-op threads only add contention. Autouse in
    every module (or conftest) that imports it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sequential_prefix_states(model, clean, block_size):
    """Per-layer cache before every block, advancing one clean block at a time through the model's
    public block API (forward from the cache, block-local reverse): the direct computation."""
    cache, before = None, []
    for start in range(0, clean.shape[1], block_size):
        before.append(cache)
        _, cache = model(clean[:, start:start + block_size], fwd_states=cache, return_fwd_states=True)
    return before, cache
