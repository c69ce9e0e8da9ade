"""HOPE for Hugging Face transformers: `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`.

Written next to the weights by checkpoints_convert/export_hf.py. It travels with the checkpoint, so it imports neither
megatron nor hope_megatron: the self-modifying Titans memory (hope_math.md §2–3) is written out again in plain torch
in memory_hope.py, which travels beside it, in the compact chunked form (closed-form advance of §3.4/§3.5, one
triangular solve per chunk); the layers below follow hope_megatron.inference (parameter names of megatron's GPTModel,
so model.safetensors loads unchanged).
tests/unit/eval/test_hf_export.py holds logits, streaming and greedy generation to hope_megatron.inference.

Generation: the streaming state (every memory's weights and momentum, the open chunk's pending k, v, η, α, conv
tails, attention KV caches) is this file's HopeCache, returned as `cache` and fed back by `generate` (transformers
>= 5.24 names it `cache`; `past_key_values` is accepted as an input too), so each new token costs one token's forward. Rows of a padded batch (attention_mask with zeros) run as
separate streams without their pad tokens, so left or right padding never enters a memory.

Packed documents (config.json `hope_reset_at_eod`, `eod_token_id`; hope_math §2.7): every token after an EOD begins a
document, where each memory layer restarts (meta-init state, fresh chunk grid, zero conv tail) while attention still
sees across documents. A memory layer then runs each row alone, cut at its document starts, as
hope_megatron.inference (ops/documents.py) does; HopeCache carries one memory state per row and whether each row's last
token was EOD (then the next call begins a document), so segmented calls and generate equal one whole call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_hope import HopeConfig
from .memory_hope import CONV_WIDTH, EPS, MemoryState, causal_conv, l2norm, memory_names, titans_memory


# ------------------------------------------------------------------------------------------------------- layers
def make_norm(cfg):
    if cfg.normalization == "RMSNorm":
        return nn.RMSNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)


class MLP(nn.Module):
    """fc2(act(fc1 x)); with a gated linear unit fc1 gives [gate; up] and act(gate) ⊙ up (hope_math §4.1)."""

    def __init__(self, cfg, width: int):
        super().__init__()
        self.glu, self.act = cfg.gated_linear_unit, {"silu": F.silu, "gelu": F.gelu}[cfg.activation]
        self.linear_fc1 = nn.Linear(cfg.hidden_size, width * (2 if self.glu else 1), bias=cfg.add_bias_linear)
        self.linear_fc2 = nn.Linear(width, cfg.hidden_size, bias=cfg.add_bias_linear)

    def forward(self, x):
        h = self.linear_fc1(x)
        if self.glu:
            gate, up = h.chunk(2, dim=-1)
            return self.linear_fc2(self.act(gate) * up)
        return self.linear_fc2(self.act(h))


class CMSLevel(nn.Module):
    def __init__(self, cfg, width: int, own_norm: bool):
        super().__init__()
        if own_norm:
            self.pre_mlp_layernorm = make_norm(cfg)
        self.mlp = MLP(cfg, width)


class CMS(nn.Module):
    """Continuum Memory System (§4.1): sequential x ← x + MLP_ℓ(norm_ℓ(x)), level 1 first; independent: one norm, sum."""

    def __init__(self, cfg):
        super().__init__()
        self.independent = cfg.cms_variant == "independent"
        if self.independent:
            self.pre_mlp_layernorm = make_norm(cfg)
        self.levels = nn.ModuleList([CMSLevel(cfg, w, not self.independent) for w in cfg.cms_widths])

    def forward(self, x):
        if self.independent:
            z = self.pre_mlp_layernorm(x)
            return x + sum(level.mlp(z) for level in self.levels)
        for level in self.levels:
            x = x + level.mlp(level.pre_mlp_layernorm(x))
        return x


class TitansMixer(nn.Module):
    """in_proj → conv + SiLU → q ℓ2norm → titans_memory → per-head RMSNorm ⊙ SiLU(g) → out_proj (hope_math §2). The
    in_proj layout [(name, width per head, convolved)] is read from config.json (in_proj_components), not assumed."""

    def __init__(self, cfg, letter: str):
        super().__init__()
        self.op = dict(cfg.op_configs[letter])
        self.heads, self.d = cfg.memory_heads, cfg.memory_head_dim
        self.components = [tuple(c) for c in cfg.in_proj_components[letter]]
        n_in = sum(w for _, w, _ in self.components) * self.heads
        n_conv = sum(w for _, w, conv in self.components if conv) * self.heads
        self.in_proj = nn.Linear(cfg.hidden_size, n_in, bias=False)
        self.conv_weight = nn.Parameter(torch.zeros(n_conv, CONV_WIDTH))
        r, names = int(self.op["expansion"]), memory_names(self.op)
        shapes = {}
        for m in names:
            if self.op["memory_depth"] == 2:
                shapes.update({f"{m}_w1": (self.heads, self.d, r * self.d), f"{m}_w2": (self.heads, r * self.d, self.d)})
            else:
                shapes[f"{m}_w"] = (self.heads, self.d, self.d)
        for m in ("eta", "alpha"):
            if m in names:
                shapes[f"{m}_readout"] = (self.heads, self.d)
        shapes["eta_bias"] = (self.heads,)
        if self.op["decay"]:
            shapes["alpha_bias"] = (self.heads,)
        self.meta = nn.ParameterDict({k: nn.Parameter(torch.zeros(s)) for k, s in shapes.items()})
        self.out_norm_weight = nn.Parameter(torch.ones(self.heads, self.d))
        self.out_proj = nn.Linear(self.heads * self.d, cfg.hidden_size, bias=cfg.add_bias_linear)

    def _heads(self, t):  # [B, L, H*w] -> [B, H, L, w]
        return t.reshape(t.shape[0], t.shape[1], self.heads, -1).permute(0, 2, 1, 3)

    def _mix(self, a, parts, state: Optional[MemoryState]):
        """conv + SiLU → q ℓ2norm → titans_memory on pre-conv inputs a [B, n, C] of one stream; y [B, H, n, d] and the
        stream's new state (the conv tail included)."""
        conv_names = [name for name, _, conv in self.components if conv]
        conv, tail = causal_conv(a, self.conv_weight, state.conv_tail if state is not None else None)
        conv = dict(zip(conv_names, F.silu(conv).split([w * self.heads for n, w, c in self.components if c], -1)))
        q = l2norm(self._heads(conv["q"]))
        x = self._heads(conv["x"]) if "x" in conv else q  # x̃ exists only when a projection memory reads it (§10 #18)
        static = {n: self._heads(conv[n]) if n in conv else self._heads(parts[n]).squeeze(-1)
                  for n, _, _ in self.components if n not in ("x", "q", "g")}
        y, state = titans_memory(x, q, static, dict(self.meta.items()), self.op, state)
        state.conv_tail = tail
        return y, state

    def _documents(self, a, parts, starts, states):
        """hope_reset_at_eod (hope_math §2.7): each row runs alone, cut at its document starts (starts [B, L] bool);
        a piece that begins a document starts from the meta-init with a zero conv tail (fresh chunk grid, no look-back),
        the row's first piece otherwise carries the row's state. states: None or one MemoryState (or None) per row;
        returns y [B, H, L, d] and the rows' new states."""
        bsz, length = starts.shape
        y = a.new_zeros(bsz, self.heads, length, self.d)
        new = list(states) if states is not None else [None] * bsz
        for b in range(bsz):
            bounds = [0] + [t for t in starts[b].nonzero().flatten().tolist() if t > 0] + [length]
            for s, e in zip(bounds[:-1], bounds[1:]):
                carried = None if bool(starts[b, s]) else new[b]
                y[b:b + 1, :, s:e], new[b] = self._mix(a[b:b + 1, s:e], {n: t[b:b + 1, s:e] for n, t in parts.items()},
                                                       carried)
        return y, new

    def forward(self, h, state, starts=None):
        """h [B, L, D]; state: a MemoryState, or under document starts (starts bool [B, L]) one per row."""
        parts = dict(zip([c[0] for c in self.components],
                         self.in_proj(h).split([w * self.heads for _, w, _ in self.components], dim=-1)))
        a = torch.cat([parts[name] for name, _, conv in self.components if conv], -1)
        if starts is None:
            y, state = self._mix(a, parts, state)
        elif h.shape[1] == 0:
            return h.new_zeros(h.shape), state
        else:
            y, state = self._documents(a, parts, starts, state)
        yf = y.float()
        yf = yf * torch.rsqrt(yf.pow(2).mean(-1, keepdim=True) + EPS) * self.out_norm_weight.float()[None, :, None]
        o = yf.to(y.dtype) * F.silu(self._heads(parts["g"]))
        return self.out_proj(o.permute(0, 2, 1, 3).reshape(h.shape[0], h.shape[1], -1)), state


class SelfAttention(nn.Module):
    """megatron SelfAttention: QKV grouped per query group [q_g | k_g | v_g], RoPE (non-interleaved), causal softmax,
    optional sliding window (W layers see the `window` tokens before them). State: (k, v, position) after RoPE."""

    def __init__(self, cfg, window: Optional[int]):
        super().__init__()
        self.np, self.ng, self.hn = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
        self.window, self.base = window, cfg.rotary_base
        self.linear_qkv = nn.Linear(cfg.hidden_size, (self.np + 2 * self.ng) * self.hn, bias=cfg.add_bias_linear)
        self.linear_proj = nn.Linear(self.np * self.hn, cfg.hidden_size, bias=cfg.add_bias_linear)

    def rope(self, t, pos):
        inv = 1.0 / (self.base ** (torch.arange(0, self.hn, 2, dtype=torch.float32, device=t.device) / self.hn))
        ang = torch.outer(pos.to(torch.float32), inv)
        ang = torch.cat((ang, ang), -1)[None, None]
        x1, x2 = t.chunk(2, dim=-1)
        return t * ang.cos().to(t.dtype) + torch.cat((-x2, x1), -1) * ang.sin().to(t.dtype)

    def forward(self, h, state):
        b, n, _ = h.shape
        start = 0 if state is None else state[2]
        per = self.np // self.ng
        qkv = self.linear_qkv(h).view(b, n, self.ng, (per + 2) * self.hn)
        q, k, v = qkv.split([per * self.hn, self.hn, self.hn], dim=-1)
        pos = torch.arange(start, start + n, device=h.device)
        q = self.rope(q.reshape(b, n, self.np, self.hn).transpose(1, 2), pos)
        k, v = self.rope(k.transpose(1, 2), pos), v.transpose(1, 2)
        if state is not None:
            k, v = torch.cat([state[0], k], 2), torch.cat([state[1], v], 2)
        kpos = torch.arange(start + n - k.shape[2], start + n, device=h.device)
        scores = q @ k.repeat_interleave(per, 1).mT / math.sqrt(self.hn)
        allowed = kpos[None, :] <= pos[:, None]
        if self.window is not None:
            allowed &= kpos[None, :] >= pos[:, None] - self.window
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")).float(), -1).to(q.dtype)
        out = (probs @ v.repeat_interleave(per, 1)).transpose(1, 2).reshape(b, n, -1)
        if self.window is not None:
            k, v = k[:, :, -self.window:], v[:, :, -self.window:]
        return self.linear_proj(out), (k, v, start + n)


class HopeLayer(nn.Module):
    """x + Mixer(norm(x)), then the CMS stack or one MLP (hope_math §5.1)."""

    def __init__(self, cfg, letter: str):
        super().__init__()
        self.input_layernorm = make_norm(cfg)
        self.self_attention = TitansMixer(cfg, letter) if letter in "HTD" else \
            SelfAttention(cfg, cfg.swa_window if letter == "W" else None)
        self.uses_cms = cfg.uses_cms
        if self.uses_cms:
            self.mlp = CMS(cfg)
        else:
            self.pre_mlp_layernorm = make_norm(cfg)
            self.mlp = MLP(cfg, cfg.ffn_hidden_size)

    def forward(self, x, state, starts=None):
        """starts: document starts for a memory mixer (hope_reset_at_eod); attention still sees across documents."""
        if isinstance(self.self_attention, TitansMixer):
            out, state = self.self_attention(self.input_layernorm(x), state, starts)
        else:
            out, state = self.self_attention(self.input_layernorm(x), state)
        x = x + out
        return (self.mlp(x) if self.uses_cms else x + self.mlp(self.pre_mlp_layernorm(x))), state


# ------------------------------------------------------------------------------------------------ transformers API
class HopeCache:
    """The streaming state `generate` carries: one entry per layer and the columns consumed (pads included). `rows`
    holds one HopeCache per batch row once a padded batch has been seen (rows then stream separately). Under
    hope_reset_at_eod a memory layer's entry holds one state per row (rows sit at different document positions) and
    `last_eod` [B] says whether each row's last consumed token was EOD (then the next call begins a document)."""
    is_croppable = False

    def __init__(self, layers=None, position: int = 0, rows=None, last_eod=None):
        self.layers, self.position, self.rows, self.last_eod = layers, position, rows, last_eod

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.position


@dataclass
class HopeCausalLMOutput(ModelOutput):
    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    cache: Optional[HopeCache] = None


class _Embedding(nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)


class _Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList([HopeLayer(cfg, c) for c in cfg.layer_letters])
        self.final_layernorm = make_norm(cfg)


class HopeForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = HopeConfig
    base_model_prefix = "decoder"
    main_input_name = "input_ids"
    _is_stateful = True  # a recurrent state cannot be rewound (no assisted generation)
    _no_split_modules = ["HopeLayer"]

    def __init__(self, config: HopeConfig):
        super().__init__(config)
        self.embedding = _Embedding(config.vocab_size, config.hidden_size)
        self.decoder = _Decoder(config)
        self.tied = bool(config.share_embeddings_and_output_weights)
        # hope_math §2.7: trained with --hope-reset-at-eod, every memory layer restarts after each EOD token
        self.reset_eod = bool(getattr(config, "hope_reset_at_eod", False))
        self.eod = getattr(config, "eod_token_id", None)
        if self.reset_eod and self.eod is None:
            raise ValueError("config.json sets hope_reset_at_eod but no eod_token_id; add the tokenizer's EOD id "
                             "(checkpoints_convert/convert_to_torch.py writes it).")
        if not self.tied:
            self.output_layer = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the state is HopeCache, built by forward, never a transformers DynamicCache

    def _init_weights(self, module):  # only for a model built from a config alone; from_pretrained loads every weight
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.embedding.word_embeddings

    def get_output_embeddings(self):
        return None if self.tied else self.output_layer

    def _document_starts(self, tokens, cache: Optional[HopeCache]):
        """(starts [B, L] bool, last_eod [B]) under hope_reset_at_eod: a document begins after each EOD token, and at
        position 0 when the previous call ended with one (a stream's first call starts afresh anyway)."""
        starts = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
        starts[:, 1:] = tokens[:, :-1] == self.eod
        before = cache.last_eod if cache is not None else None
        if before is not None:
            starts[:, 0] = before
        return starts, (tokens[:, -1] == self.eod if tokens.shape[1] else before)

    def _forward_tokens(self, tokens, cache: Optional[HopeCache]):
        x = self.embedding.word_embeddings(tokens)
        states = cache.layers if cache is not None else [None] * len(self.decoder.layers)
        starts, last_eod = self._document_starts(tokens, cache) if self.reset_eod else (None, None)
        new = []
        for layer, st in zip(self.decoder.layers, states):
            x, st = layer(x, st, starts)
            new.append(st)
        x = self.decoder.final_layernorm(x)
        w = self.embedding.word_embeddings.weight if self.tied else self.output_layer.weight
        return F.linear(x, w), HopeCache(new, (cache.position if cache is not None else 0) + tokens.shape[1],
                                         last_eod=last_eod)

    def forward(self, input_ids=None, attention_mask=None, cache=None, past_key_values=None, labels=None,
                use_cache=None, return_dict=None, **kwargs):
        if input_ids is None:
            raise ValueError("HopeForCausalLM needs input_ids (inputs_embeds are not supported).")
        cache = cache if cache is not None else past_key_values
        b, n = input_ids.shape
        mask = attention_mask[:, -n:].bool() if attention_mask is not None else None
        if (cache is not None and cache.rows is not None) or (mask is not None and not bool(mask.all())):
            # a padded batch: each row streams its real tokens only (pads never enter a memory or a KV cache)
            if cache is not None and cache.rows is None and b > 1:
                raise ValueError("this cache holds one state for the whole batch (it came from a call without "
                                 "padding), so a padded attention_mask cannot continue it row by row; pass the same "
                                 "attention_mask from the first call on.")
            rows = cache.rows if cache is not None and cache.rows is not None else \
                [cache if cache is not None and b == 1 else None for _ in range(b)]
            logits, new_rows = None, []
            for r in range(b):
                keep = mask[r] if mask is not None else torch.ones(n, dtype=torch.bool, device=input_ids.device)
                if bool(keep.any()):
                    lg, st = self._forward_tokens(input_ids[r:r + 1, keep], rows[r])
                    if logits is None:
                        logits = lg.new_zeros(b, n, lg.shape[-1])
                    logits[r, keep] = lg[0]
                else:
                    st = rows[r]
                new_rows.append(st)
            if logits is None:
                raise ValueError("attention_mask masks every token of the batch; nothing to run.")
            new_cache = HopeCache(None, (cache.position if cache is not None else 0) + n, new_rows)
        else:
            logits, new_cache = self._forward_tokens(input_ids, cache)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        keep_cache = new_cache if use_cache else None
        if return_dict is False:
            return tuple(t for t in (loss, logits, keep_cache) if t is not None)
        return HopeCausalLMOutput(loss=loss, logits=logits, cache=keep_cache)

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None, attention_mask=None,
                                      use_cache=True, **kwargs):
        cache = cache if cache is not None else past_key_values
        if cache is not None:  # only the columns the state has not consumed yet
            input_ids = input_ids[:, cache.position:]
        return {"input_ids": input_ids, "cache": cache, "attention_mask": attention_mask, "use_cache": use_cache}
