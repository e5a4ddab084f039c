"""The direct computation the two-stream block-diffusion forward is checked against (shared by
tests/bd3lm/test_streams.py for Mamba trunks and tests/test_hybrid.py for attention and hybrid ones)."""


def sequential_prefix_states(model, clean, block_size):
    """Per-layer cache before every block, advancing one clean block at a time through the model's
    public block API (forward from the cache, block-local reverse): the direct computation."""
    cache, before = None, []
    for start in range(0, clean.shape[1], block_size):
        before.append(cache)
        _, cache = model(clean[:, start:start + block_size], fwd_states=cache, return_fwd_states=True)
    return before, cache
