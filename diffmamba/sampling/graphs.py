"""Decoding calls replayed from CUDA graphs: the AR step and the diffusion / block denoisers.

    _, state = model.prefill(prompt)
    step = GraphedStep(model, state)            # copies the state, captures once (warm-up + capture)
    logits = step(token)                        # [B, V + 1]; read it before the next call
    state = step.state                          # the live state (to hand back to model.step)

    graphed = GraphedDenoiser(model, cache, 16)  # a non-empty prefix's cache, blocks of 16
    denoise = graphed.bind(cache)               # per block: the cached prefix's states
    logits = denoise(x)                         # [B, L', V + 1], as block_denoiser(model, cache)(x)

    denoise = GraphedDenoiser(model, None, 128, batch=8).bind()   # the whole [8, 128] canvas
    logits = denoise(x)                         # as denoiser_from_model(model)(x)

At small batch an eager call is host-bound: each layer launches a few dozen kernels from Python
(the demo model's 4-layer AR step took 6 ms on an H200, docs/benchmarks.md), while the data it
moves is kilobytes to megabytes. A CUDA graph records those launches once on fixed buffers and
replays them with one call, so the time per call approaches the kernels' own.

``CapturedCall`` is the protocol: the captured function reads *static* input buffers and writes
static output buffers; a call copies new inputs in (values only: shapes and dtypes are fixed at
capture) and replays. The AR step feeds its next state back inside the captured function: the
fields the step does not update in place (the Triton step updates ``ssm`` in place, but returns new
k_prev, v_prev and phase) are copied onto its inputs, so a replay advances the state by itself.
The step and the block denoiser carry states across calls, so their layers must have fixed-size
ones: trunks with attention layers (a growing KV cache) are refused there; the whole-canvas
denoiser carries none and takes any trunk. ``graph=False`` runs the same protocol eagerly on any
device: what the CPU tests check. ``ar_generate``, ``block_sample`` and ``generate``'s diffusion
mode take their captures from ``reuse``, which keeps the most recent ones on the model per shape,
so repeated decodes capture once. On a CUDA device the CLIs use graphs wherever they work
(``resolve_cuda_graph``).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import Tensor

from diffmamba.core.errors import UserError
from diffmamba.ops.state import Mamba3State


def check_graph_device(device) -> None:
    """The one requirement of ``--cuda-graph`` known before any work is done: a CUDA device."""
    if torch.device(device).type != "cuda":
        raise UserError(f"--cuda-graph needs a CUDA device (this run is on {device}); drop --cuda-graph on this "
                        "machine")


def graphable(model, mode: str) -> bool:
    """Whether ``mode``'s decoding calls can be replayed from a CUDA graph for ``model``: the AR step,
    the block denoiser and speculative decoding's calls carry per-layer states across calls, so they
    need a trunk of Mamba-3 layers (fixed-size states); the whole-canvas diffusion denoiser takes any."""
    if mode == "diffusion":
        return True
    if mode in ("ar", "block", "speculative"):
        return all(isinstance(s, Mamba3State) for s in model.init_state(1))
    raise ValueError(f"unknown mode {mode!r}")


def resolve_cuda_graph(flag, device, model, mode: str) -> bool:
    """``--cuda-graph`` (True: asked, so refusals are errors), ``--no-cuda-graph`` (False) or neither
    (None: on where it works, i.e. on a CUDA device for a ``graphable`` mode; measured 8-13x faster
    than eager for a 130M model's AR step at batch 1 and 64 on an H200, docs/benchmarks.md)."""
    if flag is not None:
        return bool(flag)
    return torch.device(device).type == "cuda" and graphable(model, mode)


class CapturedCall:
    """``fn(*inputs) -> list of tensors`` on static copies of ``inputs``, captured once as a CUDA
    graph (``graph=True``) and replayed by ``__call__``; ``load`` refills the inputs."""

    def __init__(self, fn: Callable[..., list], inputs: list, graph: bool = True, warmup: int = 2):
        device = inputs[0].device
        if graph:
            check_graph_device(device)
        self.fn, self.graph, self.outputs = fn, None, None
        self.inputs = [t.clone() for t in inputs]
        if not graph:
            return
        with torch.no_grad(), _uncached_autocast():
            # Warm up on a side stream (as torch.cuda.graphs asks), on copies: the Triton step updates
            # its state in place, and Triton autotunes and compiles on a first launch, never in a capture.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    fn(*(t.clone() for t in self.inputs))
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph):
                    self.outputs = fn(*self.inputs)
            except RuntimeError as e:  # e.g. out of memory for the graph's own pool
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"capturing the CUDA graph failed ({first}); rerun with --no-cuda-graph to "
                                "decode eagerly") from e

    def load(self, tensors: list, start: int = 0, pad: bool = False) -> None:
        """Copy ``tensors`` into the inputs from index ``start`` on (same shapes and dtypes). ``pad``:
        tensors may have fewer rows (leading axis) than captured; the rest are filled with copies of
        their first row, whose outputs the caller drops (a batch that shrinks keeps its capture)."""
        slots = self.inputs[start:start + len(tensors)]

        def fits(slot, t):
            rows_ok = t.shape[0] == slot.shape[0] or (pad and 0 < t.shape[0] < slot.shape[0])
            return rows_ok and t.shape[1:] == slot.shape[1:] and t.dtype == slot.dtype

        if len(slots) != len(tensors) or not all(fits(a, b) for a, b in zip(slots, tensors)):
            raise ValueError("these tensors do not match the captured call's inputs (model, batch size, "
                             "block size and dtypes are fixed at capture)")
        for dst, src in zip(slots, tensors):
            if dst.data_ptr() != src.data_ptr():
                rows = src.shape[0]
                dst[:rows].copy_(src)
                if rows < dst.shape[0]:
                    dst[rows:].copy_(src[:1].expand(dst.shape[0] - rows, *src.shape[1:]))

    @torch.no_grad()
    def __call__(self) -> list:
        """Run on the current inputs; the returned tensors are static buffers, overwritten by the next call."""
        if self.graph is None:
            self.outputs = self.fn(*self.inputs)
        else:
            self.graph.replay()
        return self.outputs


def _fields(states: list) -> list:
    """Per-layer Mamba3States -> their tensors, flat (attention layers' KV caches are refused)."""
    if not all(isinstance(s, Mamba3State) for s in states):
        raise UserError("--cuda-graph needs a trunk of Mamba-3 layers only: attention layers grow a KV cache, "
                        "which a captured graph cannot hold; sample this model without --cuda-graph")
    return [t for layer in states for t in layer]


def _states(fields: list) -> list:
    width = len(Mamba3State._fields)
    return [Mamba3State(*fields[i:i + width]) for i in range(0, len(fields), width)]


KEPT_CALLS = 4  # captures kept per model; each holds its own memory pool (a [64, 1024] canvas's logits alone are GBs)


def shapes_of(tensors: list, batch: Optional[int] = None) -> tuple:
    """The shapes and dtypes a capture is kept under (``reuse``), with ``batch`` rows if given."""
    return tuple(((batch or t.shape[0], *t.shape[1:]), t.dtype) for t in tensors)


def reuse(model, kind: str, shapes: tuple, build: Callable[[], object]):
    """The captured call ``build()`` made for ``model`` with inputs of ``shapes`` (``shapes_of``), under the
    same autocast: kept on the model, so decoding several batches of one size (``eval speed``'s
    repeats, ``sample``'s batches) captures once. Capturing on another shape keeps the
    ``KEPT_CALLS`` most recently used ones (the others' memory is freed); moving or reloading the
    weights (their addresses change, and a graph reads them by address) drops every kept call."""
    weights = tuple(p.data_ptr() for p in model.parameters())
    kept = model.__dict__.get("_captured_calls")
    if kept is None or kept.weights != weights:
        kept = model.__dict__["_captured_calls"] = _Kept(weights)
    key = (kind, shapes, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
    call = kept.calls.pop(key, None)
    if call is None:
        while len(kept.calls) >= KEPT_CALLS:
            kept.calls.pop(next(iter(kept.calls)))  # the least recently used
        call = build()
    kept.calls[key] = call  # (re)inserted last: the most recently used
    return call


class _Kept:
    """A model's kept captures and the weight addresses they read. A copy of the model (new weights)
    starts with none: ``copy.deepcopy`` of a model that decoded with graphs must not copy them."""

    def __init__(self, weights: tuple):
        self.weights, self.calls = weights, {}

    def __deepcopy__(self, memo) -> "_Kept":
        return _Kept(())


class GraphedStep:
    """``model.step`` at a fixed batch size, from a copy of ``state`` on, replayed per token."""

    @classmethod
    def reused(cls, model, state: list) -> "GraphedStep":
        """A kept capture for ``state``'s shapes (``reuse``), loaded with ``state``."""
        step = reuse(model, "step", shapes_of(_fields(state)), lambda: cls(model, state))
        step.load(state)
        return step

    def __init__(self, model, state: list, graph: bool = True, warmup: int = 2):
        fields = _fields(state)
        token = torch.zeros(fields[0].shape[0], dtype=torch.long, device=fields[0].device)

        def step(token_t, *state_fields):
            logits, new_state = model.step(token_t, _states(list(state_fields)))
            new_fields = _fields(new_state)
            if any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(state_fields, new_fields)):
                raise ValueError("the step returned a state of other shapes or dtypes than it was given; "
                                 "load a state of the step's own dtypes (e.g. one from prefill)")
            for dst, src in zip(state_fields, new_fields):  # captured copies: the replay feeds back itself
                if dst.data_ptr() != src.data_ptr():
                    dst.copy_(src)
            return [logits]

        self.call = CapturedCall(step, [token] + fields, graph=graph, warmup=warmup)

    @property
    def state(self) -> list:
        """The live per-layer state (the call's buffers: copy it to keep it past the next call)."""
        return _states(self.call.inputs[1:])

    def load(self, state: list) -> None:
        """Continue from ``state`` (from ``prefill``, ``init_state`` or a step; same shapes and dtypes)."""
        self.call.load(_fields(state), start=1)

    def __call__(self, token: Tensor) -> Tensor:
        """One AR token [B]: the logits [B, V + 1] (a static buffer, overwritten by the next call);
        advances ``state``."""
        self.call.load([token])
        return self.call()[0]


class GraphedDenoiser:
    """The denoiser ``model(x [B, L], mode="diffusion"[, fwd_states=cache])`` at a fixed batch and
    length, replayed per call. With ``cache`` (per-layer states of a non-empty prefix: block
    diffusion) it is bound per block (``bind(cache)``); the cache fixes the states' shapes and
    dtypes, so the first block with an empty prefix runs eagerly (``block_sample``). With
    ``cache=None`` it is the whole-canvas denoiser of mode ``diffusion`` (``batch`` then gives B):
    every sampler calls it on the same [B, L] canvas at every step, and since one call holds no
    state across calls, attention layers are welcome here."""

    def __init__(self, model, cache: Optional[list], length: int, batch: Optional[int] = None,
                 graph: bool = True, warmup: int = 2):
        fields = [] if cache is None else _fields(cache)
        device = fields[0].device if fields else next(model.parameters()).device
        batch = fields[0].shape[0] if fields else batch
        x = torch.full((batch, length), model.mask_token_id, dtype=torch.long, device=device)

        def denoise(x_t, *cache_fields):
            states = _states(list(cache_fields)) if cache_fields else None
            return [model(x_t, mode="diffusion", fwd_states=states)]

        self.call = CapturedCall(denoise, [x] + fields, graph=graph, warmup=warmup)

    @classmethod
    def reused(cls, model, cache: Optional[list], length: int, batch: Optional[int] = None) -> "GraphedDenoiser":
        """A kept capture for ``length`` and ``batch`` rows (default: the cache's) of ``cache``'s
        shapes (``reuse``); a cache with fewer rows is captured padded (``padded_rows``)."""
        if cache is None:
            return reuse(model, f"denoiser {length}", ((batch,),), lambda: cls(model, None, length, batch))
        fields = _fields(cache)
        batch = batch or fields[0].shape[0]
        return reuse(model, f"denoiser {length}", shapes_of(fields, batch),
                     lambda: cls(model, padded_rows(cache, batch), length))

    def bind(self, cache: Optional[list] = None) -> Callable[[Tensor], Tensor]:
        """``denoise(x) -> logits`` given ``cache``, as ``block_denoiser(model, cache)``, or with no
        cache as ``denoiser_from_model(model)``. A cache and x with fewer rows than captured are
        padded (``CapturedCall.load``), the logits cut back to x's rows."""
        if cache is not None:
            self.call.load(_fields(cache), start=1, pad=True)

        def denoise(x: Tensor) -> Tensor:
            self.call.load([x], pad=True)
            # a copy: a sampler may keep one call's logits past the next call
            return self.call()[0][:x.shape[0]].clone()

        return denoise


class GraphedScore:
    """Speculative decoding's scoring scan ``model.prefill(tokens [B, L], state, every_token=True)``
    at a fixed batch and length, replayed per call; fewer live rows than captured are padded, so
    the capture survives rows that finish."""

    def __init__(self, model, state: list, length: int, graph: bool = True, warmup: int = 2):
        fields = _fields(state)
        tokens = torch.zeros(fields[0].shape[0], length, dtype=torch.long, device=fields[0].device)

        def score(tokens_t, *state_fields):
            logits, every = model.prefill(tokens_t, _states(list(state_fields)), every_token=True)
            return [logits] + _fields(every)

        self.call = CapturedCall(score, [tokens] + fields, graph=graph, warmup=warmup)

    @classmethod
    def reused(cls, model, state: list, length: int, batch: Optional[int] = None) -> "GraphedScore":
        """A kept capture for ``length`` and ``batch`` rows (default: the state's) of ``state``'s
        shapes (``reuse``)."""
        fields = _fields(state)
        batch = batch or fields[0].shape[0]
        return reuse(model, f"score {length}", shapes_of(fields, batch),
                     lambda: cls(model, padded_rows(state, batch), length))

    def __call__(self, tokens: Tensor, state: list) -> tuple[Tensor, list]:
        """(logits [b, L, V + 1], the states after every token) for the b live rows: views of the
        call's buffers, overwritten by the next call (index them to keep them)."""
        live = tokens.shape[0]
        self.call.load([tokens] + _fields(state), pad=True)
        logits, *every = self.call()
        return logits[:live], _states([f[:live] for f in every])


def padded_rows(states: list, batch: int) -> list:
    """Per-layer states with ``batch`` rows: the given rows, then copies of the first (the shape a
    capture made for ``batch`` rows wants; see ``CapturedCall.load``)."""
    return [type(s)(*(torch.cat((x, x[:1].expand(batch - x.shape[0], *x.shape[1:]))) for x in s))
            for s in states] if states[0][0].shape[0] < batch else states


def _uncached_autocast():
    """The caller's CUDA autocast without its weight-cast cache: cached casts made outside the
    capture would be freed when the caller's autocast exits, under a graph that still reads them;
    uncached, the casts are captured kernels of the graph itself."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
