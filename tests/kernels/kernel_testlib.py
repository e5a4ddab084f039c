"""Shared helpers of the kernel tests: input generation, shapes per device, per-element checks.

The oracle is always ``diffmamba.ops.reference`` in float64 on the (bf16-rounded) inputs.
On CPU the kernels run in the Triton interpreter at small shapes; on CUDA at realistic ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffmamba.ops.state import Mamba3State

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


@dataclass(frozen=True)
class Dims:
    H: int
    N: int
    P: int
    S: int
    R: int  # MIMO rank used by the MIMO tests
    chunk: int  # chunk_size (time steps; chunk x R rows) passed to the kernel
    tokens: int  # B * T target for the scan tests


# CPU: tiny heads so the interpreter stays at a few programs per launch. S < N/2 keeps some
# unrotated channels in play. GPU: a realistic shape (B*T >= 8k from T = 16 up, H >= 8, N 128, P 64).
DIMS = Dims(H=8, N=128, P=64, S=32, R=4, chunk=64, tokens=8192) if CUDA else Dims(
    H=2, N=32, P=16, S=5, R=2, chunk=16, tokens=2)


# At most this many sequences on the GPU: at T = 1 a batch of B*T = 8k made each of the float64
# oracle's [B, H, P, N] states 4.3 GB (> 22 GB per test), and parallel test workers ran the
# H200 out of memory (2026-11-27). 512 keeps every case under ~6 GB and still fills the GPU.
MAX_GPU_BATCH = 512


def batch_for(T: int) -> int:
    return min(max(1, math.ceil(DIMS.tokens / T)), MAX_GPU_BATCH) if CUDA else DIMS.tokens


def make_inputs(B, T, dtype, R=None, seed=0, device=DEVICE, dims=DIMS):
    """Realistic random inputs: q/k ~ N(0,1) + 1 (BC-norm output plus the init-1 bias),
    dt in [0.01, 0.2], a = -A dt with A in [0.2, 3], lam = sigmoid(N(0,1)),
    dphase = dt * pi * tanh(N(0,1)), D ~ N(0,1). Returns the list [q, k, v, a, dt, lam, dphase, D]."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    H, N, P, S = dims.H, dims.N, dims.P, dims.S
    rk = () if R is None else (R,)

    def rn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def ru(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    q = rn(B, T, H, *rk, N) + 1.0
    k = rn(B, T, H, *rk, N) + 1.0
    v = rn(B, T, H, *rk, P)
    dt = ru(0.01, 0.2, B, T, H)
    a = -dt * ru(0.2, 3.0, B, T, H)
    lam = torch.sigmoid(rn(B, T, H))
    dph = dt[..., None] * math.pi * torch.tanh(rn(B, T, H, S))
    D = rn(H)
    out = [q.to(dtype), k.to(dtype), v.to(dtype)]
    out += [x.to(torch.float32) for x in (a, dt, lam, dph)]
    out.append(D.to(torch.float32))
    return [x.to(device) for x in out]


def make_state(B, dtype, R=None, seed=1, device=DEVICE, dims=DIMS) -> Mamba3State:
    """A non-trivial continuation state (random ssm, k_prev, v_prev, phase in [0, 2pi))."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    H, N, P, S = dims.H, dims.N, dims.P, dims.S
    rk = () if R is None else (R,)
    ssm = torch.randn(B, H, P, N, generator=g, dtype=torch.float64)
    kp = torch.randn(B, H, *rk, N, generator=g, dtype=torch.float64) + 1.0
    vp = torch.randn(B, H, *rk, P, generator=g, dtype=torch.float64)
    ph = 2 * math.pi * torch.rand(B, H, S, generator=g, dtype=torch.float64)
    return Mamba3State(ssm.float().to(device), kp.to(dtype).to(device), vp.to(dtype).to(device),
                       ph.float().to(device))


def upstream(tensors, seed=7):
    """Random upstream gradients (drawn in float64, then cast) for each tensor (None kept)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [None if t is None else
            torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)
            for t in tensors]


def tolerances(dtype):
    """(rtol, atol as a fraction of max|ref|) per I/O dtype.

    fp32: fp32 arithmetic against float64, far under 1e-4. bf16: outputs are stored in bf16
    (half-ulp 2^-9 = 2e-3 relative) and the GPU kernel multiplies bf16 operands on the tensor
    cores (as the official kernel does) with fp32 accumulation, so the scale-relative error of a
    long sum of bf16 products is ~1e-2.
    """
    if dtype == torch.bfloat16:
        return 1e-2, 1.5e-2
    return 1e-4, 1e-5


def check(name, got, ref, dtype):
    """Per-element check |got - ref| <= atol + rtol |ref|; prints the margin (max ratio) first."""
    rtol, atol_frac = tolerances(dtype)
    got = got.detach().double()
    ref = ref.detach().double()
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if ref.numel() == 0:  # e.g. the phase gradients when S = 0
        return
    atol = atol_frac * ref.abs().max().clamp_min(1e-30)
    bound = atol + rtol * ref.abs()
    err = (got - ref).abs()
    margin = (err / bound).max().item() if err.numel() else 0.0
    print(f"{name}: max|err| {err.max().item() if err.numel() else 0.0:.3e} "
          f"max|ref| {ref.abs().max().item() if ref.numel() else 0.0:.3e} margin {margin:.3f}")
    assert torch.isfinite(got).all(), f"{name}: non-finite values (unwritten NaN-poisoned output?)"
    assert margin <= 1.0, f"{name}: error exceeds tolerance (margin {margin:.3f} > 1)"


def check_state(prefix, got: Mamba3State, ref: Mamba3State, dtype):
    check(f"{prefix}.ssm", got.ssm, ref.ssm, dtype)
    check(f"{prefix}.k_prev", got.k_prev, ref.k_prev, dtype)
    check(f"{prefix}.v_prev", got.v_prev, ref.v_prev, dtype)
    # the phase lives on a circle: compare the wrapped difference.
    diff = torch.remainder(got.phase.double() - ref.phase.double() + math.pi, 2 * math.pi) - math.pi
    check(f"{prefix}.phase", ref.phase.double() + diff, ref.phase, torch.float32)


def double(tensors):
    return [None if t is None else t.detach().double() for t in tensors]
