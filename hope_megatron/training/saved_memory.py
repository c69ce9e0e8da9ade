"""What one Titans memory call keeps for its backward, measured (the preflight's chunked/naive figure, and
benchmarks/bench_saved_memory.py). Two measures of the same thing:

  hooks  the unique storages torch.autograd.graph.saved_tensors_hooks sees (ctx.save_for_backward and autograd's own
         saves), parameters excluded. It cannot see tensors a Function keeps otherwise: torch.utils.checkpoint keeps
         its non-tensor arguments (the chunk loop's lists of states, cfg.recompute_chunks) as plain Python objects.
  live   what stays allocated after the forward (glibc's in-use heap bytes on CPU, torch.cuda.memory_allocated on
         CUDA), less the output: everything the graph holds, whatever holds it. At the pilot's settings the two agree
         within ~3% without recompute (live 292.9 vs hooks 283.3 MiB at L 512, H 8); with recompute_chunks only live
         is right (199.0 vs 7.0 MiB).
"""

from __future__ import annotations

import ctypes
import gc
import math
from typing import Dict, Optional


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _heap_in_use() -> Optional[int]:
    """glibc's in-use bytes (heap chunks + mmapped blocks), or None where there is no mallinfo2."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    m = libc.mallinfo2()
    return int(m.uordblks + m.hblkhd)


def measure_saved_bytes(op_cfg, impl: str, batch: int, heads: int, length: int, head_dim: int, dtype,
                        training: bool = True, device: str = "cpu", seed: int = 0) -> Dict[str, object]:
    """{"hooks", "live", "fell_back"} for one titans_memory call as the Titans mixer makes it (x̃, q and static
    channels requiring grad, return_state=True; the returned state is dropped, as the mixer drops it)."""
    import torch

    from hope_megatron.ops import init_meta_params, titans_memory
    from hope_megatron.ops import triton as op_triton
    from hope_megatron.ops.memory_mlp import l2norm

    gen = torch.Generator().manual_seed(seed)
    params = {n: t.to(device).requires_grad_(True)
              for n, t in init_meta_params(heads, head_dim, op_cfg, generator=gen).items()}
    skip = {p.untyped_storage().data_ptr() for p in params.values()}
    shape = (batch, heads, length, head_dim)
    x = torch.nn.functional.silu(torch.randn(shape, generator=gen)).to(device, dtype).requires_grad_(True)
    q = l2norm(torch.randn(shape, generator=gen)).to(device, dtype).requires_grad_(True)
    static = {}
    for c in op_cfg.static_channels():
        s = shape if c in ("k", "v") else shape[:3]
        static[c] = torch.randn(s, generator=gen).to(device, dtype).requires_grad_(True)
    seen: Dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    cuda = str(device).startswith("cuda")

    def in_use():
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return _heap_in_use()

    before_launches = sum(op_triton.LAUNCHES.values())
    used0 = in_use()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, state = titans_memory(x, q, params, op_cfg, static=static or None, impl=impl, training=training,
                                 return_state=True)
    del state
    used1 = in_use()
    live = None if used0 is None or used1 is None else max(0, used1 - used0 - y.untyped_storage().nbytes())
    fell_back = impl == "triton" and sum(op_triton.LAUNCHES.values()) == before_launches
    return {"hooks": sum(seen.values()), "live": live, "fell_back": fell_back}


_MEASURED: Dict[tuple, tuple] = {}


def measured_op_bytes(op_cfg, impl: str, batch: int, heads: int, length: int, head_dim: int,
                      input_bytes: int = 2, training: bool = True) -> int:
    """Bytes the naive or chunked form keeps for its backward, from `live` (else `hooks`) measured on CPU at 1 and 2
    heads x 4 and 8 chunk lengths (lcm of the two chunk grids): the part that grows with heads, extrapolated linearly
    in tokens, times batch x heads. Differencing over heads drops what does not scale with them: autograd's graph
    nodes and other per-op host allocations, which on a GPU live in host memory."""
    import torch

    grid = op_cfg.mem_chunk * op_cfg.proj_chunk // math.gcd(op_cfg.mem_chunk, op_cfg.proj_chunk)
    dtype = {2: torch.bfloat16, 4: torch.float32}[input_bytes]
    key = (op_cfg, impl, head_dim, dtype, training)
    if key not in _MEASURED:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny shapes: one thread is fastest, and steady on a shared login node
        measure_saved_bytes(op_cfg, impl, 1, 1, grid, head_dim, dtype, training)  # warm-up: first-call allocations
        lengths = (4 * grid, 8 * grid)
        per_head = []
        for n in lengths:
            got = []
            for h in (1, 2):
                r = measure_saved_bytes(op_cfg, impl, 1, h, n, head_dim, dtype, training)
                got.append(r["live"] if r["live"] is not None else r["hooks"])
            per_head.append(got[1] - got[0])
        torch.set_num_threads(threads)
        slope = (per_head[1] - per_head[0]) / (lengths[1] - lengths[0])
        _MEASURED[key] = (per_head[0] - slope * lengths[0], slope)
    fixed, per_token = _MEASURED[key]
    return int(batch * heads * max(fixed + per_token * length, 0))
