"""Fused Triton kernels for the Titans memory op (hope_math §2-3): the whole chunk loop of one layer in a few launches.

Entry points used by ops.titans.titans_memory: available() (Triton imports), unsupported(...) (None, or the one
sentence saying why these settings run on the chunked form instead), log_fallback(reason) (says it once per
process), titans_memory_triton(...) (same contract as titans_memory).
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os

_LOG = logging.getLogger("hope_megatron.ops")
# Kernel launches by kernel name, incremented at every launch (the launch-count benchmark reads and resets it).
LAUNCHES: collections.Counter = collections.Counter()
_SAID: set = set()


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Triton imports (a GPU build, or any build under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: no Triton here
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


MAX_CHUNK, MAX_WIDTH = 64, 256   # tile limits: chunk rows, memory MLP width r·d_h (d_h itself ≤ 128)


def unsupported(x, cfg, state, training):
    """None when the fused kernels cover this call, else one sentence naming the setting (then: chunked form)."""
    import torch

    if not available():
        return "Triton does not import here (pip install triton, or use --titans-impl chunked)"
    if not x.is_cuda and not interpreting():
        return "the kernels run on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1)"
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        return f"inputs of dtype {x.dtype} are not covered (fp32, bf16, fp16)"
    if x.dtype == torch.float64 and x.is_cuda:
        return "fp64 inputs run on the chunked form on a GPU (the kernels' fp64 path is for interpreter tests)"
    if cfg.inner_q:
        return "inner_q=True (M_q needs its own projection pass)"
    if cfg.read_after_update:
        return "read_after_update=True (the deltanet preset reads the post-update state, C = 1)"
    if cfg.projection_memories() and cfg.proj_chunk != cfg.mem_chunk:
        return f"C_proj={cfg.proj_chunk} differs from C_mem={cfg.mem_chunk} (the kernels fuse both grids)"
    if cfg.mem_chunk > MAX_CHUNK:
        return f"chunk size {cfg.mem_chunk} exceeds the kernels' {MAX_CHUNK}"
    d = x.shape[-1]
    if d > 128 or cfg.expansion * d > MAX_WIDTH:
        return f"head width {d} (x{cfg.expansion}) exceeds the kernels' tiles (d_h <= 128, r*d_h <= {MAX_WIDTH})"
    return None


def log_fallback(reason: str) -> None:
    if reason not in _SAID:
        _SAID.add(reason)
        _LOG.warning("titans_memory: impl='triton' runs the chunked form instead: %s.", reason)


def titans_memory_triton(x, q, params, cfg, static, state, return_state, training, stats):
    """titans_memory on the fused kernels (function.run); call only where unsupported(...) is None."""
    from .function import run

    return run(x, q, params, cfg, static, state, return_state, training, stats)


def checkpoint_every(num_chunks: int) -> int:
    """n_r: the backward keeps the boundary state of every n_r-th chunk and recomputes the rest (hope_math §2.8);
    ⌈√(chunks)⌉ balances the kept states against the per-segment recompute buffer."""
    return max(1, math.ceil(math.sqrt(max(num_chunks, 1))))


def saved_bytes(cfg, batch: int, heads: int, length: int, head_dim: int, input_bytes: int = 2,
                training: bool = True) -> int:
    """Bytes the fused kernels keep for the backward of one layer (local heads): the inputs x̃, q and static
    channels, the update-dropout keep-masks (1 byte each), and every n_r-th boundary state (fp32 W and momentum of
    every memory). The launchers' preflight (--dry-run) uses this for the memory op's share of the estimate."""
    d, rd = head_dim, cfg.expansion * head_dim
    tokens = batch * heads * length
    per_token = 2 * d * input_bytes                                                    # x̃, q
    per_token += sum(d if c in ("k", "v") else 1 for c in cfg.static_channels()) * input_bytes
    n_proj = len(cfg.projection_memories())
    if training and cfg.update_dropout > 0:
        per_token += n_proj * d                                                        # uint8 keep-masks
    chunks = -(-length // cfg.mem_chunk)
    kept = -(-chunks // checkpoint_every(chunks))                                   # S₀, S_{n_r}, S_{2n_r}, …
    mats = (2 if cfg.memory_depth == 2 else 1) * (2 if cfg.momentum else 1)
    state = len(cfg.memory_names()) * mats * d * (rd if cfg.memory_depth == 2 else d) * 4
    return tokens * per_token + kept * batch * heads * state
