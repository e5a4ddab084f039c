"""Benchmark the Mamba-3 scan kernels against the roofline and the PyTorch reference.

Ops (per shape): fwd, rev (anti-causal forward), bi (fwd + rev of one layer), fwdbwd, bibwd
(both directions, forward + backward), step (decode, one token). Timings: median of
``triton.testing.do_bench`` after warm-up on a GPU; on CPU ``time.perf_counter`` medians of the
*reference* path (the Triton kernels need a GPU to be timed; the script says so).

Roofline (docs/performance.md §(e)), per token and direction, e = bytes per I/O element:
  bytes_fwd  = e (2HRN + 2HRP) + 12H + 4HS     (q, k, v read, y written, a/dt/trap/dphase fp32)
  bytes_bwd  = e (2HRN + 2HRP) + 12H + 4HS     (q, k, v, dy read)
             + e (2HRN + HRP) + 12H + 4HS      (dq, dk, dv, d scalars written)
  flops_fwd  = H R (2 C N + 2 C P + 4 N P)     (C = chunk rows); flops_bwd taken as 2 flops_fwd
  step: bytes = 2 B H P N 4 (fp32 state read + written) + inputs/outputs; flops = 6 B H R P N
Ceilings: measured H100 ~3.0 TB/s and ~798 TFLOP/s bf16 (override with --bw / --peak).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time

import torch

from diffmamba.bench.profiling import print_profile
from diffmamba.core.io import write_json
from diffmamba.ops import reference
from diffmamba.ops.state import Mamba3State

SHAPES = {
    # name: (B, T, H, N, P, S, R)
    "bt16k-h16": (8, 2048, 16, 128, 64, 32, None),  # the target training shape
    "bt16k-h32": (4, 4096, 32, 128, 64, 32, None),
    "bt64k-h32": (16, 4096, 32, 128, 64, 32, None),
    "b1-t8k-h32": (1, 8192, 32, 128, 64, 32, None),
    "mimo4-bt16k-h16": (8, 2048, 16, 128, 64, 32, 4),
    "cpu-tiny": (2, 256, 4, 32, 16, 8, None),
    "cpu-micro": (1, 32, 2, 32, 16, 4, None),  # harness checks under the Triton interpreter
    "cpu-micro-mimo": (1, 32, 2, 32, 16, 4, 2),
}
STEP_SHAPES = {"step-b1-h32": (1, 32, 128, 64, 32), "step-b128-h32": (128, 32, 128, 64, 32)}
OPS = ["fwd", "rev", "bi", "fwdbwd", "bibwd"]
# bwdparts: the Triton backward alone (scan_bwd.scan_backward on saved inputs, one direction),
# then its parts alone: the core kernels (core.core_backward), the pre-pass kernels forward and
# adjoint (prepass.prepass_forward / prepass_backward), and what is left of the whole (the glue:
# autograd on [B, T, H] tensors, the same-step block's products, casts).
EXTRA_OPS = ["bwdparts"]


def make(B, T, H, N, P, S, R, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    rk = () if R is None else (R,)
    q = (torch.randn(B, T, H, *rk, N, generator=g) + 1).to(device, dtype)
    k = (torch.randn(B, T, H, *rk, N, generator=g) + 1).to(device, dtype)
    v = torch.randn(B, T, H, *rk, P, generator=g).to(device, dtype)
    dt = (0.001 + 0.1 * torch.rand(B, T, H, generator=g)).to(device)
    a = (-dt.cpu() * (0.2 + 3 * torch.rand(B, T, H, generator=g))).to(device)
    lam = torch.sigmoid(torch.randn(B, T, H, generator=g)).to(device)
    dph = (dt.cpu()[..., None] * math.pi * torch.tanh(torch.randn(B, T, H, S, generator=g))).to(device)
    D = torch.randn(H, generator=g).to(device)
    return [q, k, v, a, dt, lam, dph, D]


def make_step(B, H, N, P, S, dtype, device, seed=0):
    """The inputs of one decode step: ``make``'s at T = 1 with the time axis dropped (D stays [H])."""
    return [x[:, 0] if i < 7 else x for i, x in enumerate(make(B, 1, H, N, P, S, None, dtype, device, seed))]


def time_ms(fn, device, warmup, rep):
    if device == "cuda":
        import triton.testing  # lazy: optional dependency (triton); the reference runs without it
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    t_end = time.perf_counter() + warmup / 1e3
    for _ in range(2):
        fn()
    while time.perf_counter() < t_end:
        fn()
    times = []
    for _ in range(max(3, int(rep // 50))):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def roofline(B, T, H, N, P, S, R, e, rows):
    r = R or 1
    tok = B * T
    io = e * (2 * H * r * N + 2 * H * r * P) + 12 * H + 4 * H * S
    fwd_bytes = tok * io
    bwd_bytes = tok * (io + e * (2 * H * r * N + H * r * P) + 12 * H + 4 * H * S)
    fwd_flops = tok * H * r * (2 * rows * N + 2 * rows * P + 4 * N * P)
    return fwd_bytes, bwd_bytes, fwd_flops


# Triton variants timed beside the default one: the switch each sets while it runs (the kernels
# read it at every call). split: the chunk-parallel forward; recompute: the recompute backward;
# bwd-ieee: IEEE fp32 instead of TF32 dots in the backward (timed for bf16 I/O).
VARIANT_ENV = {"triton-split": ("DIFFMAMBA_SCAN_FWD", "split"),
               "triton-recompute": ("DIFFMAMBA_SCAN_BWD", "recompute"),
               "triton-bwd-ieee": ("DIFFMAMBA_BWD_TF32", "0")}


@contextlib.contextmanager
def env(**values):
    """Set environment variables for the block (the kernels read their switches at every call)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _with_env(fn, name, value):
    def run():
        with env(**{name: value}):
            fn()
    return run


def scan_fn(impl, xs, reverse, chunk, backward, seed_grads=None):
    """A closure running one direction (or both for reverse=None) forward (and backward).

    impl: "triton", a key of VARIANT_ENV, or "reference"."""
    run = _scan_fn(impl, xs, reverse, chunk, backward, seed_grads)
    return _with_env(run, *VARIANT_ENV[impl]) if impl in VARIANT_ENV else run


def _scan_fn(impl, xs, reverse, chunk, backward, seed_grads):

    def one(rev, leaves):
        if impl.startswith("triton"):
            from diffmamba.kernels import mamba3_scan_triton  # lazy: optional dependency (triton); the reference runs without it
            return mamba3_scan_triton(*leaves, reverse=rev, chunk_size=chunk)[0]
        return reference.scan_chunked_ref(*leaves, reverse=rev, chunk_size=chunk)[0]

    dirs = [False, True] if reverse is None else [reverse]
    if not backward:
        def run():
            with torch.no_grad():
                for rev in dirs:
                    one(rev, xs)
        return run
    leaves = [x.detach().clone().requires_grad_() for x in xs]

    def run_bwd():
        for lf in leaves:
            lf.grad = None
        ys = [one(rev, leaves) for rev in dirs]
        torch.autograd.backward(ys, [seed_grads] * len(ys))
    return run_bwd


def bench_bwd_parts(name, xs, seed, args):
    """Time the Triton backward of one direction: whole, then its parts alone (``EXTRA_OPS``)."""
    from diffmamba.kernels import scan_bwd  # lazy: optional dependency (triton); the reference runs without it
    from diffmamba.kernels.core import chunk_rows, core_backward  # lazy: optional dependency (triton); the reference runs without it
    from diffmamba.kernels.prepass import phase_and_scales, prepass_backward, prepass_forward  # lazy: as above
    q, k, v, a, dt, lam, dph, D = xs
    rank_form = (lambda t: t.contiguous()) if q.dim() == 5 else (lambda t: t.unsqueeze(3).contiguous())  # noqa: E731
    q5, k5, v5, dy5 = (rank_form(t) for t in (q, k, v, seed))
    needs = (True,) * 8 + (False,) * 4
    chunk = args.chunk or 64 // q5.shape[3]
    whole = lambda: scan_bwd.scan_backward(q5, k5, v5, a, dt, lam, dph, D, None, dy5, None,  # noqa: E731
                                           reverse=False, chunk_size=chunk, needs=needs)
    qr, kp = q5.float(), k5.float()
    core = lambda: core_backward(qr, kp, v5, a, None, dy5, None, reverse=False,  # noqa: E731
                                 chunk=chunk_rows(chunk, q5.shape[3]))
    phase, gamma, _, scale = (t.contiguous() for t in phase_and_scales(dt, lam, dph, None, False))
    R = q5.shape[3]
    dc = torch.zeros(*q5.shape[:4], R, device=q.device, dtype=torch.float32)
    pre_fwd = lambda: prepass_forward(q5, k5, phase, scale)  # noqa: E731
    pre_bwd = lambda: prepass_backward(q5, k5, phase, scale, gamma, qr, kp, dc)  # noqa: E731
    out, ms_of = [], {}
    for part, fn in (("bwd (whole)", whole), ("bwd core", core), ("pre-pass fwd", pre_fwd), ("pre-pass bwd", pre_bwd)):
        ms_of[part] = ms = time_ms(fn, q.device.type, args.warmup, args.rep)
        out.append(dict(shape=name, op="bwdparts", impl=part, ms=ms))
        print(f"{name:18s} {'bwdpart':7s} {part:12s} {ms:9.3f} ms", flush=True)
    glue = ms_of["bwd (whole)"] - sum(ms for part, ms in ms_of.items() if part != "bwd (whole)")
    out.append(dict(shape=name, op="bwdparts", impl="glue (rest)", ms=glue))
    print(f"{name:18s} {'bwdpart':7s} {'glue (rest)':12s} {glue:9.3f} ms  (whole minus the three parts)", flush=True)
    if args.profile:
        print_profile(f"{name}: backward", whole, q.device.type)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="diffmamba bench kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=None,
                    help=f"scan shapes from {sorted(SHAPES)} (default: all GPU shapes, or cpu-tiny on CPU)")
    ap.add_argument("--step-shapes", nargs="*", default=None, help=f"decode shapes from {sorted(STEP_SHAPES)}")
    ap.add_argument("--ops", nargs="*", default=OPS + ["step"],
                    help=f"subset of {OPS + ['step'] + EXTRA_OPS} (bwdparts: GPU only)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--chunk", type=int, default=None,
                    help="chunk_size in time steps for both paths (default 64 // R: 64 rows, as mamba_ssm)")
    ap.add_argument("--warmup", type=float, default=25, help="warm-up, ms (do_bench)")
    ap.add_argument("--rep", type=float, default=100, help="timed repetition, ms (do_bench)")
    ap.add_argument("--no-reference", action="store_true", help="skip timing the PyTorch reference")
    ap.add_argument("--profile", action="store_true",
                    help="with --ops bwdparts: also print the backward's ops and kernels by self time (torch.profiler)")
    ap.add_argument("--interpreter", action="store_true",
                    help="CPU only: also run the Triton paths in the Triton interpreter (needs TRITON_INTERPRET=1 "
                         "before the import); checks the harness, its times say nothing about GPU speed")
    ap.add_argument("--bw", type=float, default=3.0e12, help="memory ceiling, bytes/s (measured H100: 3.0e12)")
    ap.add_argument("--peak", type=float, default=798e12, help="bf16 tensor ceiling, FLOP/s (measured H100: 798e12)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    e = 2 if dtype == torch.bfloat16 else 4
    import triton  # lazy: optional dependency (triton); the reference runs without it

    from diffmamba.kernels.configs import interpreting  # lazy: optional dependency (triton); the reference runs without it
    if args.interpreter and (cuda or not interpreting()):
        raise SystemExit("--interpreter needs a CPU-only run with TRITON_INTERPRET=1 set in the environment")
    cpu_label = ("cpu, Triton interpreter (harness check: times are not kernel speed)" if args.interpreter
                 else "cpu (no GPU: timing the PyTorch reference path only)")
    print(f"device: {torch.cuda.get_device_name() if cuda else cpu_label}")
    print(f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, dtype {args.dtype}, "
          f"chunk {args.chunk or '64 // R'} steps; ceilings {args.bw / 1e12:.2f} TB/s, {args.peak / 1e12:.0f} TFLOP/s")
    shapes = args.shapes or ([s for s in SHAPES if not s.startswith("cpu-")] if cuda else ["cpu-tiny"])
    impls = ["triton", "reference"] if cuda or args.interpreter else ["reference"]
    if args.no_reference and "triton" in impls:
        impls = ["triton"]
    rows_out = []

    def save():
        if args.json:
            write_json(args.json, dict(device=torch.cuda.get_device_name() if cuda else "cpu",
                                       torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                                       dtype=args.dtype, rows=rows_out), indent=1)

    header = f"{'shape':18s} {'op':7s} {'impl':16s} {'ms':>9s} {'GB/s':>7s} {'%BW':>5s} {'TFLOP/s':>8s} {'%peak':>6s}"
    print(header)
    for name in shapes:
        B, T, H, N, P, S, R = SHAPES[name]
        xs = make(B, T, H, N, P, S, R, dtype, device)
        chunk = args.chunk or max(1, 64 // (R or 1))
        rows = chunk * (R or 1)
        fb, bb, ff = roofline(B, T, H, N, P, S, R, e, rows)
        seed = torch.randn_like(xs[2])
        times = {}
        for op in [o for o in args.ops if o in OPS]:
            backward = op in ("fwdbwd", "bibwd")
            variants = ["triton-split"] if "triton" in impls else []
            if backward and "triton" in impls:
                variants += ["triton-recompute"] + (["triton-bwd-ieee"] if dtype != torch.float32 else [])
            for impl in impls + variants:
                rev = {"fwd": False, "rev": True, "bi": None, "fwdbwd": False, "bibwd": None}[op]
                fn = scan_fn(impl, xs, rev, chunk, backward, seed)
                ms = time_ms(fn, device, args.warmup, args.rep)
                ndir = 2 if rev is None else 1
                nbytes = ndir * (fb + (bb if backward else 0))
                nflops = ndir * ff * (3 if backward else 1)
                times[(op, impl)] = ms
                row = dict(shape=name, op=op, impl=impl, ms=ms, gbps=nbytes / ms / 1e6,
                           pct_bw=100 * nbytes / ms / 1e-3 / args.bw, tflops=nflops / ms / 1e9,
                           pct_peak=100 * nflops / ms / 1e-3 / args.peak)
                rows_out.append(row)
                print(f"{name:18s} {op:7s} {impl:16s} {ms:9.3f} {row['gbps']:7.0f} {row['pct_bw']:5.1f} "
                      f"{row['tflops']:8.2f} {row['pct_peak']:6.2f}", flush=True)
            if (op, "reference") in times and (op, "triton") in times:
                print(f"{'':18s} {op:7s} speed-up over reference: {times[(op, 'reference')] / times[(op, 'triton')]:.1f}x")
            if (op, "triton-split") in times:
                print(f"{'':18s} {op:7s} time with the split forward / with the fused forward: "
                      f"{times[(op, 'triton-split')] / times[(op, 'triton')]:.2f}")
            if (op, "triton-bwd-ieee") in times:
                print(f"{'':18s} {op:7s} time with IEEE backward dots / with TF32 ones: "
                      f"{times[(op, 'triton-bwd-ieee')] / times[(op, 'triton')]:.2f}")
            if (op, "triton-recompute") in times:
                print(f"{'':18s} {op:7s} time with the recompute backward / with the Triton backward: "
                      f"{times[(op, 'triton-recompute')] / times[(op, 'triton')]:.2f}")
        if "bwdparts" in args.ops and "triton" in impls:
            rows_out += bench_bwd_parts(name, xs, seed, args)
        for impl in impls:
            if ("bi", impl) in times and ("fwd", impl) in times:
                print(f"{name:18s} bidirectional/unidirectional forward ({impl}): {times[('bi', impl)] / times[('fwd', impl)]:.2f}")
            if ("bibwd", impl) in times and ("fwdbwd", impl) in times:
                print(f"{name:18s} bidirectional/unidirectional fwd+bwd ({impl}): {times[('bibwd', impl)] / times[('fwdbwd', impl)]:.2f}")
        del xs
        if cuda:
            torch.cuda.empty_cache()
        save()  # after every shape: a run cut off by a time limit keeps what it measured

    if "step" in args.ops:
        from diffmamba.kernels import mamba3_step_triton  # lazy: optional dependency (triton); the reference runs without it
        step_shapes = args.step_shapes or (list(STEP_SHAPES) if cuda else ["step-b1-h32"])
        for name in step_shapes:
            B, H, N, P, S = STEP_SHAPES[name]
            xs = make_step(B, H, N, P, S, dtype, device)
            state = Mamba3State.zeros(B, H, P, N, S, dtype=dtype, device=device)
            state = state._replace(ssm=torch.randn_like(state.ssm))
            floor_bytes = 2 * B * H * P * N * 4 + B * H * (e * (2 * N + 2 * P) + 12 + 4 * S)
            for impl in impls:
                if impl == "triton":
                    fn = lambda: mamba3_step_triton(*xs, state)  # noqa: E731  (in place, state stays valid)
                else:
                    fn = lambda: reference.scan_step_ref(*xs, state=state)  # noqa: E731
                with torch.no_grad():
                    ms = time_ms(fn, device, args.warmup, args.rep)
                floor_us = floor_bytes / args.bw * 1e6
                row = dict(shape=name, op="step", impl=impl, ms=ms, gbps=floor_bytes / ms / 1e6,
                           pct_bw=100 * floor_bytes / ms / 1e-3 / args.bw, floor_us=floor_us)
                rows_out.append(row)
                print(f"{name:18s} {'step':7s} {impl:16s} {ms * 1e3:8.1f}us {row['gbps']:7.0f} {row['pct_bw']:5.1f}"
                      f"   state-traffic floor {floor_us:.1f} us")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
