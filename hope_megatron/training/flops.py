"""Model FLOPs per iteration, by layer family, for throughput and MFU (forward + backward = 3 x forward).

Counts are multiply-accumulates x 2 per token, Megatron's convention (causal attention counted as full, no
recompute). Families: attention (QKV/out projections + scores), memory (the Titans mixer: in/out projections and
the per-head memory reads and updates of hope_math §3.7), mlp (the transformer's MLP), cms (each CMS level: its
forward and backward run every iteration; only the optimizer step is gated), logits.
For the transformer variant the total equals Megatron's 72·B·s·L·h²·(1 + s/(6h) + V/(12·L·h)).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

# hope_math §3.7, multiply-accumulates per memory, token and head, in units of r·d_h²: advance 4 (8 with momentum)
# + 7 for the three boundary MLP evaluations and W₁ᵀe.
MEMORY_ADVANCE_MACS = 4
MEMORY_ADVANCE_MACS_MOMENTUM = 8
MEMORY_READ_MACS = 7
ATTENTION_MIXERS = ("transformer", "hope_attention", "swa")
# Dense BF16 peak FLOP/s per device by name fragment (vendor datasheets; SXM parts), for MFU without --peak-flops.
# First match wins, so the more specific names come first.
KNOWN_PEAKS = (("GH200", 989e12), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12),
               ("B200", 2250e12), ("B100", 1750e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
               ("A10G", 70e12), ("L4", 121e12), ("V100", 125e12))


def peak_flops(given: Optional[float], device_name: Optional[str]) -> Optional[float]:
    """The MFU denominator: --peak-flops when given, else the known BF16 dense peak of the device, else None (CPU or
    an unknown accelerator: no MFU is reported rather than one measured against another device's peak)."""
    if given:
        return float(given)
    if device_name:
        for fragment, value in KNOWN_PEAKS:
            if fragment in device_name:
                return value
    return None


@dataclasses.dataclass
class MixerShape:
    """One layer's mixer: attention (optionally windowed) or a Titans memory with its own op settings."""
    kind: str = "memory"  # "attention" | "memory"
    window: Optional[int] = None
    num_memories: int = 5
    momentum: bool = True
    memory_depth: int = 2  # 1: one d_h x d_h matrix per memory instead of two (hope_math §2.2)
    static_vector_channels: int = 0  # k̃, ṽ in_proj channels when those memories are off (hope_math §2.1)
    static_scalar_channels: int = 0  # η̃, α̃ logits per head when M_η / M_α are off
    x_channel: bool = True  # x̃ in in_proj: only when a projection memory reads it (self_mod on, hope_math §10 #18)


@dataclasses.dataclass
class FlopsShape:
    num_layers: int
    hidden_size: int
    seq_length: int
    vocab_size: int
    ffn_hidden_size: int
    num_attention_heads: int = 1
    kv_channels: Optional[int] = None
    num_query_groups: Optional[int] = None
    swiglu: bool = False
    variant: str = "transformer"
    window: Optional[int] = None  # sliding-window attention
    memory_heads: Optional[int] = None
    memory_head_dim: Optional[int] = None
    memory_expansion: int = 1
    num_memories: int = 5  # k, v, eta, alpha, mem (1 without self-modification)
    momentum: bool = True
    static_vector_channels: int = 0  # k̃, ṽ channels of in_proj, only for memories that are off (hope_math §2.1)
    static_scalar_channels: int = 0  # eta, alpha logits per head, likewise
    cms_hidden_sizes: Optional[List[int]] = None  # one per CMS level; None: no CMS levels (plain MLP)
    mixers: Optional[List[MixerShape]] = None  # per layer (hybrid patterns); None: every layer is `variant`'s mixer


def from_args(args, config, vocab_size: int) -> FlopsShape:
    """The shape of the configured model (HopeConfig fields where present)."""
    variant = getattr(config, "hope_variant", "transformer")
    uses_cms = getattr(config, "uses_cms", variant != "transformer")  # titans/deltanet/swa: one plain MLP
    levels = int(getattr(config, "cms_levels", 0) or 0) if uses_cms else 0
    ffn = config.ffn_hidden_size
    cms = None
    if levels:
        cms = list(getattr(config, "cms_hidden_sizes", None) or [ffn] * levels)[:levels]
    heads = getattr(config, "memory_heads", None) or config.num_attention_heads
    self_mod = bool(getattr(config, "self_mod", True))
    mixers = [_mixer_of(config, letter) for letter in config.layer_letters()] if hasattr(config, "layer_letters") \
        else None
    return FlopsShape(mixers=mixers,
        num_layers=config.num_layers, hidden_size=config.hidden_size, seq_length=args.seq_length,
        vocab_size=vocab_size, ffn_hidden_size=ffn, num_attention_heads=config.num_attention_heads,
        kv_channels=config.kv_channels, num_query_groups=config.num_query_groups, swiglu=bool(config.gated_linear_unit),
        variant=variant, window=getattr(config, "swa_window", None), memory_heads=heads,
        memory_head_dim=getattr(config, "memory_head_dim", None) or config.hidden_size // heads,
        memory_expansion=int(getattr(config, "memory_expansion", 1) or 1),
        num_memories=(5 if self_mod else 1) + int(bool(getattr(config, "inner_q", False))),
        momentum=bool(getattr(config, "inner_momentum", 0.9)), cms_hidden_sizes=cms)


def _mixer_of(config, letter: str) -> MixerShape:
    """The mixer of one layer letter (H/T/D memory, A/W attention) with the op settings the model builds it with."""
    if letter in "AW":
        return MixerShape(kind="attention", window=getattr(config, "swa_window", None) if letter == "W" else None)
    op = config.to_op_config(letter)
    static = op.static_channels()
    return MixerShape(kind="memory", num_memories=len(op.memory_names()), momentum=bool(op.momentum),
                      memory_depth=op.memory_depth, x_channel=bool(op.projection_memories()),
                      static_vector_channels=sum(c in ("k", "v") for c in static),
                      static_scalar_channels=sum(c in ("eta", "alpha") for c in static))


def _mlp(shape: FlopsShape, width: int) -> float:
    return 2.0 * (3 if shape.swiglu else 2) * shape.hidden_size * width


def _attention(shape: FlopsShape, window: Optional[int] = None) -> float:
    h, s = shape.hidden_size, shape.seq_length
    d = shape.kv_channels or h // shape.num_attention_heads
    q = shape.num_attention_heads * d
    kv = (shape.num_query_groups or shape.num_attention_heads) * d
    ctx = min(s, window) if window else s
    return 2.0 * h * (q + 2 * kv) + 2.0 * q * h + 2.0 * 2 * ctx * q


def _memory(shape: FlopsShape, m: MixerShape) -> float:
    """Titans mixer per token: fused in_proj [x̃ | q | g | static k̃, ṽ | η̃, α̃] (hope_math §2.1, §2.9; x̃ only with
    self-modification, §10 #18), out_proj, and per head the memory reads and updates of hope_math §3.7 (two matrices
    per memory; one for a linear memory)."""
    h = shape.hidden_size
    H, dh = shape.memory_heads or shape.num_attention_heads, shape.memory_head_dim or h // shape.num_attention_heads
    inner = H * dh
    in_ch = inner * (2 + int(m.x_channel) + m.static_vector_channels) + H * m.static_scalar_channels
    proj = 2.0 * h * in_ch + 2.0 * inner * h  # in_proj (incl. the gate g), out_proj
    adv = MEMORY_ADVANCE_MACS_MOMENTUM if m.momentum else MEMORY_ADVANCE_MACS
    depth = m.memory_depth / 2.0
    mem = 2.0 * m.num_memories * (adv + MEMORY_READ_MACS) * depth * shape.memory_expansion * dh * dh * H
    return proj + mem


def _default_mixer(shape: FlopsShape) -> MixerShape:
    if shape.variant in ATTENTION_MIXERS:
        return MixerShape(kind="attention", window=shape.window)
    return MixerShape(kind="memory", num_memories=shape.num_memories, momentum=shape.momentum,
                      x_channel=shape.num_memories > 1, static_vector_channels=shape.static_vector_channels,
                      static_scalar_channels=shape.static_scalar_channels)


def forward_flops_per_token(shape: FlopsShape) -> Dict[str, float]:
    """Forward FLOPs per token by family (summed over layers)."""
    L = shape.num_layers
    out = {"attention": 0.0, "memory": 0.0, "mlp": 0.0, "cms": 0.0, "logits": 2.0 * shape.hidden_size * shape.vocab_size}
    for m in shape.mixers or [_default_mixer(shape)] * L:
        if m.kind == "attention":
            out["attention"] += _attention(shape, m.window)
        else:
            out["memory"] += _memory(shape, m)
    if shape.cms_hidden_sizes:
        out["cms"] = L * sum(_mlp(shape, f) for f in shape.cms_hidden_sizes)
    else:
        out["mlp"] = L * _mlp(shape, shape.ffn_hidden_size)
    return out


def flops_per_iteration(shape: FlopsShape, global_batch_size: int) -> Dict[str, float]:
    """Forward + backward FLOPs of one iteration by family, plus "total"."""
    tokens = global_batch_size * shape.seq_length
    fam = {k: 3.0 * v * tokens for k, v in forward_flops_per_token(shape).items()}
    fam["total"] = sum(fam.values())
    return fam


def megatron_gpt_flops(batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """Megatron-LM's formula for a GPT with 4h MLP, no recompute (Narayanan et al. 2021, Eq 3 with 3x forward)."""
    return 72.0 * batch * seq * layers * hidden ** 2 * (1 + seq / (6.0 * hidden) + vocab / (12.0 * layers * hidden))


def format_breakdown(fam: Dict[str, float]) -> str:
    total = fam["total"] or 1.0
    parts = [f"{k} {v / 1e9:.3f} GFLOP ({100 * v / total:.1f}%)" for k, v in fam.items() if k != "total" and v]
    return f"model FLOPs per iteration: {fam['total'] / 1e9:.3f} GFLOP = " + ", ".join(parts)
