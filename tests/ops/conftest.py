"""Shared inputs and comparisons for the scan-op tests (exposed through the ``scan_tools`` fixture)."""

import math
from types import SimpleNamespace

import pytest
import torch

from diffmamba.ops import Mamba3State

TIME_INPUTS = ("q", "k", "v", "log_decay", "dt", "trap", "dphase")


def make_inputs(B=2, T=20, H=3, P=4, N=8, S=3, R=None, dtype=torch.float64, seed=0, with_D=True):
    """Realistic-but-small scan inputs as a dict of keyword arguments for ``mamba3_scan``.

    dt ~ logU(1e-3, 0.1) * 4 and a = -exp(randn) * dt give per-step decays between ~0.3 and 1, so a
    chunk of 8 forgets a visible but not overwhelming part of its past; q, k carry the +1 bias of
    the real layer; dphase = dt * pi * tanh(randn) as in docs/mamba3.md §1.2.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    rank = () if R is None else (R,)
    dt = torch.exp(torch.empty(B, T, H, dtype=torch.float64).uniform_(math.log(1e-3), math.log(0.1), generator=gen)) * 4
    inputs = dict(
        q=randn(B, T, H, *rank, N) + 1.0,
        k=randn(B, T, H, *rank, N) + 1.0,
        v=randn(B, T, H, *rank, P),
        log_decay=-torch.exp(randn(B, T, H)) * dt,
        dt=dt,
        trap=torch.sigmoid(randn(B, T, H)),
        dphase=dt[..., None] * math.pi * torch.tanh(randn(B, T, H, S)),
        D=randn(H) if with_D else None,
    )
    scalar_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for name in TIME_INPUTS + ("D",):
        if inputs[name] is not None:
            inputs[name] = inputs[name].to(dtype if name in ("q", "k", "v", "D") else scalar_dtype)
    return inputs


def random_state(B=2, H=3, P=4, N=8, S=3, R=None, seed=1, dtype=torch.float64):
    """An arbitrary continuation state (not necessarily reachable; the algebra must not care)."""
    gen = torch.Generator().manual_seed(seed)
    rank = () if R is None else (R,)
    return Mamba3State(
        ssm=torch.randn(B, H, P, N, generator=gen, dtype=torch.float64).to(dtype),
        k_prev=torch.randn(B, H, *rank, N, generator=gen, dtype=torch.float64).to(dtype),
        v_prev=torch.randn(B, H, *rank, P, generator=gen, dtype=torch.float64).to(dtype),
        phase=(torch.rand(B, H, S, generator=gen, dtype=torch.float64) * 2 * math.pi).to(dtype),
    )


def time_slice(inputs, start, stop):
    """The same inputs restricted to time steps [start, stop)."""
    return {name: (t[:, start:stop] if name in TIME_INPUTS else t) for name, t in inputs.items()}


def phase_difference(a, b):
    """Largest |a - b| on the circle (phases are reduced mod 2*pi and may wrap differently)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.numel() == 0:  # S = 0: no rotary pairs, nothing to compare
        return 0.0
    wrapped = torch.remainder(a.double() - b.double() + math.pi, 2 * math.pi) - math.pi
    return wrapped.abs().max().item()


def assert_close(label, got, want, tol):
    """Print the margin, then assert max |got - want| <= tol * max(1, max |want|)."""
    err = (got.double() - want.double()).abs().max().item()
    scale = max(1.0, want.double().abs().max().item())
    print(f"{label}: max abs err {err:.3e} (tol {tol * scale:.1e})")
    assert err <= tol * scale, f"{label}: {err:.3e} > {tol * scale:.1e}"


def assert_states_close(label, got, want, tol):
    assert_close(f"{label} ssm", got.ssm, want.ssm, tol)
    assert_close(f"{label} k_prev", got.k_prev, want.k_prev, tol)
    assert_close(f"{label} v_prev", got.v_prev, want.v_prev, tol)
    err = phase_difference(got.phase, want.phase)
    print(f"{label} phase: max circular err {err:.3e}")
    assert err <= tol * 2 * math.pi


@pytest.fixture(autouse=True)
def single_thread():
    """These tensors are tiny: intra-op threads only add sync cost, and on a shared 2-core
    machine oversubscription made the folder ~8x slower. Restored afterwards for other tests."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def scan_tools():
    return SimpleNamespace(
        make_inputs=make_inputs,
        random_state=random_state,
        time_slice=time_slice,
        phase_difference=phase_difference,
        assert_close=assert_close,
        assert_states_close=assert_states_close,
        TIME_INPUTS=TIME_INPUTS,
    )
