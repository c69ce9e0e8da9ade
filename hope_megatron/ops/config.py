"""TitansOpConfig: every knob of the self-modifying Titans memory op, and the meta-learned initial weights.

hope_math.md §1 (defaults), §2.2 (memories and their init), §2.3 (readouts), §5.4 (ablation toggles).
The op is head-local: every parameter here has the head dimension first ([H_local, ...]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

PROJECTION_MEMORIES = ("k", "v", "eta", "alpha", "q")
IMPLS = ("auto", "triton", "chunked", "naive")  # execution forms of titans_memory (docs/ops.md)
STATIC_CHANNELS = ("k", "v", "eta", "alpha")


@dataclass(frozen=True)
class TitansOpConfig:
    chunk_size: int = 8                   # C_mem (hope_math §2.7)
    proj_chunk_size: Optional[int] = None  # C_proj; None means C_proj = C_mem
    self_mod: bool = True                 # False: Titans LMM with static k, v, η, α (§5.4)
    inner_k: bool = True
    inner_v: bool = True
    inner_q: bool = False
    memory_depth: int = 2                 # 2: residual MLP (§2.2); 1: linear memory M(z) = W z
    expansion: int = 1                    # r
    dgd: bool = True                      # λ_t = η_t (DGD, §2.5) or 0
    momentum: float = 0.9                 # β
    decay: bool = True                    # α_t from M_α / static logits, or α ≡ 1
    eta_max: float = 0.1
    eta_init: float = 0.01
    alpha_init: float = 0.999
    inner_clip: float = 0.3               # c_clip, Frobenius norm per chunk (§2.5); finite by default (§10 #17)
    update_dropout: float = 0.0           # p_ud on the residual branch of M_k, M_v, M_η, M_α (§2.3)
    read_after_update: bool = False       # deltanet preset: read the post-update state (§10 #15); needs C = 1
    zero_init: bool = False               # W⁰ = 0 for every memory (deltanet preset, §2.2)
    recompute_chunks: bool = False        # execution only: re-run each chunk in the backward (docs/ops.md)
    impl: str = "auto"                    # execution only: auto = triton on CUDA when it imports, else chunked

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"TitansOpConfig: {msg}")

        if not (isinstance(self.chunk_size, int) and self.chunk_size >= 1):
            bad(f"chunk_size={self.chunk_size!r} must be a positive int (C_mem, e.g. 8).")
        if self.proj_chunk_size is not None and not (isinstance(self.proj_chunk_size, int) and self.proj_chunk_size >= 1):
            bad(f"proj_chunk_size={self.proj_chunk_size!r} must be a positive int or None (None means = chunk_size).")
        if self.memory_depth not in (1, 2):
            bad(f"memory_depth={self.memory_depth!r} must be 1 (linear memory) or 2 (residual MLP, hope_math §2.2).")
        if not (isinstance(self.expansion, int) and self.expansion >= 1):
            bad(f"expansion={self.expansion!r} must be a positive int (the memory MLP width factor r).")
        if self.memory_depth == 1 and self.expansion != 1:
            bad(f"expansion={self.expansion} has no meaning for memory_depth=1; set expansion=1.")
        if not 0.0 <= self.momentum < 1.0:
            bad(f"momentum={self.momentum!r} must be in [0, 1) (β of hope_math §2.5; 0 turns momentum off).")
        if not self.eta_max > 0.0:
            bad(f"eta_max={self.eta_max!r} must be > 0.")
        if not 0.0 < self.eta_init < self.eta_max:
            bad(f"eta_init={self.eta_init!r} must lie in (0, eta_max={self.eta_max}) so its logit exists.")
        if self.decay and not 0.0 < self.alpha_init < 1.0:
            bad(f"alpha_init={self.alpha_init!r} must lie in (0, 1) when decay=True.")
        if not self.inner_clip > 0.0:
            bad(f"inner_clip={self.inner_clip!r} must be > 0 (use float('inf') for no clipping).")
        if not 0.0 <= self.update_dropout < 1.0:
            bad(f"update_dropout={self.update_dropout!r} must be in [0, 1).")
        if self.inner_q and not self.self_mod:
            bad("inner_q=True needs self_mod=True (M_q is a projection memory); set inner_q=False.")
        if self.impl not in IMPLS:
            bad(f"impl={self.impl!r} is unknown; use one of {', '.join(IMPLS)} (auto = triton on CUDA, else chunked).")
        if self.read_after_update and self.chunk_size != 1:
            bad(f"read_after_update=True needs chunk_size=1 (a post-update read inside a chunk of "
                f"{self.chunk_size} tokens would not be causal).")

    @property
    def mem_chunk(self) -> int:
        return self.chunk_size

    @property
    def proj_chunk(self) -> int:
        return self.proj_chunk_size if self.proj_chunk_size is not None else self.chunk_size

    def projection_memories(self) -> Tuple[str, ...]:
        """Projection memories on the C_proj grid (hope_math §2.3, §2.7), in a fixed order."""
        if not self.self_mod:
            return ()
        on = {"k": self.inner_k, "v": self.inner_v, "eta": True, "alpha": self.decay, "q": self.inner_q}
        return tuple(m for m in PROJECTION_MEMORIES if on[m])

    def memory_names(self) -> Tuple[str, ...]:
        return self.projection_memories() + ("mem",)

    def static_channels(self) -> Tuple[str, ...]:
        """Static inputs the op needs: the channels no projection memory produces (§2.1, §5.4)."""
        if not self.self_mod:
            return ("k", "v", "eta") + (("alpha",) if self.decay else ())
        return tuple(c for c, on in (("k", self.inner_k), ("v", self.inner_v)) if not on)


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def init_meta_params(num_heads: int, head_dim: int, cfg: TitansOpConfig, dtype=torch.float32,
                     generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """Meta-learned initial weights and readouts (hope_math §2.2, §2.3), head dimension first."""
    if num_heads < 1 or head_dim < 1:
        raise ValueError(f"init_meta_params: num_heads={num_heads} and head_dim={head_dim} must be positive.")
    H, d, rd = num_heads, head_dim, cfg.expansion * head_dim

    def normal(shape, fan_in):
        if cfg.zero_init:
            return torch.zeros(shape, dtype=dtype)
        w = torch.randn(shape, generator=generator, dtype=torch.float32) / math.sqrt(fan_in)
        return w.to(dtype)

    params: Dict[str, torch.Tensor] = {}
    for m in cfg.memory_names():
        if cfg.memory_depth == 2:
            params[f"{m}_w1"] = normal((H, d, rd), rd)   # W⁰_{□,1} ~ N(0, 1/(r d_h))
            params[f"{m}_w2"] = normal((H, rd, d), d)    # W⁰_{□,2} ~ N(0, 1/d_h)
        else:
            params[f"{m}_w"] = normal((H, d, d), d)
    names = cfg.memory_names()
    if "eta" in names:
        params["eta_readout"] = torch.zeros(H, d, dtype=dtype)
    params["eta_bias"] = torch.full((H,), _logit(cfg.eta_init / cfg.eta_max), dtype=dtype)
    if "alpha" in names:
        params["alpha_readout"] = torch.zeros(H, d, dtype=dtype)
    if cfg.decay:
        params["alpha_bias"] = torch.full((H,), _logit(cfg.alpha_init), dtype=dtype)
    return params


def weight_names(cfg: TitansOpConfig, memory: str) -> Tuple[str, ...]:
    """Parameter names of one memory's layers, in state order (W₁, W₂) or (W,)."""
    return (f"{memory}_w1", f"{memory}_w2") if cfg.memory_depth == 2 else (f"{memory}_w",)
