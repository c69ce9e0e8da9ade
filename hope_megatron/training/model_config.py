"""From parsed arguments to the one HopeConfig (design.md §5: HopeConfig is the single source of model knobs).

Both the CLI's validation (arguments.validate_args builds the config once so its own one-sentence checks run before
any work) and the model set-up (model_setup) need this map; it lives here, importing neither, so the two never
import each other.
"""

from __future__ import annotations

import torch


def transformer_config_kwargs(args) -> dict:
    """Megatron TransformerConfig fields from Megatron-LM flags; flags left unset keep HopeConfig's defaults."""
    kw = dict(
        num_layers=args.num_layers, hidden_size=args.hidden_size, num_attention_heads=args.num_attention_heads,
        ffn_hidden_size=args.ffn_hidden_size, num_query_groups=args.num_query_groups, kv_channels=args.kv_channels,
        normalization=args.normalization, layernorm_epsilon=args.norm_epsilon, gated_linear_unit=args.swiglu,
        add_bias_linear=None if args.disable_bias_linear is None else not args.disable_bias_linear,
        hidden_dropout=args.hidden_dropout, attention_dropout=args.attention_dropout,
        init_method_std=args.init_method_std,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=args.virtual_pipeline_model_parallel_size,
        sequence_parallel=args.sequence_parallel,
        params_dtype=torch.bfloat16 if args.bf16 else torch.float32, bf16=args.bf16,
        pipeline_dtype=torch.bfloat16 if args.bf16 else torch.float32,
        recompute_granularity=args.recompute_granularity, recompute_method=args.recompute_method,
        recompute_num_layers=args.recompute_num_layers,
    )
    if args.swiglu is False:
        kw["activation_func"] = torch.nn.functional.gelu
    if args.fp8_format:
        kw.update(fp8=args.fp8_format, fp8_recipe=args.fp8_recipe, fp8_margin=args.fp8_margin,
                  fp8_amax_history_len=args.fp8_amax_history_len, fp8_amax_compute_algo=args.fp8_amax_compute_algo)
    if args.recompute_granularity == "full" and args.recompute_method is None:
        kw["recompute_method"], kw["recompute_num_layers"] = "uniform", args.recompute_num_layers or 1
    return {k: v for k, v in kw.items() if v is not None}


def hope_overrides(args) -> dict:
    """The HOPE values the user set (YAML or flags), to apply on top of the variant preset."""
    from hope_megatron.config import hope_fields

    out = {}
    for f in hope_fields():
        value = getattr(args, f.name, None)
        if value is not None and f.name != "hope_variant":
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def build_config(args, configure: bool = True):
    """HopeConfig.for_variant(--hope-variant, megatron flags + the HOPE flags set); platform fields when configure."""
    from hope_megatron.config import HopeConfig

    cfg = HopeConfig.for_variant(args.hope_variant, **transformer_config_kwargs(args), **hope_overrides(args))
    if configure:
        from hope_megatron import platform

        platform.configure(cfg)
    return cfg
