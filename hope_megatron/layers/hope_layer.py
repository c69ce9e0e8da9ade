"""HopeLayer: pre-norm mixer + residual, then the MLP stack (hope_math.md §5.1, NL-arXiv Eqs 94-97).

It is megatron's TransformerLayer (same constructor, forward signature and (hidden_states, context) return, so
TransformerBlock, GPTModel and the pipeline schedules take it unchanged). The `self_attention` slot holds the mixer:
TitansMixer (letters H/T/D) or megatron's SelfAttention (A, W). The MLP stack is either one megatron MLP behind
`pre_mlp_layernorm` (TransformerLayer's own path) or, for CMS variants, a CMSStack whose levels carry their own
pre-norms and residuals (hope_math §4.1); then `pre_mlp_layernorm` is IdentityOp and `_forward_mlp` hands the
residual stream to the stack.

With `hope_reset_at_eod` the model's `attention_mask` argument carries the document starts (bool [B, L], from
ops.documents.document_starts): megatron passes it unchanged to every layer on every pipeline stage and through
activation recomputation. Memory mixers read it; attention layers get None (their causal mask, unchanged).
"""

from __future__ import annotations

import dataclasses

from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules
from megatron.core.utils import make_viewless_tensor

from hope_megatron.layers.cms import CMSStack
from hope_megatron.layers.titans_mixer import TitansMixer


class HopeLayer(TransformerLayer):
    def __init__(self, config, submodules: TransformerLayerSubmodules, layer_number: int = 1, hidden_dropout=None,
                 pg_collection=None, vp_stage=None):
        mlp_spec = submodules.mlp
        is_cms = getattr(mlp_spec, "module", None) is CMSStack
        if is_cms:  # TransformerLayer would build an unknown MLP type without its TP group; build it here instead
            submodules = dataclasses.replace(submodules, mlp=IdentityOp)
        super().__init__(config, submodules, layer_number=layer_number, hidden_dropout=hidden_dropout,
                         pg_collection=pg_collection, vp_stage=vp_stage)
        self.is_cms = is_cms
        if is_cms:
            self.mlp = build_module(mlp_spec, config=self.config, tp_group=self.pg_collection.tp)

    def _forward_attention(self, *args, **kwargs):
        if getattr(self.config, "hope_reset_at_eod", False) and not isinstance(self.self_attention, TitansMixer):
            if "attention_mask" in kwargs:
                kwargs["attention_mask"] = None  # document starts are for memory layers (module docstring)
            elif len(args) > 1:
                args = (args[0], None) + tuple(args[2:])
        return super()._forward_attention(*args, **kwargs)

    def _forward_mlp(self, hidden_states, inference_context=None, padding_mask=None):
        if not self.is_cms:
            return super()._forward_mlp(hidden_states, inference_context, padding_mask=padding_mask)
        output = self.mlp(hidden_states)  # every level: x <- x + MLP_l(RMSNorm_l(x))
        return make_viewless_tensor(inp=output, requires_grad=output.requires_grad, keep_graph=True)
