"""Compile the fused kernels for a GPU architecture without a GPU, and report what each needs (shared memory).

Triton's interpreter runs the kernels' arithmetic on CPU but cannot see a GPU's limits; a kernel that needs more
shared memory than the device has fails at its first launch. `python -m hope_megatron.ops.triton.compile_check`
compiles the pilot layer's forward and backward for sm_90 (ptxas ships with Triton) and prints their shared memory;
tests run it with TRITON_INTERPRET=0 (the interpreter replaces @triton.jit functions, so it cannot compile them).
"""

from __future__ import annotations

import argparse
import json

import torch

_INTS = ("L", "C", "H", "n_chunks", "n_writes", "NR", "NCK")
_FLOATS = ("eta_max", "clip", "inv_keep")
_IO = ("X", "Q", "Y", "DY", "DX", "DQ")


def pilot_spec(head_dim: int = 64, chunk: int = 8):
    """The pilot layer's configuration (hope_math §5.3): five memories, depth 2, every switch on, bf16 inputs."""
    from .function import _Spec

    return _Spec(B=1, H=1, L=64, D=head_dim, R=head_dim, C=chunk, G=5, depth=2, self_target=True, dgd=True,
                 beta=0.9, clip=0.3, dropout=True, inv_keep=1.25, idx_k=0, idx_v=1, idx_eta=2, idx_alpha=3,
                 has_lain=False, eta_max=0.1, n_chunks=8, n_writes=8, nr=3, nck=3, store_pending=True,
                 store_f=True, dtype=torch.float32, precision="tf32")


def compile_kernels(spec, arch: int = 90, io_dtype: str = "bf16") -> dict:
    """{kernel name: shared-memory bytes} of the forward and backward kernels compiled for sm_<arch>."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import kernels

    if not hasattr(kernels._titans_fwd_kernel, "cache_key"):
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset or 0 (the interpreter replaces the kernels).")
    consts = spec.constexprs(tl)
    out = {}
    for kernel, extra in ((kernels._titans_fwd_kernel, dict(SAVE_CK=True, STORE_PENDING=spec.store_pending,
                                                            STORE_F=spec.store_f)),
                          (kernels._titans_bwd_kernel, dict(HAS_GPEND=spec.store_pending))):
        values = {**consts, **extra}
        names = kernel.arg_names
        sig = {}
        for n in names:
            if n in values:
                sig[n] = "constexpr"
            elif n in _INTS:
                sig[n] = "i32"
            elif n in _FLOATS:
                sig[n] = "fp32"
            else:
                sig[n] = f"*{io_dtype}" if n in _IO else ("*u8" if n == "KEEP" else "*fp32")
        src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in values.items()})
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=spec.launch_options())
        out[kernel.__name__] = compiled.metadata.shared
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (80 A100, 90 H100/H200)")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=8)
    args = ap.parse_args(argv)
    print(json.dumps(compile_kernels(pilot_spec(args.head_dim, args.chunk), args.arch)))


if __name__ == "__main__":
    main()
