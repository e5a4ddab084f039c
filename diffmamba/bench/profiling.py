"""torch.profiler's view of a benchmark's calls: which ops and kernels take the time, and how many
kernels one call launches (what a CUDA graph replays and fusion would cut)."""
from __future__ import annotations

import torch


def print_profile(label: str, fn, device: str, calls: int = 3, rows: int = 20, per: int = 1,
                  unit: str = "call") -> None:
    """The ops and kernels of ``calls`` runs of ``fn`` by self time, after one warm-up; then the
    kernels launched (on CUDA) or the aten ops dispatched (on CPU, nested ones included) per
    ``unit``, one run of ``fn`` holding ``per`` of them (e.g. 64 decode steps)."""
    from torch.profiler import ProfilerActivity, profile  # lazy: only with --profile
    fn()
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize()
    print(f"{label} profile, {calls} calls, top {rows} by self {'device' if cuda else 'CPU'} time")
    print(prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                    row_limit=rows), flush=True)
    if cuda:
        count = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        what = "CUDA kernels launched"
    else:
        count = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
        what = "aten ops dispatched (nested included)"
    print(f"{label}: {count / (calls * per):.1f} {what} per {unit}", flush=True)
