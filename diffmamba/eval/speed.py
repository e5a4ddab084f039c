"""Speed and memory of generation: tokens/s, latency, peak memory, median of repeats after warm-up.

``measure(fn, device)`` times one generation callable. Memory is measured the way the device allows
and every number carries its label:

- CUDA: ``torch.cuda.max_memory_allocated`` during the call (absolute, weights included), after
  ``reset_peak_memory_stats``; also the increase over what was allocated before the call.
- CPU: the increase of the process's resident set size (RSS) during the call, sampled every 2 ms
  by a thread (no tracemalloc, which would slow the run and miss torch's allocator). A delta of 0
  means the call fitted in memory the process already held; the label says "RSS increase".

Timings synchronise CUDA before and after; ``environment()`` gives device, dtype and versions and
is printed with every table of speed numbers.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from diffmamba.core.device import synchronize
from diffmamba.eval.sampling import generate_batch
from diffmamba.sampling.graphs import resolve_cuda_graph

CPU_MEMORY_LABEL = "peak RSS increase during the call (sampled every 2 ms), MiB"
CUDA_MEMORY_LABEL = "peak CUDA memory allocated during the call (torch.cuda.max_memory_allocated, weights included), MiB"


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("triton", "transformers", "diffmamba"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass  # not installed: left out of the report
    return out


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    """Device name, dtype, thread count and package versions for labelling speed numbers."""
    device = torch.device(device)
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(idx)
        extra = {"cuda": torch.version.cuda, "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(idx)))}
    else:
        name = platform.processor() or platform.machine()
        extra = {"cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    return {"device": str(device), "device_name": name, "dtype": str(dtype).replace("torch.", ""),
            "scan_impl": os.environ.get("DIFFMAMBA_SCAN_IMPL", "auto"), **extra, **_versions()}


def format_environment(env: dict) -> str:
    keys = ("device", "device_name", "dtype", "cuda", "cpu_threads", "scan_impl", "torch", "triton", "python")
    return ", ".join(f"{k}={env[k]}" for k in keys if k in env)


class _RssSampler:
    """Peak RSS of this process while active, polled by a background thread."""

    def __init__(self, interval: float = 0.002):
        import psutil  # lazy: optional dependency (CPU peak memory; without it none is reported)
        self._proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.base) / 2**20


@dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int
    peak_mem_mib: float
    mem_delta_mib: float
    mem_label: str
    result: object  # what the last call returned (e.g. tokens and NFE)

    def as_dict(self) -> dict:
        return {"latency_s": self.median_s, "latency_min_s": self.min_s, "latency_max_s": self.max_s,
                "repeats": self.repeats, "peak_mem_mib": self.peak_mem_mib, "mem_delta_mib": self.mem_delta_mib,
                "mem_label": self.mem_label,
                "mem_kind": "CUDA max allocated" if self.mem_label == CUDA_MEMORY_LABEL else "CPU RSS increase"}


def measure(fn: Callable[[], object], device, warmup: int = 1, repeats: int = 3) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; median wall time.

    Memory comes from the timed calls (maximum over them)."""
    device = torch.device(device)
    result = None
    for _ in range(warmup):
        result = fn()
    synchronize(device)
    times, peaks, deltas = [], [], []
    for _ in range(max(repeats, 1)):
        if device.type == "cuda":
            synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            result = fn()
            synchronize(device)
            times.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated(device)
            peaks.append(peak / 2**20)
            deltas.append((peak - before) / 2**20)
        else:
            with _RssSampler() as rss:
                t0 = time.perf_counter()
                result = fn()
                times.append(time.perf_counter() - t0)
            peaks.append(rss.peak / 2**20)
            deltas.append(rss.delta_mib)
    label = CUDA_MEMORY_LABEL if device.type == "cuda" else CPU_MEMORY_LABEL
    peak = max(peaks) if device.type == "cuda" else max(deltas)
    return Timing(median_s=statistics.median(times), min_s=min(times), max_s=max(times), repeats=len(times),
                  peak_mem_mib=peak, mem_delta_mib=max(deltas), mem_label=label, result=result)


def speed_row(timing: Timing, batch_size: int, length: int, extra: Optional[dict] = None) -> dict:
    """Tokens/s = batch * generated length / median latency; latency is the wall time of one batch."""
    row = {"batch_size": batch_size, "length": length,
           "tokens_per_s": batch_size * length / timing.median_s if timing.median_s > 0 else float("inf"),
           "latency_per_seq_s": timing.median_s, **timing.as_dict()}
    row["latency_per_seq_note"] = "every sequence of a batch finishes together: latency per sequence = batch wall time"
    row.update(extra or {})
    return row


def evaluate_speed(systems, ckpts: dict, settings_of, *, batch_sizes=(1, 8, 64), lengths=(64,), prompt_len: int = 0,
                   warmup: int = 1, repeats: int = 3, seed: int = 0, device=None, amp=None,
                   cuda_graph: Optional[bool] = False) -> list[dict]:
    """Speed rows for every system x setting (``settings_of(system)`` -> [GenSetting]) x batch x length.

    Unconditional generation of ``length`` tokens (AR from one EOS token); with ``prompt_len`` > 0
    a random prompt of that many tokens is given first (AR prefill time is then reported apart).
    ``cuda_graph``: True / False / None (auto) as ``diffmamba.sampling.graphs.resolve_cuda_graph``, per
    system (AR and block: Mamba-3 trunks). Each row says whether its calls were replayed from CUDA
    graphs (``cuda_graph``)."""
    device = torch.device(device or "cpu")
    plan = [(s, st, b, n) for s in systems for st in settings_of(s) for b in batch_sizes for n in lengths]
    rows = []
    for system, setting, bs, length in tqdm(plan, desc="speed", unit=" configs"):
        ck = ckpts[system.checkpoint]
        model = ck.model
        gen = torch.Generator(device=device)
        prompt = None
        if prompt_len > 0:
            prompt = torch.randint(0, ck.tokenizer.vocab_size, (bs, prompt_len),
                                   generator=torch.Generator().manual_seed(seed)).to(device)

        graphed = resolve_cuda_graph(cuda_graph, device, model, system.mode)

        def run():
            gen.manual_seed(seed)
            with amp() if amp else contextlib.nullcontext(), torch.no_grad():
                return generate_batch(model, system, setting, bs, length, gen, prompt, ck.tokenizer.eos_id,
                                      cuda_graph=graphed)

        timing = measure(run, device, warmup=warmup, repeats=repeats)
        extra = {"system": system.name, "mode": system.mode, **setting.as_dict(), "nfe": float(timing.result[1]),
                 "cuda_graph": graphed,
                 "prompt_length": prompt_len, **system.settings, **timing.result[2]}
        if system.is_ar and prompt is not None:
            def prefill():
                with amp() if amp else contextlib.nullcontext(), torch.no_grad():
                    return model.prefill(prompt)
            extra["prefill_s"] = measure(prefill, device, warmup=warmup, repeats=repeats).median_s
        rows.append(speed_row(timing, bs, length, extra))
    return rows
