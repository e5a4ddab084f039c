"""Fixtures of the block-diffusion tests (helpers live in block_helpers.py: test folders share the
``conftest`` module name)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors on a shared 2-core machine: intra-op threads only add contention."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
