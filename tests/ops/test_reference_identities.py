"""The reference against independent formulations of the same math (float64, CPU)."""

import math

import pytest
import torch

from diffmamba.ops.reference import (
    _rotate_by_complex_product,
    _rotation_factor,
    rotate,
    scan_chunked_ref,
    scan_recurrent_ref,
    scan_rotating_state_ref,
)

TOL = 1e-12


def test_rotate_is_complex_multiplication_on_the_first_pairs():
    torch.manual_seed(0)
    x = torch.randn(5, 10, dtype=torch.float64)
    phase = torch.randn(5, 3, dtype=torch.float64) * 4
    got = rotate(x, phase)
    pairs = torch.view_as_complex(x[:, :6].reshape(5, 3, 2).contiguous())
    want = torch.view_as_real(pairs * torch.exp(1j * phase)).reshape(5, 6)
    err = (got[:, :6] - want).abs().max().item()
    print(f"rotate vs complex: {err:.3e}")
    assert err < 1e-14
    assert torch.equal(got[:, 6:], x[:, 6:]), "channels past 2S must pass through untouched"
    back = rotate(got, -phase)
    assert (back - x).abs().max().item() < 1e-14
    assert torch.equal(rotate(x, phase[:, :0]), x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_pairs", [0, 3, 5])
def test_complex_product_rotation_equals_rotate(dtype, num_pairs):
    """The chunked form's bulk rotation, also on an odd storage offset (not complex-aligned)."""
    torch.manual_seed(1)
    storage = torch.randn(1 + 4 * 3 * 10, dtype=torch.float64).to(dtype)
    x = storage[1:].view(4, 3, 10)  # odd offset, as a slice of a fused projection could be
    phase = (torch.randn(4, 1, num_pairs, dtype=torch.float64) * 4).to(dtype)
    got = _rotate_by_complex_product(x, _rotation_factor(phase, 10))
    want = rotate(x, phase)
    err = (got - want).abs().max().item()
    print(f"complex rotation {dtype} S={num_pairs}: {err:.3e}")
    assert got.shape == x.shape and got.dtype == want.dtype
    assert err <= {torch.float64: 1e-14, torch.float32: 1e-6}[dtype]


def _dense_scan(q, k, v, log_decay, dt, trap, dphase, D, reverse):
    """O(T^2) matrix form straight from docs/mamba3.md §1.3 (forward) and §2.4 (native reverse).

    Forward:  y_i = sum_{j<=i} L_ij (qr_i . kr_j) v_j + D v_i with L_ii = gamma_i and
              L_ij = (gamma_j + (1 - lam_{j+1}) dt_{j+1}) exp(a_{j+1} + ... + a_i).
    Reverse:  suffix-sum phases, look-back shift (1 - lam_{j-1}) dt_{j-1}, decays a_i + ... + a_{j-1}.
    """
    if q.dim() == 4:
        q, k, v = q.unsqueeze(3), k.unsqueeze(3), v.unsqueeze(3)
        squeeze = True
    else:
        squeeze = False
    T = q.shape[1]
    if reverse:
        phase = dphase.flip(1).cumsum(1).flip(1)
    else:
        phase = dphase.cumsum(1)
    qr, kr = rotate(q, phase.unsqueeze(3)), rotate(k, phase.unsqueeze(3))
    gamma = trap * dt
    shifted = (1 - trap) * dt
    zero = torch.zeros_like(shifted[:, :1])
    if reverse:
        neighbour_beta = torch.cat((zero, shifted[:, :-1]), 1)
    else:
        neighbour_beta = torch.cat((shifted[:, 1:], zero), 1)
    exclusive = torch.cat((zero, log_decay.cumsum(1)), 1)  # exclusive[t] = sum_{s<t} a_s
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    if reverse:
        log_l = exclusive[:, None, :T, :] - exclusive[:, :T, None, :]  # sum_{i <= s < j} a_s
        off_diagonal = j > i
    else:
        log_l = exclusive[:, 1:, None, :] - exclusive[:, None, 1:, :]  # sum_{j < s <= i} a_s
        off_diagonal = j < i
    # log_l: [B, i, j, H]
    weight = (neighbour_beta + gamma)[:, None, :, :] * torch.where(
        off_diagonal[None, :, :, None], log_l, torch.zeros_like(log_l)
    ).exp()
    weight = torch.where(off_diagonal[None, :, :, None], weight, torch.zeros_like(weight))
    weight = weight + torch.diag_embed(gamma.transpose(1, 2)).permute(0, 2, 3, 1)
    scores = torch.einsum("bihrn,bjhsn->bijhrs", qr, kr) * weight[..., None, None]
    y = torch.einsum("bijhrs,bjhsp->bihrp", scores, v)
    if D is not None:
        y = y + D[:, None, None] * v
    return y.squeeze(3) if squeeze else y


@pytest.mark.parametrize("R", [None, 3])
@pytest.mark.parametrize("reverse", [False, True])
def test_recurrent_and_chunked_match_dense_matrix_form(scan_tools, R, reverse):
    inputs = scan_tools.make_inputs(T=19, R=R, seed=3)
    want = _dense_scan(**inputs, reverse=reverse)
    y_loop, _ = scan_recurrent_ref(**inputs, reverse=reverse)
    y_chunked, _ = scan_chunked_ref(**inputs, reverse=reverse, chunk_size=8)
    scan_tools.assert_close(f"recurrent vs dense R={R} reverse={reverse}", y_loop, want, TOL)
    scan_tools.assert_close(f"chunked vs dense R={R} reverse={reverse}", y_chunked, want, TOL)


@pytest.mark.parametrize("R", [None, 2])
def test_rotating_state_recurrence_equals_rope_frame(scan_tools, R):
    inputs = scan_tools.make_inputs(T=25, R=R, seed=4)
    inputs["dphase"] = inputs["dphase"] * 8  # large angles: a sign slip would show immediately
    y_rope, state = scan_recurrent_ref(**inputs)
    y_rot, h_unrotated = scan_rotating_state_ref(**inputs)
    scan_tools.assert_close(f"rotating-state y R={R}", y_rot, y_rope, TOL)
    h_in_rope_frame = rotate(h_unrotated, state.phase.unsqueeze(2))
    scan_tools.assert_close(f"rotating-state h R={R}", h_in_rope_frame, state.ssm, TOL)


def test_lambda_one_and_zero_angles_reduce_to_mamba2(scan_tools):
    inputs = scan_tools.make_inputs(T=23, seed=5)
    inputs["trap"] = torch.ones_like(inputs["trap"])
    inputs["dphase"] = torch.zeros_like(inputs["dphase"])
    q, k, v, a, dt, D = (inputs[n] for n in ("q", "k", "v", "log_decay", "dt", "D"))
    h = torch.zeros(q.shape[0], q.shape[2], v.shape[-1], q.shape[-1], dtype=torch.float64)
    outputs = []
    for t in range(q.shape[1]):  # Mamba-2: h = exp(a) h + dt k v^T ; y = h^T q + D v
        h = a[:, t, :, None, None].exp() * h + dt[:, t, :, None, None] * v[:, t, :, :, None] * k[:, t, :, None, :]
        outputs.append((h * q[:, t, :, None, :]).sum(-1) + D[:, None] * v[:, t])
    want = torch.stack(outputs, 1)
    for name, scan in (("recurrent", scan_recurrent_ref), ("chunked", scan_chunked_ref)):
        kwargs = {} if scan is scan_recurrent_ref else {"chunk_size": 8}
        y, state = scan(**inputs, **kwargs)
        scan_tools.assert_close(f"mamba2 {name} y", y, want, TOL)
        scan_tools.assert_close(f"mamba2 {name} h", state.ssm, h, TOL)


def test_mimo_rank_one_equals_siso(scan_tools):
    inputs = scan_tools.make_inputs(T=21, seed=6)
    mimo = dict(inputs)
    for name in ("q", "k", "v"):
        mimo[name] = inputs[name].unsqueeze(3)
    for name, scan in (("recurrent", scan_recurrent_ref), ("chunked", scan_chunked_ref)):
        y_siso, s_siso = scan(**inputs)
        y_mimo, s_mimo = scan(**mimo)
        scan_tools.assert_close(f"R=1 {name} y", y_mimo.squeeze(3), y_siso, 1e-14)
        scan_tools.assert_close(f"R=1 {name} ssm", s_mimo.ssm, s_siso.ssm, 1e-14)
        assert s_mimo.k_prev.shape == (2, 3, 1, 8) and s_siso.k_prev.shape == (2, 3, 8)


def test_mimo_is_r_squared_siso_scans_sharing_decays(scan_tools):
    """docs/mamba3.md §1.6: the MIMO state is the sum of the R per-rank SISO states, and output rank r
    is the sum over s of the SISO scan reading rank s's keys/values with rank r's queries."""
    R = 3
    inputs = scan_tools.make_inputs(T=17, R=R, seed=7, with_D=False)
    y_mimo, mimo_state = scan_chunked_ref(**inputs, chunk_size=8)
    state_sum = torch.zeros_like(mimo_state.ssm)
    y_sum = torch.zeros_like(y_mimo)
    for s in range(R):
        for r in range(R):
            siso = dict(inputs, q=inputs["q"][:, :, :, r], k=inputs["k"][:, :, :, s], v=inputs["v"][:, :, :, s])
            y_rs, state_rs = scan_recurrent_ref(**siso)
            y_sum[:, :, :, r] += y_rs
        state_sum += state_rs.ssm  # the state does not depend on the query rank
    scan_tools.assert_close("MIMO y = sum of SISO cross-rank scans", y_mimo, y_sum, TOL)
    scan_tools.assert_close("MIMO state = sum of rank states", mimo_state.ssm, state_sum, TOL)
