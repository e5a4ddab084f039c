"""Compile the kernels for a GPU architecture ahead of time, on a machine without a GPU.

Triton's compiler (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin, with the ptxas its wheel bundles) needs
no GPU; only loading and launching a cubin do. ``compile_only(arch)`` installs a driver stub that
names the target and turns every kernel launch into a compile, so the real call path (wrapper,
padding, autograd, backward driver, autotune key) decides which kernels are built, with the
specialisations and constexprs a GPU run would give them. ``resources`` then reads what ptxas
reports for each cubin: registers, spills, stack, and the shared memory Triton allocates.

This is what the CPU machines can say about the GPU build: that every kernel compiles for sm_90,
fits the SM's shared memory and register file, and whether ptxas had to spill. Timing still needs
the GPU (scripts/gpu_check.sh). Do not use it under TRITON_INTERPRET=1: the kernels are then
interpreter objects and nothing is compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile
from typing import Iterator

from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

from .configs import interpreting

# Per-SM limits of the targets we check (CUDA occupancy tables). Shared memory is the per-block
# opt-in maximum (Triton requests the dynamic size it needs up to this).
LIMITS = {
    90: dict(smem_per_block=232448, smem_per_sm=233472, regs_per_sm=65536, max_threads=2048),
    80: dict(smem_per_block=166912, smem_per_sm=167936, regs_per_sm=65536, max_threads=2048),
}


class _CompileOnlyDriver:
    """Just enough of a Triton driver for JITFunction.run to compile for ``target``."""

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_device(self):
        # only a cache key for JITFunction.device_caches: one per target, never a real device
        return f"aot-{self.target.backend}-{self.target.arch}"

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_benchmarker(self):
        raise RuntimeError("compile_only: nothing can be timed without a GPU")


@dataclasses.dataclass
class Built:
    """One compiled kernel: its name, the meta-parameters it was specialised on, its cubin."""

    name: str
    constexprs: dict
    num_warps: int
    num_stages: int
    shared: int  # bytes of dynamic shared memory Triton will request at launch
    ptx: str
    arch: int


@contextlib.contextmanager
def compile_only(arch: int = 90) -> Iterator[list[Built]]:
    """Within the block every Triton launch compiles for ``sm_<arch>`` and runs nothing.

    Yields the list the compiled kernels are appended to (once per distinct specialisation).
    Outputs of the "launched" kernels are left as allocated, so only shapes are meaningful.
    """
    if interpreting():
        raise RuntimeError("compile_only needs the compiled kernels: unset TRITON_INTERPRET before "
                           "diffmamba.kernels is imported")
    built: list[Built] = []
    seen: set[str] = set()
    original_run = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        if kernel.hash not in seen:
            seen.add(kernel.hash)
            md = kernel.metadata
            constexprs = {self.arg_names[path[0]]: value for path, value in kernel.src.constants.items()
                          if len(path) == 1 and self.params[path[0]].is_constexpr}
            built.append(Built(self.fn.__name__, constexprs, md.num_warps, md.num_stages, md.shared,
                               kernel.asm["ptx"], arch))
        return kernel

    driver.set_active(_CompileOnlyDriver(GPUTarget("cuda", arch, 32)))
    JITFunction.run = run
    try:
        yield built
    finally:
        JITFunction.run = original_run
        driver.set_active(None)  # back to lazy: the real driver (if any) on next use


@dataclasses.dataclass
class Resources:
    registers: int  # per thread
    spill_stores: int  # bytes per thread
    spill_loads: int
    stack: int  # bytes of stack frame per thread (spills live there)
    shared: int  # bytes per block
    blocks_per_sm: int  # resident blocks allowed by registers, shared memory and threads
    fits: bool  # launchable at all on this architecture


_PTXAS_PATTERNS = {
    "stack": r"(\d+) bytes stack frame",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
    "registers": r"Used (\d+) registers",
}


def resources(k: Built) -> Resources:
    """Run the bundled ptxas with -v on the kernel's PTX (the flags Triton uses) and read its report."""
    arch = f"sm_{k.arch}{'a' if k.arch >= 90 else ''}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(k.ptx)
        log = subprocess.run([knobs.nvidia.ptxas.path, "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}",
                              src, "-o", os.path.join(tmp, "k.cubin")],
                             check=True, capture_output=True, text=True).stderr
    got = {key: int(m.group(1)) if (m := re.search(pat, log)) else 0 for key, pat in _PTXAS_PATTERNS.items()}
    lim = LIMITS[k.arch]
    threads = 32 * k.num_warps
    # registers are allocated per warp in units of 256 (8 per thread)
    regs_per_warp = -(-max(got["registers"], 1) * 32 // 256) * 256
    by_regs = lim["regs_per_sm"] // (regs_per_warp * k.num_warps)
    by_smem = lim["smem_per_sm"] // (k.shared + 1024) if k.shared else 32  # 1 KB reserved per block
    by_threads = lim["max_threads"] // threads
    fits = k.shared <= lim["smem_per_block"] and by_regs >= 1
    return Resources(got["registers"], got["spill_stores"], got["spill_loads"], got["stack"], k.shared,
                     max(0, min(by_regs, by_smem, by_threads, 32)), fits)
