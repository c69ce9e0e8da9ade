"""Continuum Memory System: K Megatron MLP levels on the residual stream (hope_math.md §4.1, NL Eq 30, NL-arXiv Eq 73-74).

Sequential (default): for l = 1..K, x <- x + MLP_l(RMSNorm_l(x)); level 1 (the fastest, period P_1) is applied first.
Independent: x <- x + sum_l MLP_l(RMSNorm(x)) with one shared pre-norm. Each MLP_l is megatron's MLP (fc1 column-parallel,
fc2 row-parallel), so a level costs one TP collective. What makes the levels "continuum" is the optimizer: level l steps
every P_l iterations (hope_math §4.3, training/); `cms_level_of` names a parameter's level for those groups.

Parameter names: `...mlp.levels.{l}.mlp.linear_fc1.weight`, `...mlp.levels.{l}.pre_mlp_layernorm.weight` (checkpoint key
`...mlp.levels.{l}.mlp.linear_fc1.layer_norm_weight`, the Transformer Engine name, so local and TE checkpoints match).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Optional, Union

import torch
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.utils import sharded_state_dict_default
from megatron.core.utils import get_tensor_model_parallel_group_if_none
from megatron.core.dist_checkpointing.utils import apply_prefix_mapping

_LEVEL_RE = re.compile(r"(?:^|\.)mlp\.levels\.(\d+)\.")
NORM_KEY_MAP = {"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}


def cms_level_of(param_name: str) -> Optional[int]:
    """0-based CMS level of a parameter name (`...mlp.levels.{l}....`), or None for every other parameter
    (including the independent variant's shared pre-norm, which steps every iteration)."""
    m = _LEVEL_RE.search(param_name)
    return int(m.group(1)) if m else None


@dataclass
class CMSSubmodules:
    mlp: Union[ModuleSpec, type] = IdentityOp  # megatron MLP spec (fc1/fc2 from the backend)
    pre_mlp_layernorm: Union[ModuleSpec, type] = IdentityOp  # per-level norm (IdentityOp when fused into fc1)
    shared_layernorm: Union[ModuleSpec, type] = IdentityOp  # independent variant: the one shared pre-norm


def _level_config(config, width: int):
    """megatron 0.16.1's MLP sizes fc2's input from config.ffn_hidden_size (mlp.py), not its ffn_hidden_size
    argument, so a level of its own width F_l gets a shallow config copy with that width."""
    if width == config.ffn_hidden_size:
        return config
    cfg = copy.copy(config)
    cfg.ffn_hidden_size = width
    return cfg


class CMSLevel(MegatronModule):
    """One level: (optional) pre-norm + MLP. The residual add is done by CMSStack."""

    def __init__(self, config, submodules: CMSSubmodules, width: int, tp_group=None):
        super().__init__(config=config)
        self.tp_group = get_tensor_model_parallel_group_if_none(tp_group)
        cfg = _level_config(config, width)
        self.pre_mlp_layernorm = build_module(submodules.pre_mlp_layernorm, config=config,
                                              hidden_size=config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = build_module(submodules.mlp, config=cfg, ffn_hidden_size=width, tp_group=tp_group)

    def forward(self, hidden_states):
        return self.mlp(self.pre_mlp_layernorm(hidden_states))

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        sd = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        apply_prefix_mapping(sd, {f"{prefix}{k}": f"{prefix}{v}" for k, v in NORM_KEY_MAP.items()})
        return sd


class CMSStack(MegatronModule):
    """The K-level MLP stack of a HOPE layer: takes the residual stream [L, B, D], returns it updated."""

    def __init__(self, config, submodules: CMSSubmodules, tp_group=None):
        super().__init__(config=config)
        self.tp_group = get_tensor_model_parallel_group_if_none(tp_group)
        self.independent = config.cms_variant == "independent"
        self.hidden_dropout = config.hidden_dropout
        if self.independent:
            self.pre_mlp_layernorm = build_module(submodules.shared_layernorm, config=config,
                                                  hidden_size=config.hidden_size, eps=config.layernorm_epsilon)
        self.levels = torch.nn.ModuleList(
            [CMSLevel(config, submodules, w, tp_group=tp_group) for w in config.cms_widths()])

    def forward(self, hidden_states):
        bda = get_bias_dropout_add(self.training, self.config.bias_dropout_fusion)
        if self.independent:  # NL-arXiv Eq 74: one shared norm, plain sum of the levels
            normed = self.pre_mlp_layernorm(hidden_states)
            total, bias = None, None
            for level in self.levels:
                out, b = level.mlp(normed)
                total = out if total is None else total + out
                bias = b if bias is None else (bias + b if b is not None else bias)
            return bda((total, bias), hidden_states, self.hidden_dropout)
        for level in self.levels:  # NL Eq 30: level 1 (fastest) first
            hidden_states = bda(level(hidden_states), hidden_states, self.hidden_dropout)
        return hidden_states

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """megatron's default would treat the `levels` ModuleList as a plain (replicated) module, losing the TP
        sharding and the SwiGLU split of each level's MLP; recurse into every level instead."""
        sd = {}
        for name, module in self.named_children():
            if name == "levels":
                for i, level in enumerate(module):
                    sd.update(level.sharded_state_dict(f"{prefix}levels.{i}.", sharded_offsets, metadata))
            else:
                sd.update(sharded_state_dict_default(module, f"{prefix}{name}.", sharded_offsets, metadata,
                                                     tp_group=self.tp_group))
        return sd
