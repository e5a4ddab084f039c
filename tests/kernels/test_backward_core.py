"""Triton backward of the scan: the core recurrence kernels in isolation, the backward switch,
and partial-gradient / no-final-state paths of the full op.

The full-op gradient matrix (every input and initial-state field, random upstream gradients on y
and on every final-state field, both directions, T in {1, 15, 16, 17, 64, 65, 200}, fp32/bf16,
SISO/MIMO) is test_scan.py::test_backward_*; this file covers what that matrix cannot reach:
ragged N / P (masks, two value blocks), the core's own contract, and the fallback switch.
"""

from __future__ import annotations

import math

import pytest
import torch
from kernel_testlib import CUDA, DEVICE, DIMS, batch_for, check, make_inputs, make_state, upstream

import diffmamba.kernels as K
from diffmamba.kernels import scan_bwd
from diffmamba.kernels.core import core_backward
from diffmamba.ops import reference
from diffmamba.ops.state import Mamba3State


def core_ref(qr, kp, v, a, g0, reverse):
    """The core recurrence, one token at a time (float64), rank form [B, T, H, R, *]:
    G_t = exp(a_t) G_{t-1} + sum_r K_{t,r} v_{t,r}^T, y_{t,r} = exp(a_t) G_{t-1}^T Qr_{t,r};
    G stored [B, H, P, N]. Returns y and the final G."""
    if reverse:
        y, g = core_ref(qr.flip(1), kp.flip(1), v.flip(1), a.flip(1), g0, False)
        return y.flip(1), g
    B, T, H, R, N = qr.shape
    g = g0 if g0 is not None else qr.new_zeros(B, H, v.shape[-1], N)
    ys = []
    for t in range(T):
        decay = a[:, t].exp()[..., None, None]
        ys.append(torch.einsum("bhpn,bhrn->bhrp", decay * g, qr[:, t]))
        g = decay * g + torch.einsum("bhrp,bhrn->bhpn", v[:, t], kp[:, t])
    return torch.stack(ys, 1), g


@pytest.mark.parametrize("T,R", [(1, 1), (16, 1), (17, 1), (40, 1), (1, 4), (9, 4), (21, 2)],
                         ids=lambda x: str(x))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("ends", ["fresh", "init+dfinal"])
def test_core_backward_ragged(T, R, reverse, ends):
    """N = 24, P = 80: padded key lanes and two value blocks (the second one ragged); with
    rank R > 1 the chunk of 16 rows holds 16 / R steps, so T = 9 at R = 4 spans three chunks."""
    B, H, N, P = 2, 2, 24, 80
    g = torch.Generator().manual_seed(T)
    qr = torch.randn(B, T, H, R, N, generator=g, dtype=torch.float64)
    kp = 0.1 * torch.randn(B, T, H, R, N, generator=g, dtype=torch.float64)
    v = torch.randn(B, T, H, R, P, generator=g, dtype=torch.float64)
    a = -0.5 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    with_ends = ends != "fresh"
    g0 = torch.randn(B, H, P, N, generator=g, dtype=torch.float64) if with_ends else None
    leaves = [x.clone().requires_grad_() for x in (qr, kp, v, a)]
    g0l = g0.clone().requires_grad_() if with_ends else None
    y, g1 = core_ref(*leaves, g0l, reverse)
    dy, dg1 = upstream([y, g1], seed=T + 1)
    outs, seeds = [y], [dy]
    if with_ends:
        outs.append(g1)
        seeds.append(dg1)
    torch.autograd.backward(outs, seeds)

    f = [x.float().contiguous().to(DEVICE) for x in (qr, kp, v, a, dy)]
    got = core_backward(f[0], f[1], f[2], f[3],
                        g0.float().contiguous().to(DEVICE) if with_ends else None, f[4],
                        dg1.float().contiguous().to(DEVICE) if with_ends else None,
                        reverse=reverse, chunk=16)
    refs = [x.grad for x in leaves] + [g0l.grad if with_ends else None]
    for name, gk, gr in zip(["dQr", "dK", "dv", "da", "dG0"], got, refs):
        if gr is None:  # no entry state: its adjoint is still computed, from dG_final = 0
            continue
        check(name, gk.cpu(), gr, torch.float32)


def test_backward_switch(monkeypatch):
    monkeypatch.delenv("DIFFMAMBA_SCAN_BWD", raising=False)
    assert scan_bwd.backward_mode() == "auto"
    for mode in ("triton", "recompute"):
        monkeypatch.setenv("DIFFMAMBA_SCAN_BWD", mode)
        assert scan_bwd.backward_mode() == mode
    monkeypatch.setenv("DIFFMAMBA_SCAN_BWD", "fast")
    with pytest.raises(ValueError, match="'auto', 'triton' or 'recompute'"):
        scan_bwd.backward_mode()


def _grads(xs, st, reverse, want_final, seed_names):
    leaves = [None if x is None else x.detach().clone().requires_grad_(i in seed_names)
              for i, x in enumerate(xs)]
    y, s = K.mamba3_scan_triton(*leaves, reverse=reverse, initial_state=st,
                                return_final_state=want_final, chunk_size=DIMS.chunk)
    outs = [y] + (list(s) if want_final else [])
    torch.autograd.backward(outs, upstream(outs, seed=3))
    return [None if x is None else x.grad for x in leaves]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_triton_matches_recompute_partial_needs(monkeypatch, reverse):
    """Only some inputs require grad, D = None, no final state: the Triton path returns exactly
    the gradients asked for, equal to the recompute fallback's (itself checked in test_scan)."""
    T = 23
    B = batch_for(T)
    xs = make_inputs(B, T, torch.float32, seed=21)
    xs[7] = None
    st = make_state(B, torch.float32, seed=22)
    asked = {1, 3, 6}  # k, log_decay, dphase
    monkeypatch.delenv("DIFFMAMBA_SCAN_BWD", raising=False)
    got = _grads(xs, st, reverse, False, asked)
    monkeypatch.setenv("DIFFMAMBA_SCAN_BWD", "recompute")
    ref = _grads(xs, st, reverse, False, asked)
    for i, (g, r) in enumerate(zip(got, ref)):
        if i in asked:
            check(f"input {i}", g, r, torch.float32)
        else:
            assert g is None and r is None


def test_state_only_upstream():
    """Upstream gradient on the final state alone (y unused): reaches the initial state too."""
    T = 18
    B = batch_for(T)
    xs = make_inputs(B, T, torch.float32, seed=31)
    st = make_state(B, torch.float32, seed=32)
    stl = [t.detach().clone().requires_grad_() for t in st]
    _, s = K.mamba3_scan_triton(*xs, initial_state=Mamba3State(*stl), return_final_state=True,
                                chunk_size=DIMS.chunk)
    # v_prev is the last value, independent of the initial state: seed the other three fields
    outs = [s.ssm, s.k_prev, s.phase]
    seeds = upstream(outs, seed=5)
    torch.autograd.backward(outs, seeds)
    sd = [t.detach().double().requires_grad_() for t in st]
    fn = reference.scan_chunked_ref if CUDA else reference.scan_recurrent_ref
    _, s_ref = fn(*[x.double() for x in xs], initial_state=Mamba3State(*sd))
    torch.autograd.backward([s_ref.ssm, s_ref.k_prev, s_ref.phase], [g.double() for g in seeds])
    for name, g, r in zip(["dssm0", "dk_prev0", "dv_prev0", "dphase0"], stl, sd):
        check(name, g.grad, r.grad, torch.float32)


@pytest.mark.parametrize("R,S", [(1, 5), (4, 5), (2, 0)], ids=["siso", "mimo4", "mimo2-S0"])
def test_prepass_kernels_match_autograd(R, S):
    """prepass against float64 autograd of its formulas: qr = R(Phi) q,
    K' = R(Phi) k * scale, qk = q k^T (same step), and their adjoints from random seeds."""
    from diffmamba.kernels.prepass import prepass_backward, prepass_forward
    B, T, H, N = 2, 7, 3, 24
    g = torch.Generator().manual_seed(R + S)
    q, k = (torch.randn(B, T, H, R, N, generator=g, dtype=torch.float64) + 1 for _ in range(2))
    phase = 2 * math.pi * torch.rand(B, T, H, S, generator=g, dtype=torch.float64)
    scale, gamma = (torch.rand(B, T, H, generator=g, dtype=torch.float64) for _ in range(2))
    leaves = [x.clone().requires_grad_() for x in (q, k, phase, scale, gamma)]
    lq, lk, lph, lsc, lgam = leaves
    rot = lambda x: reference.rotate(x, lph.unsqueeze(3))  # noqa: E731
    qr, kp = rot(lq), rot(lk) * lsc[..., None, None]
    c = lgam[..., None, None] * (lq @ lk.transpose(-1, -2))
    seeds = upstream([qr, kp, c], seed=9)
    torch.autograd.backward([qr, kp, c], seeds)

    f = lambda x: x.float().contiguous().to(DEVICE)  # noqa: E731
    got_qr, got_kp, got_qk = prepass_forward(f(q), f(k), f(phase), f(scale))
    check("qr", got_qr.cpu(), qr, torch.float32)
    check("K'", got_kp.cpu(), kp, torch.float32)
    check("qk", got_qk.cpu(), q @ k.transpose(-1, -2), torch.float32)
    dq, dk, dphi, dsc = prepass_backward(f(q), f(k), f(phase), f(scale), f(gamma),
                                         *(f(s) for s in seeds))
    check("dq", dq.cpu(), lq.grad, torch.float32)
    check("dk", dk.cpu(), lk.grad, torch.float32)
    check("dPhi", dphi.cpu(), torch.zeros_like(lph) if lph.grad is None else lph.grad, torch.float32)
    check("dscale", dsc.cpu(), lsc.grad, torch.float32)


@pytest.mark.parametrize("T", [1, 63, 64, 65, 3000])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("start", [False, True], ids=["fresh", "init"])
def test_cumulative_phase_matches_float64(T, reverse, start):
    """The backward's phase (float32 within 64-step chunks, float64 carry) against the reference's
    float64 running sum mod 2pi, sums up to ~9,000 rad at T = 3000, and its gradient (a suffix /
    prefix sum of the seed) against float64 autograd of the reference."""
    from diffmamba.kernels.prepass import cumulative_phase
    B, H, S = 2, 3, 4
    g = torch.Generator().manual_seed(T + 2 * reverse + start)
    # float32-representable steps of up to 3 rad: the reference sums exactly what the kernel path sees
    dph = (3 * torch.rand(B, T, H, S, generator=g)).double().requires_grad_()
    ph0 = 2 * math.pi * torch.rand(B, H, S, generator=g, dtype=torch.float64) if start else None
    seed = torch.randn(B, T, H, S, generator=g, dtype=torch.float64)
    logical = dph.flip(1) if reverse else dph
    want = reference.cumulative_phase(ph0 if start else torch.zeros(B, H, S, dtype=torch.float64),
                                      logical, torch.float64)
    want = want.flip(1) if reverse else want
    (want_grad,) = torch.autograd.grad(want, dph, seed)

    leaf = dph.detach().float().requires_grad_()
    got = cumulative_phase(leaf, None if ph0 is None else ph0.float(), reverse)
    assert got.dtype == torch.float32 and got.shape == dph.shape
    assert bool(((got >= 0) & (got < 2 * math.pi)).all())
    wrapped = torch.remainder(got.double() - want + math.pi, 2 * math.pi) - math.pi  # angle error
    # a float32 sum of one chunk's <= 192 rad; one float32 sum over all T (9,000 rad) misses by ~4e-4
    assert wrapped.abs().max().item() < 2e-5
    (got_grad,) = torch.autograd.grad(got, leaf, seed.float())
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-5, atol=1e-3)


def test_forward_switch(monkeypatch):
    from diffmamba.kernels.autograd import forward_mode
    monkeypatch.delenv("DIFFMAMBA_SCAN_FWD", raising=False)
    assert forward_mode() == "fused"
    monkeypatch.setenv("DIFFMAMBA_SCAN_FWD", "split")
    assert forward_mode() == "split"
    monkeypatch.setenv("DIFFMAMBA_SCAN_FWD", "chunked")
    with pytest.raises(ValueError, match="'fused' or 'split'"):
        forward_mode()


def test_forward_rows_budget_and_its_override(monkeypatch):
    """The fused forward's chunk rows: the register budget (64 rows at N = 128, 32 at N = 256),
    DIFFMAMBA_FWD_ROWS for A/B timing, never more rows than the chunk holds, never fewer than R."""
    from diffmamba.kernels.autograd import _rows
    monkeypatch.delenv("DIFFMAMBA_FWD_ROWS", raising=False)
    assert (_rows(64, 1, 128), _rows(64, 1, 256), _rows(128, 1, 32), _rows(16, 8, 128), _rows(4, 1, 128)) \
        == (64, 32, 128, 64, 16)
    monkeypatch.setenv("DIFFMAMBA_FWD_ROWS", "32")
    assert (_rows(64, 1, 128), _rows(16, 1, 128), _rows(8, 8, 128)) == (32, 16, 32)
    monkeypatch.setenv("DIFFMAMBA_FWD_ROWS", "48")
    with pytest.raises(ValueError, match="16, 32, 64 or 128"):
        _rows(64, 1, 128)


def test_compile_failure_falls_back_to_recompute(monkeypatch):
    """A GPU whose Triton rejects the backward kernels still trains: one RuntimeWarning, then
    the recompute backward from there on, with the same gradients."""
    from triton.runtime.errors import OutOfResources
    T = 19
    B = batch_for(T)
    xs = make_inputs(B, T, torch.float32, seed=41)
    st = make_state(B, torch.float32, seed=42)
    want = _grads(xs, st, False, True, set(range(8)))
    calls = []

    def rejected(*args, **kwargs):
        calls.append(1)
        raise OutOfResources(300000, 232448, "shared memory")

    monkeypatch.delenv("DIFFMAMBA_SCAN_BWD", raising=False)
    monkeypatch.setattr(scan_bwd, "_TRITON_BWD_BROKEN", False)
    monkeypatch.setattr(scan_bwd, "_triton_backward", rejected)
    with pytest.warns(RuntimeWarning, match="recompute backward from now on"):
        got = _grads(xs, st, False, True, set(range(8)))
    again = _grads(xs, st, False, True, set(range(8)))  # no second try, no second warning
    assert calls == [1] and scan_bwd._TRITON_BWD_BROKEN
    for i in range(8):
        check(f"input {i}", got[i], want[i], torch.float32)
        assert torch.equal(again[i], got[i])
    # DIFFMAMBA_SCAN_BWD=triton: no fallback, the failure surfaces
    monkeypatch.setenv("DIFFMAMBA_SCAN_BWD", "triton")
    with pytest.raises(OutOfResources):
        _grads(xs, st, False, True, set(range(8)))


def test_dot_mode(monkeypatch):
    """The dot policy: forward bf16 operands for bf16 I/O, TF32 backward for bf16 / fp16 I/O,
    TF32X3 for fp32 I/O (IEEE fp32 dots spill on sm_90, see test_sm90_build.py); the TF32 modes
    are emulated under the interpreter, where bf16 operands run as IEEE."""
    from diffmamba.kernels import scan_fwd as F
    monkeypatch.delenv("DIFFMAMBA_BWD_TF32", raising=False)
    emu = {F.DOT_TF32: F.DOT_TF32_EMU, F.DOT_TF32X3: F.DOT_TF32X3_EMU, F.DOT_BF16: F.DOT_IEEE}

    def want(mode):
        return mode if CUDA else emu.get(mode, mode)
    fwd = [F.dot_mode(d, forward=True) for d in (torch.bfloat16, torch.float16, torch.float32)]
    bwd = [F.dot_mode(d, forward=False) for d in (torch.bfloat16, torch.float16, torch.float32)]
    assert fwd == [want(F.DOT_BF16), want(F.DOT_TF32), want(F.DOT_TF32X3)]
    assert bwd == [want(F.DOT_TF32), want(F.DOT_TF32), want(F.DOT_TF32X3)]
    monkeypatch.setenv("DIFFMAMBA_BWD_TF32", "0")
    assert F.dot_mode(torch.bfloat16, forward=False) == F.DOT_IEEE
    assert F.dot_mode(torch.bfloat16, forward=True) == want(F.DOT_BF16)  # the switch is backward-only
    monkeypatch.setenv("DIFFMAMBA_BWD_TF32", "1")
    assert F.dot_mode(torch.float32, forward=False) == want(F.DOT_TF32)
