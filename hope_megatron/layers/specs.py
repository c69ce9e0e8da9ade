"""Layer specs for every layer letter, from ONE function taking a backend provider (megatron_core_notes.md §5.3).

Backends: LocalBackend (megatron's LocalSpecProvider with layers/norms.py's torch norm, which also runs under sequence
parallelism; CPU, tests) or TESpecProvider (Transformer Engine: fused norm+linear, BF16/FP8 GEMMs,
TEDotProductAttention), imported only when asked for. With TE the pre-norms live inside
the following column-parallel linear (`layer_norm_weight`); `sharded_state_dict_keys_map` renames the local build's
stand-alone norms to those TE names, so checkpoints are interchangeable between the two backends.

Letters (hope_math §5.2): H/T/D -> TitansMixer with that letter's op settings; A -> SelfAttention; W -> SelfAttention
with megatron's per-layer sliding window (config.window_size / window_attn_skip_freq, set by HopeConfig). The MLP
stack is a CMSStack for CMS variants, otherwise one MLP.
"""

from __future__ import annotations

from typing import List, Optional

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.backends import BackendSpecProvider
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules, get_transformer_layer_offset

from hope_megatron.config import ATTENTION_LETTERS, MEMORY_LETTERS
from hope_megatron.layers.cms import CMSStack, CMSSubmodules
from hope_megatron.layers.hope_layer import HopeLayer
from hope_megatron.layers.norms import LocalBackend
from hope_megatron.layers.titans_mixer import TitansMixer, TitansMixerSubmodules

TRANSFORMER_IMPLS = ("local", "transformer_engine")


def get_backend(transformer_impl: str = "local") -> BackendSpecProvider:
    """LocalBackend for "local"; TESpecProvider for "transformer_engine" (needs TE installed)."""
    if transformer_impl == "local":
        return LocalBackend()
    if transformer_impl == "transformer_engine":
        from megatron.core.extensions import transformer_engine as te_ext

        if not te_ext.HAVE_TE:
            raise ImportError("transformer_impl='transformer_engine' needs Transformer Engine; install the [gpu] extra "
                              "on a CUDA machine or use transformer_impl='local'.")
        from megatron.core.extensions.transformer_engine_spec_provider import TESpecProvider

        return TESpecProvider()
    raise ValueError(f"transformer_impl={transformer_impl!r} must be one of {', '.join(TRANSFORMER_IMPLS)}.")


def _norm(backend: BackendSpecProvider):
    return backend.layer_norm(rms_norm=True, for_qk=False)


def _fc1_with_norm(backend: BackendSpecProvider):
    """(pre-norm slot, column-parallel linear reading the residual stream): fused with TE, separate locally."""
    if backend.fuse_layernorm_and_linear():
        return IdentityOp, backend.column_parallel_layer_norm_linear()
    return _norm(backend), backend.column_parallel_linear()


def _mlp_spec(backend, linear_fc1) -> ModuleSpec:
    return ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=linear_fc1,
                                                           linear_fc2=backend.row_parallel_linear()))


def get_layer_spec(letter: str, config, backend: BackendSpecProvider) -> ModuleSpec:
    """The HopeLayer spec of one layer letter under `backend`."""
    in_norm, in_linear = _fc1_with_norm(backend)
    if letter in MEMORY_LETTERS:
        mixer = ModuleSpec(module=TitansMixer, params={"letter": letter},
                           submodules=TitansMixerSubmodules(in_proj=in_linear, out_proj=backend.row_parallel_linear()))
        keys_map = {"input_layernorm.": "self_attention.in_proj.layer_norm_"}
    elif letter in ATTENTION_LETTERS:
        mixer = ModuleSpec(module=SelfAttention, params={"attn_mask_type": AttnMaskType.causal},
                           submodules=SelfAttentionSubmodules(
                               linear_qkv=in_linear, core_attention=backend.core_attention(),
                               linear_proj=backend.row_parallel_linear(), q_layernorm=IdentityOp,
                               k_layernorm=IdentityOp))
        keys_map = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_"}
    else:
        raise ValueError(f"layer letter {letter!r} is not one of {MEMORY_LETTERS + ATTENTION_LETTERS}.")
    mlp_norm, fc1 = _fc1_with_norm(backend)
    if config.uses_cms:
        shared = _norm(backend) if config.cms_variant == "independent" else IdentityOp
        if config.cms_variant == "independent":  # one shared stand-alone norm: plain fc1 in every level
            mlp_norm, fc1 = IdentityOp, backend.column_parallel_linear()
        mlp = ModuleSpec(module=CMSStack, submodules=CMSSubmodules(
            mlp=_mlp_spec(backend, fc1), pre_mlp_layernorm=mlp_norm, shared_layernorm=shared))
        pre_mlp_layernorm = IdentityOp
    else:
        mlp, pre_mlp_layernorm = _mlp_spec(backend, fc1), mlp_norm
        keys_map["pre_mlp_layernorm."] = "mlp.linear_fc1.layer_norm_"
    return ModuleSpec(module=HopeLayer, submodules=TransformerLayerSubmodules(
        input_layernorm=in_norm, self_attention=mixer, self_attn_bda=get_bias_dropout_add,
        pre_mlp_layernorm=pre_mlp_layernorm, mlp=mlp, mlp_bda=get_bias_dropout_add,
        sharded_state_dict_keys_map=keys_map))


def get_layer_specs(config, backend: BackendSpecProvider) -> List[ModuleSpec]:
    """One spec per global layer, following config.layer_letters()."""
    cache = {}
    for letter in set(config.layer_letters()):
        cache[letter] = get_layer_spec(letter, config, backend)
    return [cache[c] for c in config.layer_letters()]


def get_block_spec(config, transformer_impl: str = "local", vp_stage: Optional[int] = None,
                   pp_rank: Optional[int] = None) -> TransformerBlockSubmodules:
    """This pipeline stage's (and virtual stage's) slice of the layer specs plus the final norm: pipeline slicing
    follows the pattern because the slice is taken from the per-layer list (as megatron's GPT block spec does)."""
    backend = get_backend(transformer_impl)
    specs = get_layer_specs(config, backend)
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage, pp_rank=pp_rank)
    count = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return TransformerBlockSubmodules(layer_specs=specs[offset:offset + count], layer_norm=_norm(backend))
