"""The AR decode step replayed from a CUDA graph: one launch of the whole captured step per token.

    _, state = model.prefill(prompt)
    step = GraphedStep(model, state)            # copies the state, captures once (warm-up + capture)
    logits = step(token)                        # [B, V + 1]; read it before the next call
    state = step.state                          # the live state (to hand back to model.step)
    step.load(other_state)                      # restart from another state of the same shapes

At small batch an eager ``model.step`` is host-bound: each layer launches a few dozen kernels from
Python (the demo model's 4-layer step took 6 ms on an H200, docs/benchmarks.md), while the state
it moves is kilobytes. A CUDA graph records those launches once on fixed buffers and replays them
with one call, so the per-token time approaches the kernels' own.

The protocol: the captured step reads the token and the state from *static* input buffers and
writes the logits and the next state to static output buffers; after each replay the outputs that
are not already the inputs (the Triton step updates ``ssm`` in place, but returns new k_prev,
v_prev and phase) are copied back into the inputs. Layers must have a fixed-size state, so a trunk
with attention layers (a growing KV cache) is refused. ``graph=False`` runs the same static-buffer
protocol eagerly, on any device: it is what the CPU tests check, and the A/B baseline of
``diffmamba bench decode``.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from diffmamba.core.errors import UserError
from diffmamba.ops.state import Mamba3State


class GraphedStep:
    """``model.step`` at a fixed batch size on static buffers, replayed from a CUDA graph."""

    def __init__(self, model, state: list, graph: bool = True, warmup: int = 2):
        """``state``: per-layer states (from ``prefill``, ``init_state`` or ``step``); copied, so the
        buffers have its shapes and dtypes, which fix the batch size."""
        device = model.embedding.weight.device
        if graph and device.type != "cuda":
            raise UserError(f"a CUDA graph needs the model on a CUDA device (it is on {device}); "
                            "drop --cuda-graph on this machine")
        if not all(isinstance(s, Mamba3State) for s in state):
            raise UserError("--cuda-graph needs a trunk of Mamba-3 layers only: attention layers grow a KV cache, "
                            "which a captured graph cannot; decode this model without it")
        self.model, self.graph = model, None
        self.state = [Mamba3State(*(t.clone() for t in layer)) for layer in state]
        self.token = torch.zeros(self.state[0].ssm.shape[0], dtype=torch.long, device=device)
        self._fields = [t for layer in self.state for t in layer]
        if not graph:
            self.logits, self._out = None, None
            return
        with torch.no_grad(), _uncached_autocast():
            # Warm up on a side stream (as torch.cuda.graphs asks), on copies: the Triton step updates
            # the state in place, and Triton autotunes / compiles on first launch, never during capture.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    model.step(self.token, [Mamba3State(*(t.clone() for t in s)) for s in self.state])
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits, out_state = model.step(self.token, self.state)
        self._out = [t for layer in out_state for t in layer]

    def load(self, state: list) -> None:
        """Copy ``state`` (from ``model.prefill``, ``init_state`` or another step) into the live buffers."""
        fields = [t for layer in state for t in layer]
        if len(fields) != len(self._fields) or any(a.shape != b.shape or a.dtype != b.dtype
                                                   for a, b in zip(fields, self._fields)):
            raise ValueError("state does not match this GraphedStep's model, batch size and dtypes")
        for dst, src in zip(self._fields, fields):
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src)

    @torch.no_grad()
    def __call__(self, token: Tensor) -> Tensor:
        """One AR token [B] from the live state: returns the logits [B, V + 1] (a static buffer,
        overwritten by the next call) and advances ``self.state``."""
        self.token.copy_(token)
        if self.graph is None:
            self.logits, out_state = self.model.step(self.token, self.state)
            self._out = [t for layer in out_state for t in layer]
        else:
            self.graph.replay()
        for dst, src in zip(self._fields, self._out):
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src)
        return self.logits


def _uncached_autocast():
    """The caller's CUDA autocast without its weight-cast cache: cached casts made outside the
    capture would be freed when the caller's autocast exits, under a graph that still reads them;
    uncached, the casts are captured kernels of the graph itself."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
