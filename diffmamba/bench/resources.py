"""Compile every scan kernel for a GPU architecture on this machine (no GPU needed) and report
what ptxas says of each: registers per thread, spilled bytes, shared memory, resident blocks.

    diffmamba bench resources                          # sm_90 (H100/H200), bf16 + fp32, bt16k-h16 + MIMO
    diffmamba bench resources --arch 80 --dtype bf16   # A100
    diffmamba bench resources --no-spills              # also fail if a kernel spills registers

The kernels are built through the real call path (diffmamba/kernels/aot.py): forward and backward in both
directions with and without an initial state, the fused forward with every autotune config, the
split forward, and the decode step with every config, unfused and fused (``DIFFMAMBA_STEP=fused``). A kernel that spills keeps values in
local memory (L1/L2 traffic the roofline does not count); one that does not fit cannot launch.
Exit status: 1 if any kernel fails to compile or does not fit (or spills, with --no-spills).
Timing needs a GPU: `diffmamba bench kernels` there.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import torch

from diffmamba.bench.kernels import SHAPES, STEP_SHAPES, env, make, make_step
from diffmamba.config import ModelConfig
from diffmamba.core.io import write_json
from diffmamba.modules.mamba3 import Mamba3Direction
from diffmamba.ops.state import Mamba3State

DEFAULT_SHAPES = ["bt16k-h16", "mimo4-bt16k-h16"]


def build_scan(shape: str, dtype: torch.dtype, chunk: int | None, quick: bool = False) -> None:
    """Launch (= compile, under aot.compile_only) every scan kernel a GPU run of this shape uses
    (quick: the default path of one direction without an initial state only)."""
    from diffmamba.kernels import mamba3_scan_triton  # lazy: optional dependency (triton)
    from diffmamba.kernels.autograd import scan_forward  # lazy: optional dependency (triton)
    from diffmamba.kernels.configs import SCAN_FWD_CONFIGS  # lazy: optional dependency (triton)

    B, T, H, N, P, S, R = SHAPES[shape]
    chunk = chunk or 64 // (R or 1)
    xs = make(B, T, H, N, P, S, R, dtype, "cpu")
    rk = (R,) if R else ()
    init = Mamba3State(torch.zeros(B, H, P, N), torch.zeros(B, H, *rk, N, dtype=dtype),
                       torch.zeros(B, H, *rk, P, dtype=dtype), torch.zeros(B, H, S))
    for mode in ("fused",) if quick else ("fused", "split"):
        for reverse in (False,) if quick else (False, True):
            for state in (None,) if quick else (None, init):
                leaves = [x.detach().requires_grad_() for x in xs]
                with env(DIFFMAMBA_SCAN_FWD=mode, DIFFMAMBA_SCAN_BWD="triton"):
                    y, _ = mamba3_scan_triton(*leaves, reverse=reverse, initial_state=state,
                                              return_final_state=True, chunk_size=chunk)
                    y.float().sum().backward()
    five = [x.unsqueeze(3) if x.dim() == 4 and i < 3 else x for i, x in enumerate(xs)]
    for cfg in [] if quick else SCAN_FWD_CONFIGS[1:]:  # the first one is the default launch above
        scan_forward(*(t.contiguous() for t in five), None, False, chunk, True, config=cfg)


def build_step(shape: str, dtype: torch.dtype, quick: bool = False) -> None:
    from diffmamba.kernels import mamba3_step_triton  # lazy: optional dependency (triton)
    from diffmamba.kernels.configs import STEP_CONFIGS  # lazy: optional dependency (triton)
    from diffmamba.kernels.scan_step import launch_step  # lazy: optional dependency (triton)

    B, H, N, P, S = STEP_SHAPES[shape]
    xs = make_step(B, H, N, P, S, dtype, "cpu")
    with torch.no_grad():
        mamba3_step_triton(*xs, None)
        q, k, v = (t.unsqueeze(2).contiguous() for t in xs[:3])
        rest = [t.contiguous() for t in xs[3:]]
        st = Mamba3State.zeros(B, H, P, N, S, R=1, dtype=dtype, device="cpu")
        kp, vp = st.k_prev.reshape(B, H, 1, N), st.v_prev.reshape(B, H, 1, P)
        for cfg in [] if quick else STEP_CONFIGS[1:]:
            launch_step(q, k, v, *rest, torch.empty_like(v), st.ssm, kp, vp, st.phase,
                        torch.empty_like(kp), torch.empty_like(vp), torch.empty_like(st.phase), config=cfg)
    build_fused_step(B, H, N, P, S, dtype)


def build_fused_step(B: int, H: int, N: int, P: int, S: int, dtype: torch.dtype) -> None:
    """The fused decode step (``DIFFMAMBA_STEP=fused``) of a SISO layer with these heads, through
    its real call path: a Mamba3Direction's parameters and a projection row's strided views."""
    from diffmamba.kernels import mamba3_step_fused  # lazy: optional dependency (triton)

    layer = Mamba3Direction(ModelConfig(vocab_size=8, d_model=H * P // 2, headdim=P, d_state=N,
                                        rope_fraction=2 * S / N))
    width = 2 * N + 3 * H + S
    z, x, proj = torch.randn(B, 2 * H * P + width).to(dtype).split([H * P, H * P, width], dim=-1)
    with torch.no_grad():
        mamba3_step_fused(proj, x, z, layer.step_params(), None, R=1, N=N, S=S)


# The meta-parameters worth a column (the rest are in the full listing of --verbose).
_SHOWN = ("R", "ROWS", "C", "BLOCK_P", "BP", "REVERSE", "BACKWARD", "HAS_INIT", "DOT")


def _meta(constexprs: dict) -> str:
    from diffmamba.kernels import scan_fwd  # lazy: optional dependency (triton)
    dots = {getattr(scan_fwd, name): name[4:].lower() for name in dir(scan_fwd) if name.startswith("DOT_")}
    short = {"REVERSE": "rev", "BACKWARD": "bwd", "HAS_INIT": "init"}
    parts = []
    for key in _SHOWN:
        if key in constexprs:
            val = constexprs[key]
            if key == "DOT":
                parts.append(dots[val])
            elif isinstance(val, bool):
                if val:
                    parts.append(short[key])
            else:
                parts.append(f"{key}={val}")
    return " ".join(parts)


def _ptxas_version() -> str:
    from triton import knobs  # lazy: optional dependency (triton)
    out = subprocess.run([knobs.nvidia.ptxas.path, "--version"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1] if out.strip() else "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="diffmamba bench resources", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, choices=[80, 90], help="compute capability (90: H100/H200)")
    ap.add_argument("--shapes", nargs="*", default=DEFAULT_SHAPES,
                    help=f"scan shapes from {sorted(SHAPES)} (kernels specialise on R, N, P, S and the chunk, not B or T)")
    ap.add_argument("--dtype", nargs="*", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    ap.add_argument("--chunk", type=int, default=None, help="chunk_size in time steps (default 64 // R)")
    ap.add_argument("--no-step", action="store_true", help="skip the decode-step kernel")
    ap.add_argument("--no-spills", action="store_true", help="exit 1 if any kernel spills registers")
    ap.add_argument("--quick", action="store_true",
                    help="only the default path: one direction, no initial state, first configs (what CI compiles)")
    ap.add_argument("--json", default=None, help="also write one row per kernel as JSON here")
    ap.add_argument("--verbose", action="store_true", help="print every constexpr of each kernel")
    args = ap.parse_args(argv)

    from diffmamba.kernels.configs import interpreting  # lazy: optional dependency (triton)
    if interpreting():
        raise SystemExit("diffmamba bench resources compiles real kernels: unset TRITON_INTERPRET and run again")
    import triton  # lazy: optional dependency (triton)

    from diffmamba.kernels import aot  # lazy: optional dependency (triton)

    print(f"target: sm_{args.arch} (compiled here, nothing launched); triton {triton.__version__}, "
          f"ptxas {_ptxas_version()}, torch {torch.__version__}")
    print(f"{'kernel':16s} {'meta':44s} {'warps':>5s} {'stg':>3s} {'regs':>4s} {'spill st/ld B':>13s} "
          f"{'smem KB':>7s} {'blk/SM':>6s}  status")
    failed = False
    rows: list[dict] = []
    for dname in args.dtype:
        dtype = torch.bfloat16 if dname == "bf16" else torch.float32
        jobs = [(f"scan {s}", lambda s=s: build_scan(s, dtype, args.chunk, args.quick)) for s in args.shapes]
        if not args.no_step:
            jobs.append(("step step-b128-h32", lambda: build_step("step-b128-h32", dtype, args.quick)))
        for label, job in jobs:
            print(f"-- {label}, {dname}")
            with aot.compile_only(args.arch) as built:
                try:
                    job()
                except Exception as exc:  # a compile error is the finding, not a crash of the report
                    print(f"   COMPILE FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                    rows.append(dict(job=label, dtype=dname, kernel=None, status="COMPILE FAILED"))
                    failed = True
            for k in built:
                r = aot.resources(k)
                status = "ok"
                if not r.fits:
                    status, failed = "DOES NOT FIT", True
                elif r.spill_stores or r.spill_loads:
                    status = "SPILLS"
                    failed = failed or args.no_spills
                print(f"{k.name.removesuffix('_impl').lstrip('_'):16s} {_meta(k.constexprs):44s} {k.num_warps:5d} "
                      f"{k.num_stages:3d} {r.registers:4d} {f'{r.spill_stores}/{r.spill_loads}':>13s} "
                      f"{r.shared / 1024:7.1f} {r.blocks_per_sm:6d}  {status}", flush=True)
                if args.verbose:
                    print(f"{'':16s} {k.constexprs}")
                rows.append(dict(job=label, dtype=dname, kernel=k.name, constexprs=k.constexprs,
                                 num_warps=k.num_warps, num_stages=k.num_stages, status=status,
                                 **dataclasses.asdict(r)))
    if args.json:
        write_json(args.json, dict(arch=args.arch, triton=triton.__version__, rows=rows), indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
