"""Time the chunked pure-PyTorch Mamba-3 scan against the per-token loop (forward, forward+backward).

    diffmamba bench reference                  # B=2 H=8 P=64 N=64, T in {256, 1024}
    diffmamba bench reference --long 4096 --rank 4   (or python scripts/bench_reference.py ...)

Prints device, dtype, shapes, versions and thread count, then the median of --repeats timed runs
after --warmup untimed ones, with the loop/chunked speed ratio side by side.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from diffmamba.ops.reference import scan_chunked_ref, scan_recurrent_ref


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="diffmamba bench reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--headdim", type=int, default=64, help="P, the value head dim")
    parser.add_argument("--d-state", type=int, default=64, help="N, the q/k dim")
    parser.add_argument("--angles", type=int, default=None, help="S rotary pairs (default N // 4)")
    parser.add_argument("--rank", type=int, default=None, help="MIMO rank R (default: SISO)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024], help="T for both forms")
    parser.add_argument("--long", type=int, nargs="*", default=[4096], help="T for the chunked form only")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    return parser.parse_args(argv)


def make_inputs(args: argparse.Namespace, T: int, requires_grad: bool) -> dict:
    """Random inputs with the statistics of a freshly initialised layer (docs/mamba3.md §1.2, §1.8)."""
    dtype = getattr(torch, args.dtype)
    scalar_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    B, H, P, N = args.batch, args.heads, args.headdim, args.d_state
    S = args.angles if args.angles is not None else N // 4
    rank = () if args.rank is None else (args.rank,)
    dt = torch.exp(torch.empty(B, T, H).uniform_(math.log(1e-3), math.log(0.1)))
    tensors = dict(
        q=torch.randn(B, T, H, *rank, N) + 1.0,
        k=torch.randn(B, T, H, *rank, N) + 1.0,
        v=torch.randn(B, T, H, *rank, P),
        log_decay=-torch.exp(torch.randn(B, T, H)) * dt,
        dt=dt,
        trap=torch.sigmoid(torch.randn(B, T, H)),
        dphase=dt[..., None] * math.pi * torch.tanh(torch.randn(B, T, H, S)),
        D=torch.ones(H),
    )
    for name, tensor in tensors.items():
        target = dtype if name in ("q", "k", "v", "D") else scalar_dtype
        tensors[name] = tensor.to(target).requires_grad_(requires_grad)
    return tensors


def make_runner(scan, args: argparse.Namespace, T: int, backward: bool):
    """A no-argument callable that runs one timed pass (inputs built once, outside the timing)."""
    inputs = make_inputs(args, T, requires_grad=backward)
    kwargs = {"chunk_size": args.chunk_size} if scan is scan_chunked_ref else {}

    def run():
        if backward:
            y, state = scan(**inputs, **kwargs)
            (y.float().square().mean() + state.ssm.square().mean()).backward()
        else:
            with torch.no_grad():
                scan(**inputs, **kwargs)

    return run


def time_interleaved(runners, args: argparse.Namespace):
    """Median seconds per runner, and the median over repeats of runners[0] / runners[-1].

    The runners alternate inside every repeat, so on a shared machine both see the same load and
    the per-repeat ratio stays meaningful even when absolute times drift.
    """
    for _ in range(args.warmup):
        for run in runners:
            run()
    times = [[] for _ in runners]
    for _ in range(args.repeats):
        for run, bucket in zip(runners, times):
            start = time.perf_counter()
            run()
            bucket.append(time.perf_counter() - start)
    ratio = statistics.median(first / last for first, last in zip(times[0], times[-1]))
    return [statistics.median(bucket) for bucket in times], ratio


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    S = args.angles if args.angles is not None else args.d_state // 4
    rank = "SISO" if args.rank is None else f"MIMO R={args.rank}"
    print(f"device: cpu ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, python {platform.python_version()}")
    print(f"dtype {args.dtype}; B={args.batch} H={args.heads} P={args.headdim} N={args.d_state} S={S} {rank}; "
          f"chunk {args.chunk_size}; median of {args.repeats} after {args.warmup} warm-up")
    modes = [("fwd", False)] + ([] if args.no_backward else [("fwd+bwd", True)])
    print("loop/chunked = median over repeats of the paired ratio (the two run alternately)")
    print(f"{'T':>6} {'pass':>8} {'loop ms':>10} {'chunked ms':>11} {'loop/chunked':>13}")
    for T in args.lengths:
        for mode, backward in modes:
            runners = [make_runner(scan, args, T, backward) for scan in (scan_recurrent_ref, scan_chunked_ref)]
            (loop, chunked), ratio = time_interleaved(runners, args)
            print(f"{T:>6} {mode:>8} {loop * 1e3:>10.1f} {chunked * 1e3:>11.1f} {ratio:>12.1f}x")
    for T in args.long or []:
        for mode, backward in modes:
            (chunked,), _ = time_interleaved([make_runner(scan_chunked_ref, args, T, backward)], args)
            print(f"{T:>6} {mode:>8} {'-':>10} {chunked * 1e3:>11.1f} {'-':>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
