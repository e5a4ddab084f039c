"""The one public entry to the Mamba-3 scan: ``mamba3_scan`` and ``mamba3_step`` (docs/contracts.md §1).

Validates shapes and dtypes (``ValueError`` naming the expected shape), then dispatches:

- ``impl="triton"``: ``diffmamba.kernels.mamba3_scan_triton`` / ``mamba3_step_triton`` (imported
  lazily; an import failure is an error when asked for explicitly);
- ``impl="reference"``: the chunked pure-PyTorch form (``reference.scan_chunked_ref``);
- ``impl="recurrent"``: the per-token loop (``reference.scan_recurrent_ref``), for tests;
- ``impl="states"``: the recurrence batched over T, holding every per-token state
  (``reference.scan_states_ref``): fewest ops for a few tokens, memory T x state;
- ``impl=None`` (auto): ``$DIFFMAMBA_SCAN_IMPL`` if set, else Triton for CUDA tensors when the
  kernels import, else the states form for small scans without autograd (B*T per-token states of
  at most ``STATES_FORM_MAX_ELEMENTS`` floats: the drafts, scorings and short prompts of batch-1
  decoding, where a CPU is bound by op count), else the chunked reference.

``mamba3_scan_states`` is the forward scan that returns the state after *every* token (speculative
decoding continues from the state after the accepted part of a draft); it always runs the states
form.

The Triton entries are called with the same arguments as these functions (minus ``impl``) and
must return ``(y, state_or_None)``.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Optional

import torch

from diffmamba.core.device import triton_interpreting

from . import reference
from .state import Mamba3State

IMPL_ENV_VAR = "DIFFMAMBA_SCAN_IMPL"
IMPLS = ("reference", "recurrent", "states", "triton")
# Auto picks the states form (inference only) while its per-token states, B*T*H*P*N floats, stay
# under this: a 4-token scan then costs ~80 ops per direction against ~170 in the chunked form, but
# the states form's arithmetic grows with every state it writes. Measured on the 2-core CPU (demo
# model, both directions of a block-denoiser call): 15% faster at 98K elements, even at ~390K,
# 15% slower at 790K.
STATES_FORM_MAX_ELEMENTS = 1 << 18
_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SCALAR_DTYPES = (torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------
# validation


def _fmt(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _check_shape(name: str, tensor, letters: str, expected: tuple) -> None:
    """Raise ValueError unless tensor.shape == expected; ``None`` in expected matches any size."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [{letters}], got {type(tensor).__name__}")
    got = tuple(tensor.shape)
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        shown = ", ".join(letter if e is None else str(e) for letter, e in zip(letters.split(", "), expected))
        raise ValueError(f"{name} must have shape [{letters}] = [{shown}], got {_fmt(got)}")


def _check_dtype(name: str, tensor: torch.Tensor, allowed) -> None:
    if tensor.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise ValueError(f"{name} must have dtype in ({names}), got {str(tensor.dtype).replace('torch.', '')}")


def _check_device(named: dict) -> None:
    devices = {name: t.device for name, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all scan inputs must be on one device; got {listing}")


def _check_inputs(q, k, v, log_decay, dt, trap, dphase, D, state, time_axis: bool):
    """Shared validation of scan (time_axis=True) and step (time_axis=False) inputs.

    Returns (B, T or None, H, R or None, P, N, S).
    """
    lead = "B, T, H" if time_axis else "B, H"
    num_lead = 3 if time_axis else 2
    if not isinstance(q, torch.Tensor) or q.dim() not in (num_lead + 1, num_lead + 2):
        got = _fmt(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"q must have shape [{lead}, N] (SISO) or [{lead}, R, N] (MIMO), got {got}")
    is_mimo = q.dim() == num_lead + 2
    lead_sizes = tuple(q.shape[:num_lead])
    rank = q.shape[num_lead] if is_mimo else None
    N = q.shape[-1]
    rank_letters, rank_sizes = (", R", (rank,)) if is_mimo else ("", ())
    _check_shape("k", k, f"{lead}{rank_letters}, N", lead_sizes + rank_sizes + (N,))
    _check_shape("v", v, f"{lead}{rank_letters}, P", lead_sizes + rank_sizes + (None,))
    P = v.shape[-1]
    for name, tensor in (("log_decay", log_decay), ("dt", dt), ("trap", trap)):
        _check_shape(name, tensor, lead, lead_sizes)
    _check_shape("dphase", dphase, f"{lead}, S", lead_sizes + (None,))
    S = dphase.shape[-1]
    if S > N // 2:
        raise ValueError(f"dphase must have shape [{lead}, S] with S <= N // 2 = {N // 2}, got {_fmt(dphase.shape)}")
    heads = lead_sizes[-1]
    if D is not None:
        _check_shape("D", D, "H", (heads,))
    if time_axis and lead_sizes[1] < 1:
        raise ValueError(f"q must have at least one time step (T >= 1), got shape {_fmt(q.shape)}")

    for name, tensor in (("q", q), ("k", k), ("v", v)):
        _check_dtype(name, tensor, _INPUT_DTYPES)
    if k.dtype != q.dtype:
        raise ValueError(f"k must have q's dtype {q.dtype}, got {k.dtype}")
    for name, tensor in (("log_decay", log_decay), ("dt", dt), ("trap", trap), ("dphase", dphase)):
        _check_dtype(name, tensor, _SCALAR_DTYPES)
    if D is not None:
        _check_dtype("D", D, _INPUT_DTYPES)
    named = dict(q=q, k=k, v=v, log_decay=log_decay, dt=dt, trap=trap, dphase=dphase, D=D)

    batch = lead_sizes[0]
    if state is not None:
        if not isinstance(state, tuple) or len(state) != 4:
            raise ValueError(f"state must be a Mamba3State(ssm, k_prev, v_prev, phase), got {type(state).__name__}")
        state = Mamba3State(*state)
        rank_letters_state = ", R" if is_mimo else ""
        _check_shape("state.ssm", state.ssm, "B, H, P, N", (batch, heads, P, N))
        _check_shape("state.k_prev", state.k_prev, f"B, H{rank_letters_state}, N", (batch, heads) + rank_sizes + (N,))
        _check_shape("state.v_prev", state.v_prev, f"B, H{rank_letters_state}, P", (batch, heads) + rank_sizes + (P,))
        _check_shape("state.phase", state.phase, "B, H, S", (batch, heads, S))
        for name, tensor in zip(("state.ssm", "state.k_prev", "state.v_prev", "state.phase"), state):
            _check_dtype(name, tensor, _INPUT_DTYPES)
            named[name] = tensor
    _check_device(named)
    T = lead_sizes[1] if time_axis else None
    return batch, T, heads, rank, P, N, S


def _check_chunk_size(chunk_size) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


# ----------------------------------------------------------------------------------------------
# dispatch


@functools.lru_cache(maxsize=None)
def _triton_entry(name: str):
    """(function, None) if diffmamba.kernels provides ``name``, else (None, why not)."""
    try:
        import diffmamba.kernels as kernels  # lazy: optional dependency (triton); CPU runs the reference
    except ImportError as error:
        return None, f"import diffmamba.kernels failed: {error}"
    function = getattr(kernels, name, None)
    if function is None:
        return None, f"diffmamba.kernels has no {name}"
    return function, None


STEP_ENV_VAR = "DIFFMAMBA_STEP"


def fused_step_entry(x: torch.Tensor):
    """``diffmamba.kernels.mamba3_step_fused`` (a decode step's input transform, recurrence and gate
    in one kernel) when ``$DIFFMAMBA_STEP`` is 'fused', x is on a CUDA device (or the Triton
    interpreter runs: the tests) in fp32 / bf16 / fp16, and autograd is off (it has no backward);
    else None: the transform in PyTorch, then ``mamba3_step``. Opt-in until timed on a GPU."""
    mode = os.environ.get(STEP_ENV_VAR, "unfused")
    if mode not in ("unfused", "fused"):
        raise ValueError(f"${STEP_ENV_VAR} must be 'unfused' or 'fused', got {mode!r}")
    if mode == "unfused" or torch.is_grad_enabled() or x.dtype == torch.float64:
        return None
    if not (x.is_cuda or triton_interpreting()):
        return None
    function, why_not = _triton_entry("mamba3_step_fused")
    if function is None:
        raise ImportError(f"${STEP_ENV_VAR}=fused but {why_not}")
    return function


def _resolve_impl(impl: Optional[str], on_cuda: bool, triton_name: str):
    """Returns (impl, triton function or None)."""
    if impl is None:
        impl = os.environ.get(IMPL_ENV_VAR) or None
        if impl is not None and impl not in IMPLS:
            raise ValueError(f"${IMPL_ENV_VAR} must be one of {IMPLS} or unset, got {impl!r}")
    elif impl not in IMPLS:
        raise ValueError(f"impl must be None or one of {IMPLS}, got {impl!r}")
    if impl is None:
        if not on_cuda:
            return "reference", None
        function, why_not = _triton_entry(triton_name)
        if function is None:
            warnings.warn(f"Triton scan unavailable ({why_not}); using the PyTorch reference", stacklevel=3)
            return "reference", None
        return "triton", function
    if impl == "triton":
        function, why_not = _triton_entry(triton_name)
        if function is None:
            raise ImportError(f"impl='triton' requested but {why_not}")
        return "triton", function
    return impl, None


def mamba3_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    dt: torch.Tensor,
    trap: torch.Tensor,
    dphase: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    reverse: bool = False,
    initial_state: Optional[Mamba3State] = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
    impl: Optional[str] = None,
):
    """Mamba-3 scan over T (glossary and recurrence: ``diffmamba/ops/reference.py``).

    q, k: [B, T, H, N] (SISO) or [B, T, H, R, N] (MIMO), biased, NOT rotated;
    v: [B, T, H, P] or [B, T, H, R, P]; log_decay (<= 0), dt (> 0), trap (in (0, 1)): [B, T, H];
    dphase: [B, T, H, S], S <= N // 2; D: [H] or None.
    reverse: anti-causal, exactly flip(scan(flip(inputs along T))).
    Returns y (v's shape and dtype) and the final Mamba3State (None unless return_final_state).
    """
    _check_inputs(q, k, v, log_decay, dt, trap, dphase, D, initial_state, time_axis=True)
    _check_chunk_size(chunk_size)
    if initial_state is not None:
        initial_state = Mamba3State(*initial_state)
    chosen, triton_function = _resolve_impl(impl, q.is_cuda, "mamba3_scan_triton")
    if chosen == "triton":
        return triton_function(
            q, k, v, log_decay, dt, trap, dphase, D=D, reverse=reverse,
            initial_state=initial_state, return_final_state=return_final_state, chunk_size=chunk_size,
        )
    chosen = _pytorch_form(impl, chosen, q, v, (q, k, v, log_decay, dt, trap, dphase, D, *(initial_state or ())))
    return _reference_scan(
        q, k, v, log_decay, dt, trap, dphase, D, reverse, initial_state, return_final_state, chunk_size, chosen,
    )


SCAN_INPUTS = ("q", "k", "v", "log_decay", "dt", "trap", "dphase")


def mamba3_scan_pair(
    forward: dict,
    backward: dict,
    D_forward: Optional[torch.Tensor],
    D_backward: Optional[torch.Tensor],
    initial_state: Optional[Mamba3State] = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
    impl: Optional[str] = None,
):
    """Both directions of a bidirectional layer: ``mamba3_scan(**forward, D=D_forward, ...)`` and
    ``mamba3_scan(**backward, D=D_backward, reverse=True)`` (fresh state), as one call.

    forward, backward: dicts of the scan inputs (``SCAN_INPUTS``), shapes and dtypes alike.
    Returns (y_forward, y_backward, the forward direction's final Mamba3State or None).

    A Triton scan runs the two directions as two calls (its reverse needs no flip). The PyTorch
    forms run them as ONE scan over 2B rows: the backward inputs flipped along T (which their
    reverse scan does anyway) and stacked under the forward ones, each half with its own D and the
    backward half from a zero state. Same arithmetic, half the ops, and ops are what a CPU's small
    decoding calls cost: on 2 CPU cores a demo-model denoiser call runs 1.2x (64 tokens, batch 1) to
    1.4x (a 4-token draft, batch 8) faster.
    """
    if set(forward) != set(SCAN_INPUTS) or set(backward) != set(SCAN_INPUTS):
        raise ValueError(f"forward and backward must hold exactly the scan inputs {SCAN_INPUTS}")
    batch = _check_inputs(**forward, D=D_forward, state=initial_state, time_axis=True)[0]
    _check_inputs(**backward, D=D_backward, state=None, time_axis=True)
    for name in SCAN_INPUTS:
        if forward[name].shape != backward[name].shape or forward[name].dtype != backward[name].dtype:
            raise ValueError(f"forward and backward {name} must match in shape and dtype, got "
                             f"{_fmt(forward[name].shape)} {forward[name].dtype} and "
                             f"{_fmt(backward[name].shape)} {backward[name].dtype}")
    if (D_forward is None) != (D_backward is None):
        raise ValueError("give both directions a D, or neither")
    _check_chunk_size(chunk_size)
    if initial_state is not None:
        initial_state = Mamba3State(*initial_state)
    chosen, triton_function = _resolve_impl(impl, forward["q"].is_cuda, "mamba3_scan_triton")
    if chosen == "triton":  # inputs checked above: straight to the kernels
        y_forward, state = triton_function(**forward, D=D_forward, reverse=False, initial_state=initial_state,
                                           return_final_state=return_final_state, chunk_size=chunk_size)
        y_backward, _ = triton_function(**backward, D=D_backward, reverse=True, initial_state=None,
                                        return_final_state=False, chunk_size=chunk_size)
        return y_forward, y_backward, state
    stacked = {name: torch.cat((forward[name], backward[name].flip(1))) for name in SCAN_INPUTS}
    D = None if D_forward is None else torch.stack((D_forward, D_backward)).repeat_interleave(batch, dim=0)  # [2B, H]
    if initial_state is not None:  # the backward half starts fresh: zeros are exactly no state
        initial_state = Mamba3State(*(torch.cat((part, torch.zeros_like(part))) for part in initial_state))
    chosen = _pytorch_form(impl, chosen, stacked["q"], stacked["v"], (*stacked.values(), D, *(initial_state or ())))
    y, state = _reference_scan(**stacked, D=D, reverse=False, initial_state=initial_state,
                               return_final_state=return_final_state, chunk_size=chunk_size, impl=chosen)
    y_forward, y_backward = y.split(batch)
    state = None if state is None else Mamba3State(*(part[:batch] for part in state))
    return y_forward, y_backward.flip(1), state


def _pytorch_form(impl: Optional[str], chosen: str, q: torch.Tensor, v: torch.Tensor, tensors) -> str:
    """The PyTorch form auto picks: the states form for small scans without autograd, else ``chosen``."""
    if impl is None and chosen == "reference" and not os.environ.get(IMPL_ENV_VAR) and _states_form_fits(
            q, v, tensors):
        return "states"
    return chosen


def _states_form_fits(q: torch.Tensor, v: torch.Tensor, tensors) -> bool:
    """Few per-token states (B*T*H*P*N) and nothing to differentiate (autograd would save them all)."""
    states = v.shape[:3].numel() * v.shape[-1] * q.shape[-1]
    return states <= STATES_FORM_MAX_ELEMENTS and not (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def _reference_scan(q, k, v, log_decay, dt, trap, dphase, D, reverse, initial_state,
                    return_final_state, chunk_size, impl: str):
    if impl == "recurrent":
        y, state = reference.scan_recurrent_ref(
            q, k, v, log_decay, dt, trap, dphase, D=D, reverse=reverse, initial_state=initial_state
        )
    elif impl == "states":
        y, every = reference.scan_states_ref(
            q, k, v, log_decay, dt, trap, dphase, D=D, reverse=reverse, initial_state=initial_state
        )
        state = reference.last_state(every)
    else:
        y, state = reference.scan_chunked_ref(
            q, k, v, log_decay, dt, trap, dphase, D=D, reverse=reverse,
            initial_state=initial_state, chunk_size=chunk_size, final_state=return_final_state,
        )
    return y, (state if return_final_state else None)


def mamba3_scan_ref(
    q, k, v, log_decay, dt, trap, dphase, D=None, reverse=False, initial_state=None,
    return_final_state=False, chunk_size=64, impl: str = "reference",
):
    """``mamba3_scan`` pinned to a pure-PyTorch form: impl "reference" (chunked), "recurrent" or "states"."""
    if impl not in ("reference", "recurrent", "states"):
        raise ValueError(f"mamba3_scan_ref impl must be 'reference', 'recurrent' or 'states', got {impl!r}")
    return mamba3_scan(
        q, k, v, log_decay, dt, trap, dphase, D=D, reverse=reverse, initial_state=initial_state,
        return_final_state=return_final_state, chunk_size=chunk_size, impl=impl,
    )


def mamba3_scan_states(q, k, v, log_decay, dt, trap, dphase, D=None, initial_state=None):
    """The forward scan, returning y and the continuation state after *each* token: a Mamba3State
    with a T axis after B whose entry t equals ``mamba3_scan(tokens [0, t], return_final_state=True)``'s
    state. Arguments as ``mamba3_scan``; pure PyTorch on any device (it is meant for a few tokens)."""
    _check_inputs(q, k, v, log_decay, dt, trap, dphase, D, initial_state, time_axis=True)
    if initial_state is not None:
        initial_state = Mamba3State(*initial_state)
    return reference.scan_states_ref(q, k, v, log_decay, dt, trap, dphase, D=D, initial_state=initial_state)


def mamba3_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    log_decay_t: torch.Tensor,
    dt_t: torch.Tensor,
    trap_t: torch.Tensor,
    dphase_t: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    state: Optional[Mamba3State] = None,
    impl: Optional[str] = None,
):
    """One token: the scan's tensors without the T axis; ``state`` None means fresh.

    q_t, k_t: [B, H, N] or [B, H, R, N]; v_t: [B, H, P] or [B, H, R, P];
    log_decay_t, dt_t, trap_t: [B, H]; dphase_t: [B, H, S]; D: [H] or None.
    Returns (y_t, new state). A kernel may update ``state`` in place: always use the returned one.
    """
    _check_inputs(q_t, k_t, v_t, log_decay_t, dt_t, trap_t, dphase_t, D, state, time_axis=False)
    if state is not None:
        state = Mamba3State(*state)
    chosen, triton_function = _resolve_impl(impl, q_t.is_cuda, "mamba3_step_triton")
    if chosen == "triton":
        return triton_function(q_t, k_t, v_t, log_decay_t, dt_t, trap_t, dphase_t, D, state)
    return reference.scan_step_ref(q_t, k_t, v_t, log_decay_t, dt_t, trap_t, dphase_t, D=D, state=state)
