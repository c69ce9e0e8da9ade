"""HopeConfig: megatron's TransformerConfig plus every HOPE knob (hope_math.md §1, §4, §5), the single source of them.

The training CLI derives `--flag-names` from `hope_fields()` (type, default and `metadata["help"]`); YAML configs use
the same names with underscores. Variant presets (hope_math §5.2) live in `VARIANT_DEFAULTS`; build a config with
`HopeConfig.for_variant(variant, **overrides)` so a YAML file or the command line sets only what differs.
Validation happens at construction: one sentence per problem, naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from hope_megatron.ops import TitansOpConfig

VARIANTS = ("hope", "hope_attention", "titans", "transformer", "deltanet", "swa")
LETTERS = "HTDAW"  # H self-modifying Titans, T Titans LMM, D DeltaNet, A full attention, W sliding window (§5.2)
MEMORY_LETTERS = "HTD"
ATTENTION_LETTERS = "AW"
VARIANT_LETTER = {"hope": "H", "hope_attention": "A", "titans": "T", "transformer": "A", "deltanet": "D", "swa": "W"}
CMS_VARIANTS = ("hope", "hope_attention")  # variants whose MLP stack is the CMS (§5.2); the others use one MLP
SEED_CMS_PERIODS = (1, 4, 32, 128)  # hope_math §1 / §4.3: for K < 4 the first K periods

_SINGLE_MLP = {"cms_levels": 1}
# hope_math §5.2: what each variant changes from the field defaults (which are the `hope` variant's).
VARIANT_DEFAULTS: Dict[str, Dict[str, object]] = {
    "hope": {},
    "hope_attention": {},
    "titans": {**_SINGLE_MLP, "self_mod": False, "dgd": False},
    "transformer": dict(_SINGLE_MLP),
    "deltanet": {**_SINGLE_MLP, "memory_depth": 1, "titans_chunk_size": 1, "self_mod": False, "dgd": False,
                 "inner_decay": False, "inner_momentum": 0.0, "eta_max": 0.5, "read_after_update": True,
                 "memory_zero_init": True},
    "swa": dict(_SINGLE_MLP),
}
# A layer letter of a hybrid pattern that is not the variant's own letter takes these op settings (§5.2).
LETTER_OP_OVERRIDES: Dict[str, Dict[str, object]] = {
    "H": {"self_mod": True, "dgd": True},
    "T": {"self_mod": False, "dgd": False, "inner_q": False},
    "D": {"memory_depth": 1, "expansion": 1, "chunk_size": 1, "proj_chunk_size": None, "self_mod": False,
          "inner_q": False, "dgd": False, "decay": False, "momentum": 0.0, "eta_max": 0.5,
          "read_after_update": True, "zero_init": True},
}


def _h(text: str, **kw) -> dict:
    return {"help": text, "hope": True, **kw}


@dataclass
class HopeConfig(TransformerConfig):
    """TransformerConfig + HOPE. Field defaults are the `hope` variant at hope_math §1's values; Transformer++
    conventions (RMSNorm, SwiGLU, no linear biases, no dropout) replace megatron's GPT-2 defaults."""

    # Transformer++ defaults (megatron fields re-declared with new defaults).
    normalization: str = "RMSNorm"
    gated_linear_unit: bool = True
    activation_func: Callable = F.silu
    add_bias_linear: bool = False
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0

    hope_variant: str = field(default="hope", metadata=_h(
        f"model variant, one of {', '.join(VARIANTS)} (hope_math §5.2)."))
    layer_pattern: Optional[str] = field(default=None, metadata=_h(
        "one letter per layer, or a unit repeated to num_layers: H self-modifying Titans, T Titans LMM, D DeltaNet, "
        "A full attention, W sliding-window attention; default: the variant's letter for every layer."))
    memory_heads: Optional[int] = field(default=None, metadata=_h("memory heads H (default num_attention_heads)."))
    memory_head_dim: Optional[int] = field(default=None, metadata=_h(
        "memory head width d_h (default hidden_size / memory_heads)."))
    memory_expansion: int = field(default=1, metadata=_h("memory MLP expansion r (hope_math §2.2)."))
    memory_depth: int = field(default=2, metadata=_h("2: residual-MLP memories; 1: linear memories (hope_math §2.2)."))
    titans_chunk_size: int = field(default=8, metadata=_h(
        "C_mem, chunk size of M_mem (hope_math §2.7); 8/16/32 pilot/mid/target."))
    titans_proj_chunk_size: Optional[int] = field(default=None, metadata=_h(
        "C_proj, chunk size of the projection memories (default C_mem)."))
    inner_momentum: float = field(default=0.9, metadata=_h("inner momentum beta in [0, 1) (hope_math §2.5)."))
    dgd: bool = field(default=True, metadata=_h("delta gradient descent: lambda_t = eta_t (hope_math §2.5)."))
    inner_decay: bool = field(default=True, metadata=_h(
        "data-dependent retention alpha_t (off: alpha = 1, M_alpha dropped)."))
    self_mod: bool = field(default=True, metadata=_h(
        "self-modifying k, v, eta, alpha memories (off: static projections, §5.4)."))
    inner_k: bool = field(default=True, metadata=_h("keys from the memory M_k (off: static k channel)."))
    inner_v: bool = field(default=True, metadata=_h("values from the memory M_v (off: static v channel)."))
    inner_q: bool = field(default=False, metadata=_h("queries from a memory M_q (default: static q, NL-arXiv Eq 83)."))
    eta_max: float = field(default=0.1, metadata=_h("inner learning-rate ceiling eta_max (hope_math §2.3)."))
    eta_init: float = field(default=0.01, metadata=_h("initial inner learning rate eta (sets the bias b_eta)."))
    alpha_init: float = field(default=0.999, metadata=_h("initial retention alpha (sets the bias b_alpha)."))
    inner_clip: float = field(default=0.3, metadata=_h(
        "Frobenius clip of each chunk's memory change (the seed's 0.3; inf = off, which lets the self-generated "
        "targets diverge, hope_math §10 #17)."))
    update_dropout: float = field(default=0.0, metadata=_h(
        "dropout on the residual branch of M_k, M_v, M_eta, M_alpha (seed 0.2)."))
    read_after_update: bool = field(default=False, metadata=_h(
        "read the post-update memory (deltanet preset only; needs chunk 1)."))
    memory_zero_init: bool = field(default=False, metadata=_h("meta-initial memory weights W0 = 0 (deltanet preset)."))
    titans_recompute_chunks: bool = field(default=False, metadata=_h(
        "re-run each Titans chunk in the backward instead of keeping its activations: ~1/3 the op's memory, 1.2-1.4x its time."))
    hope_reset_at_eod: bool = field(default=False, metadata=_h(
        "packed documents do not share memory state: at every document start (the token after EOD) the Titans "
        "state returns to the meta-init, its chunk grid restarts and its conv does not look back (hope_math §2.7); "
        "attention layers (A, W) still see across documents."))
    titans_impl: str = field(default="auto", metadata=_h(
        "form of the Titans memory op: auto (triton on CUDA when Triton imports, else chunked), triton (fused GPU "
        "kernels; unsupported settings fall back to chunked with a log line), chunked, naive (token-loop reference).",
        choices=("auto", "triton", "chunked", "naive")))
    cms_levels: int = field(default=4, metadata=_h("CMS levels K (hope_math §4.1); 1 = one ordinary MLP."))
    cms_periods: Optional[List[int]] = field(default=None, metadata=_h(
        "update period of each CMS level in optimizer iterations (default: the first K of 1 4 32 128)."))
    cms_warmup: Optional[List[int]] = field(default=None, metadata=_h(
        "iterations each CMS level stays frozen (default 0 each)."))
    cms_variant: str = field(default="sequential", metadata=_h(
        "CMS composition: sequential (NL Eq 30) or independent (Eq 74)."))
    cms_hidden_sizes: Optional[List[int]] = field(default=None, metadata=_h(
        "MLP width F_l of each CMS level (default ffn_hidden_size for every level)."))
    swa_window: int = field(default=512, metadata=_h(
        "sliding-window attention: tokens before the current one it sees (W layers)."))

    # ------------------------------------------------------------------------------------------------ construction
    @classmethod
    def for_variant(cls, variant: str, **overrides) -> "HopeConfig":
        """The variant's preset (VARIANT_DEFAULTS), then `overrides` (e.g. the YAML keys and CLI flags given)."""
        if variant not in VARIANT_DEFAULTS:
            raise ValueError(f"hope_variant={variant!r} is not a known variant; choose one of {', '.join(VARIANTS)}.")
        return cls(hope_variant=variant, **{**VARIANT_DEFAULTS[variant], **overrides})

    def __post_init__(self):
        errors: List[str] = []
        if self.hope_variant not in VARIANTS:
            raise ValueError(f"hope_variant={self.hope_variant!r} is not a known variant; "
                             f"choose one of {', '.join(VARIANTS)}.")
        letters = self._check_pattern()
        if any(c == "W" for c in letters):  # megatron's per-layer sliding window (dot_product_attention.py:93)
            if not (isinstance(self.swa_window, int) and self.swa_window >= 1):
                raise ValueError(f"swa_window={self.swa_window!r} must be a positive int "
                                 f"(tokens a W layer looks back).")
            self.window_size = (self.swa_window, 0)
            self.window_attn_skip_freq = [1 if c == "W" else 0 for c in letters]
        if self.pipeline_dtype is None:  # megatron requires it under PP; the activations' dtype is the params'
            self.pipeline_dtype = self.params_dtype
        if len(set(letters)) > 1:
            self.hetereogenous_dist_checkpoint = True  # layers differ: one checkpoint key per layer, not a stack
        super().__post_init__()
        self._resolve_memory(letters, errors)
        self._resolve_cms(errors)
        if errors:
            raise ValueError(errors[0] if len(errors) == 1 else "HopeConfig has several problems: " + " ".join(errors))
        if any(c in MEMORY_LETTERS for c in letters):
            for letter in sorted(set(letters) & set(MEMORY_LETTERS)):
                try:  # TitansOpConfig validates the op knobs with its own sentences
                    self.to_op_config(letter)
                except ValueError as e:
                    raise ValueError(f"HopeConfig (memory layers '{letter}', variant {self.hope_variant}): {e} "
                                     f"The HopeConfig fields are titans_chunk_size, inner_momentum, inner_decay, "
                                     f"memory_expansion, memory_zero_init.") from None

    def _check_pattern(self) -> List[str]:
        if self.layer_pattern is None:
            return [VARIANT_LETTER[self.hope_variant]] * self.num_layers
        pat = self.layer_pattern
        if not isinstance(pat, str) or not pat:
            raise ValueError(f"layer_pattern={pat!r} must be a non-empty string of the letters {LETTERS}.")
        bad = sorted(set(pat) - set(LETTERS))
        if bad:
            raise ValueError(f"layer_pattern={pat!r} has letters {''.join(bad)!r}; use only {LETTERS} "
                             f"(H hope, T titans, D deltanet, A attention, W sliding window).")
        if self.num_layers % len(pat) != 0:
            raise ValueError(f"layer_pattern={pat!r} ({len(pat)} letters) does not tile num_layers={self.num_layers}; "
                             f"give one letter per layer or a unit whose length divides num_layers.")
        return list(pat * (self.num_layers // len(pat)))

    def _resolve_memory(self, letters, errors: List[str]) -> None:
        if self.memory_heads is None:
            self.memory_heads = self.num_attention_heads
        if not (isinstance(self.memory_heads, int) and self.memory_heads >= 1):
            errors.append(f"memory_heads={self.memory_heads!r} must be a positive int.")
            return
        if self.memory_head_dim is None:
            if self.hidden_size % self.memory_heads:
                errors.append(f"hidden_size={self.hidden_size} is not divisible by memory_heads={self.memory_heads}; "
                              f"set memory_head_dim explicitly or pick a divisor.")
                return
            self.memory_head_dim = self.hidden_size // self.memory_heads
        if not (isinstance(self.memory_head_dim, int) and self.memory_head_dim >= 1):
            errors.append(f"memory_head_dim={self.memory_head_dim!r} must be a positive int.")
        has_memory = any(c in MEMORY_LETTERS for c in letters)
        tp = self.tensor_model_parallel_size
        if has_memory and self.memory_heads % tp:
            errors.append(f"memory_heads={self.memory_heads} is not divisible by tensor_model_parallel_size={tp}; "
                          f"memories are split by heads, so pick a multiple of {tp}.")
        if has_memory and self.context_parallel_size > 1:
            errors.append("context_parallel_size > 1 is not supported with memory layers (H/T/D) yet; use 1.")
        if not (isinstance(self.titans_chunk_size, int) and self.titans_chunk_size >= 1):
            errors.append(f"titans_chunk_size={self.titans_chunk_size!r} must be a positive int (C_mem, e.g. 8).")
        if self.titans_proj_chunk_size is not None and not (
                isinstance(self.titans_proj_chunk_size, int) and self.titans_proj_chunk_size >= 1):
            errors.append(f"titans_proj_chunk_size={self.titans_proj_chunk_size!r} must be a positive int or None.")

    def _resolve_cms(self, errors: List[str]) -> None:
        k = self.cms_levels
        if not (isinstance(k, int) and k >= 1):
            errors.append(f"cms_levels={k!r} must be a positive int (1 = one ordinary MLP).")
            return
        if self.cms_periods is None:
            if k > len(SEED_CMS_PERIODS):
                errors.append(f"cms_levels={k} exceeds the {len(SEED_CMS_PERIODS)} seed periods; give cms_periods.")
                return
            self.cms_periods = list(SEED_CMS_PERIODS[:k])
        if self.cms_warmup is None:
            self.cms_warmup = [0] * k
        self.cms_periods, self.cms_warmup = list(self.cms_periods), list(self.cms_warmup)
        for name in ("cms_periods", "cms_warmup", "cms_hidden_sizes"):
            val = getattr(self, name)
            if val is not None and len(val) != k:
                errors.append(f"{name} has {len(val)} entries but cms_levels={k}; give one value per level.")
        if any(not isinstance(p, int) or p < 1 for p in self.cms_periods):
            errors.append(f"cms_periods={self.cms_periods} must be positive ints (iterations between updates).")
        if any(not isinstance(w, int) or w < 0 for w in self.cms_warmup):
            errors.append(f"cms_warmup={self.cms_warmup} must be non-negative ints.")
        if self.cms_hidden_sizes is not None:
            self.cms_hidden_sizes = list(self.cms_hidden_sizes)
            tp = self.tensor_model_parallel_size
            if any(not isinstance(f, int) or f < 1 or f % tp for f in self.cms_hidden_sizes):
                errors.append(f"cms_hidden_sizes={self.cms_hidden_sizes} must be positive ints divisible by "
                              f"tensor_model_parallel_size={tp}.")
        if self.cms_variant not in ("sequential", "independent"):
            errors.append(f"cms_variant={self.cms_variant!r} must be 'sequential' or 'independent'.")

    # ------------------------------------------------------------------------------------------------ derived views
    def layer_letters(self) -> List[str]:
        """One letter per global layer (the pattern tiled to num_layers)."""
        return self._check_pattern()

    @property
    def uses_cms(self) -> bool:
        """The MLP stack of every layer is the CMS (hope, hope_attention, or any variant with cms_levels > 1)."""
        return self.hope_variant in CMS_VARIANTS or self.cms_levels > 1

    def cms_widths(self) -> List[int]:
        if self.cms_hidden_sizes is not None:
            return list(self.cms_hidden_sizes)
        return [self.ffn_hidden_size] * self.cms_levels

    def has_attention(self) -> bool:
        return any(c in ATTENTION_LETTERS for c in self.layer_letters())

    def to_op_config(self, letter: Optional[str] = None) -> TitansOpConfig:
        """The TitansOpConfig of a memory layer (letter H/T/D; default the variant's own letter, whose settings are
        the fields as given; another letter of a hybrid pattern takes LETTER_OP_OVERRIDES on top)."""
        own = VARIANT_LETTER[self.hope_variant]
        letter = letter or (own if own in MEMORY_LETTERS else "H")
        if letter not in MEMORY_LETTERS:
            raise ValueError(f"to_op_config: letter {letter!r} is not a memory layer; use one of {MEMORY_LETTERS}.")
        kw = dict(chunk_size=self.titans_chunk_size, proj_chunk_size=self.titans_proj_chunk_size,
                  self_mod=self.self_mod, inner_k=self.inner_k, inner_v=self.inner_v, inner_q=self.inner_q,
                  memory_depth=self.memory_depth, expansion=self.memory_expansion, dgd=self.dgd,
                  momentum=self.inner_momentum, decay=self.inner_decay, eta_max=self.eta_max, eta_init=self.eta_init,
                  alpha_init=self.alpha_init, inner_clip=self.inner_clip, update_dropout=self.update_dropout,
                  read_after_update=self.read_after_update, zero_init=self.memory_zero_init,
                  recompute_chunks=self.titans_recompute_chunks, impl=self.titans_impl)
        if letter != own:
            kw.update(LETTER_OP_OVERRIDES[letter])
            if letter == "D" and kw["eta_init"] >= kw["eta_max"]:
                kw["eta_init"] = kw["eta_max"] / 2
        return TitansOpConfig(**kw)


def hope_fields() -> Tuple[dataclasses.Field, ...]:
    """The HOPE fields of HopeConfig (those carrying metadata["help"]), in declaration order, for CLI generation."""
    return tuple(f for f in dataclasses.fields(HopeConfig) if f.metadata.get("hope"))
