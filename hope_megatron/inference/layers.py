"""Plain PyTorch layers of the HOPE model (no megatron import): the same math as hope_megatron.layers, on [B, L, D].

Parameter names equal the TP=1/PP=1 megatron GPTModel's (design.md §3), so a converted state dict loads with
`load_state_dict(strict=True)`. Every layer takes an optional streaming state and returns its new state
(hope_math.md §7.2): the Titans mixer carries the op's TitansState and the conv tail, attention carries its KV cache.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hope_megatron.ops import TitansOpConfig, causal_conv1d, init_meta_params, titans_memory
from hope_megatron.ops.documents import titans_memory_documents

CONV_WIDTH = 4  # hope_math §2.1
EPS = 1e-6  # q ℓ2norm clamp and the per-head RMSNorm eps (hope_math §2.6)


def make_norm(cfg: dict) -> nn.Module:
    """megatron's local pre-norm: torch RMSNorm (or LayerNorm) over D with layernorm_epsilon."""
    if cfg["normalization"] == "RMSNorm":
        return nn.RMSNorm(cfg["hidden_size"], eps=cfg["layernorm_epsilon"])
    return nn.LayerNorm(cfg["hidden_size"], eps=cfg["layernorm_epsilon"])


def activation(name: str):
    return {"silu": F.silu, "gelu": F.gelu}[name]


class MLP(nn.Module):
    """megatron MLP: fc2(act(fc1 x)); with a gated linear unit fc1 gives [gate; up] and act(gate) * up (hope_math §4.1)."""

    def __init__(self, cfg: dict, width: int):
        super().__init__()
        self.glu, self.act = cfg["gated_linear_unit"], activation(cfg["activation"])
        bias = cfg["add_bias_linear"]
        self.linear_fc1 = nn.Linear(cfg["hidden_size"], width * (2 if self.glu else 1), bias=bias)
        self.linear_fc2 = nn.Linear(width, cfg["hidden_size"], bias=bias)

    def forward(self, x):
        h = self.linear_fc1(x)
        if self.glu:
            gate, up = torch.chunk(h, 2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.linear_fc2(h)


class CMSLevel(nn.Module):
    def __init__(self, cfg: dict, width: int, own_norm: bool):
        super().__init__()
        if own_norm:
            self.pre_mlp_layernorm = make_norm(cfg)
        self.mlp = MLP(cfg, width)


class CMSStack(nn.Module):
    """Continuum Memory System (hope_math §4.1): sequential x <- x + MLP_l(RMSNorm_l(x)), level 1 first (NL Eq 30);
    independent x <- x + sum_l MLP_l(RMSNorm(x)) (NL-arXiv Eq 74)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.independent = cfg["cms_variant"] == "independent"
        if self.independent:
            self.pre_mlp_layernorm = make_norm(cfg)
        self.levels = nn.ModuleList([CMSLevel(cfg, w, not self.independent) for w in cfg["cms_widths"]])

    def forward(self, x):
        if self.independent:
            normed = self.pre_mlp_layernorm(x)
            return x + sum(level.mlp(normed) for level in self.levels)
        for level in self.levels:
            x = x + level.mlp(level.pre_mlp_layernorm(x))
        return x


def in_proj_components(op_cfg: TitansOpConfig, d: int) -> List[Tuple[str, int, bool]]:
    """(name, width per head, convolved) of the fused in_proj in component order (hope_math §2.1, §6.1); x̃ only
    when a projection memory reads it (self_mod on, hope_math §10 #18), as in hope_megatron.layers.titans_mixer."""
    widths = {"k": (d, True), "v": (d, True), "eta": (1, False), "alpha": (1, False)}
    x = [("x", d, True)] if op_cfg.projection_memories() else []
    return x + [("q", d, True), ("g", d, False)] + [(c, *widths[c]) for c in op_cfg.static_channels()]


class TitansMixer(nn.Module):
    """Self-modifying Titans mixer on all heads (hope_math §2): in_proj, conv+SiLU, ops.titans_memory, per-head
    RMSNorm ⊙ SiLU(g), out_proj. State: (TitansState, conv tail [B, 3, C]); with document starts (hope_reset_at_eod,
    hope_math §2.7) (DocumentStates, conv tail): one state per row, since rows sit at different document positions."""

    def __init__(self, cfg: dict, op_cfg: TitansOpConfig):
        super().__init__()
        self.op_cfg = op_cfg
        self.heads, self.d = cfg["memory_heads"], cfg["memory_head_dim"]
        self.components = in_proj_components(op_cfg, self.d)
        self.conv_components = [c for c in self.components if c[2]]
        n_in = sum(w for _, w, _ in self.components) * self.heads
        n_conv = sum(w for _, w, _ in self.conv_components) * self.heads
        self.in_proj = nn.Linear(cfg["hidden_size"], n_in, bias=False)
        self.conv_weight = nn.Parameter(torch.zeros(n_conv, CONV_WIDTH))
        self.meta = nn.ParameterDict({n: nn.Parameter(t) for n, t in init_meta_params(self.heads, self.d,
                                                                                         op_cfg).items()})
        self.out_norm_weight = nn.Parameter(torch.ones(self.heads, self.d))
        self.out_proj = nn.Linear(self.heads * self.d, cfg["hidden_size"], bias=cfg["add_bias_linear"])

    def _heads(self, t):  # [B, L, H*w] -> [B, H, L, w]
        b, l = t.shape[:2]
        return t.reshape(b, l, self.heads, -1).permute(0, 2, 1, 3)

    def forward(self, h, state=None, starts=None):
        """h [B, L, D]; starts: None, or bool [B, L] document starts (ops.documents.document_starts)."""
        mem_state, tail = state if state is not None else (None, None)
        proj = self.in_proj(h)  # [B, L, N]
        parts = dict(zip([c[0] for c in self.components],
                         proj.split([w * self.heads for _, w, _ in self.components], dim=-1)))
        conv_names = [c[0] for c in self.conv_components]
        conv_out, tail = causal_conv1d(torch.cat([parts[n] for n in conv_names], dim=-1), self.conv_weight, tail,
                                       starts=starts)
        conv_out = F.silu(conv_out)
        convd = dict(zip(conv_names, conv_out.split(self.heads * self.d, dim=-1)))
        q = self._heads(convd["q"])
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(EPS)  # q = ℓ2norm(q̃) per head (§2.1)
        x = self._heads(convd["x"]) if "x" in convd else q  # self_mod off: the op never reads x (§10 #18)
        static = {n: self._heads(convd[n]) if n in ("k", "v") else self._heads(parts[n]).squeeze(-1)
                  for n in self.op_cfg.static_channels()}
        if starts is None:
            y, mem_state = titans_memory(x, q, dict(self.meta.items()), self.op_cfg, static=static or None,
                                         state=mem_state, return_state=True, training=False)
        else:
            y, mem_state = titans_memory_documents(x, q, dict(self.meta.items()), self.op_cfg, starts,
                                                   static=static or None, state=mem_state, return_state=True)
        yf = y.float()
        yf = yf * torch.rsqrt(yf.pow(2).mean(-1, keepdim=True) + EPS)  # per-head RMSNorm (§2.6)
        o = (yf * self.out_norm_weight.float()[None, :, None, :]).to(y.dtype) * F.silu(self._heads(parts["g"]))
        o = o.permute(0, 2, 1, 3).reshape(h.shape[0], h.shape[1], -1)
        return self.out_proj(o), (mem_state, tail)


def rotate_half(x):
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class SelfAttention(nn.Module):
    """megatron SelfAttention (local backend): fused QKV grouped per query group [q_g | k_g | v_g], RoPE on q and k
    (non-interleaved, rotary_percent 1), causal softmax(QKᵀ/√d) V, optional sliding window (W layers: a token sees
    the `window` tokens before it). State: KV cache (k, v) [B, G, T, d] after RoPE, window-bounded for W layers."""

    def __init__(self, cfg: dict, window: Optional[int]):
        super().__init__()
        self.np, self.ng = cfg["num_attention_heads"], cfg["num_query_groups"]
        self.hn, self.window, self.base = cfg["kv_channels"], window, cfg["rotary_base"]
        qkv = (self.np + 2 * self.ng) * self.hn
        self.linear_qkv = nn.Linear(cfg["hidden_size"], qkv, bias=cfg["add_bias_linear"])
        self.linear_proj = nn.Linear(self.np * self.hn, cfg["hidden_size"], bias=cfg["add_bias_linear"])

    def rope(self, t, positions):
        inv = 1.0 / (self.base ** (torch.arange(0, self.hn, 2, dtype=torch.float32) / self.hn))
        freqs = torch.outer(positions.to(torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)[None, None]  # [1, 1, L, d]
        return t * emb.cos().to(t.dtype) + rotate_half(t) * emb.sin().to(t.dtype)

    def forward(self, h, state=None):
        b, l, _ = h.shape
        start = 0 if state is None else state[2]
        mixed = self.linear_qkv(h).view(b, l, self.ng, (self.np // self.ng + 2) * self.hn)
        q, k, v = torch.split(mixed, [self.np // self.ng * self.hn, self.hn, self.hn], dim=-1)
        q = q.reshape(b, l, self.np, self.hn).transpose(1, 2)  # [B, np, L, d]
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, ng, L, d]
        pos = torch.arange(start, start + l, device=h.device)
        q, k = self.rope(q, pos), self.rope(k, pos)
        if state is not None:
            k, v = torch.cat([state[0], k], dim=2), torch.cat([state[1], v], dim=2)
        t = k.shape[2]
        kpos = torch.arange(start + l - t, start + l, device=h.device)
        rep = self.np // self.ng
        kk, vv = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ kk.transpose(-1, -2)) / math.sqrt(self.hn)
        allowed = kpos[None, :] <= pos[:, None]
        if self.window is not None:
            allowed &= kpos[None, :] >= pos[:, None] - self.window
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ vv
        out = out.transpose(1, 2).reshape(b, l, self.np * self.hn)
        if self.window is not None:  # a W layer needs only the last `window` keys
            k, v = k[:, :, -self.window:], v[:, :, -self.window:]
        return self.linear_proj(out), (k, v, start + l)


class HopeLayer(nn.Module):
    """Pre-norm residual (hope_math §5.1): x + Mixer(RMSNorm(x)), then the MLP stack (one MLP or the CMS)."""

    def __init__(self, cfg: dict, letter: str, op_configs: Dict[str, TitansOpConfig]):
        super().__init__()
        self.letter = letter
        self.input_layernorm = make_norm(cfg)
        if letter in "HTD":
            self.self_attention = TitansMixer(cfg, op_configs[letter])
        else:
            self.self_attention = SelfAttention(cfg, cfg["swa_window"] if letter == "W" else None)
        self.uses_cms = cfg["uses_cms"]
        if self.uses_cms:
            self.mlp = CMSStack(cfg)
        else:
            self.pre_mlp_layernorm = make_norm(cfg)
            self.mlp = MLP(cfg, cfg["ffn_hidden_size"])

    def forward(self, x, state=None, starts=None):
        """starts: document starts for memory mixers (hope_reset_at_eod); attention layers see across documents."""
        if self.letter in "HTD":
            out, state = self.self_attention(self.input_layernorm(x), state, starts)
        else:
            out, state = self.self_attention(self.input_layernorm(x), state)
        x = x + out
        x = self.mlp(x) if self.uses_cms else x + self.mlp(self.pre_mlp_layernorm(x))
        return x, state
