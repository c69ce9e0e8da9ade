"""From arguments to the model chunks, DDP wrappers, optimizer and LR scheduler (Megatron-LM's
setup_model_and_optimizer). The model itself comes from `hope_megatron.models.build_model`; training never
contains model math (style.md)."""

from __future__ import annotations

import torch

from hope_megatron.training.arguments import hope_overrides


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


def build_config(args, configure: bool = True):
    """HopeConfig.for_variant(--hope-variant, megatron flags + the HOPE flags set); platform fields when configure."""
    from hope_megatron.config import HopeConfig

    cfg = HopeConfig.for_variant(args.hope_variant, **transformer_config_kwargs(args), **hope_overrides(args))
    if configure:
        from hope_megatron import platform

        platform.configure(cfg)
    return cfg


def build_model_chunks(args, config, vocab_size: int):
    """This rank's model chunks (one, or one per virtual stage), built from the same full weights on every layout."""
    from megatron.core import parallel_state as ps

    vpp = args.virtual_pipeline_model_parallel_size
    chunks = []
    for vp in (range(vpp) if vpp else [None]):
        pre = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp)
        post = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp)
        chunks.append(_build_one(args, config, vocab_size, pre, post, vp))
    return chunks


def _build_one(args, config, vocab_size, pre, post, vp):
    from hope_megatron.models import build_model

    return build_model(config, vocab_size, args.max_position_embeddings, pre_process=pre, post_process=post,
                       vp_stage=vp, transformer_impl=args.transformer_impl,
                       share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
                       rotary_base=args.rotary_base)


def cms_level_fn():
    """hope_megatron.layers.cms.cms_level_of, or a function that finds no CMS parameter before that lands."""
    from hope_megatron.layers.cms import cms_level_of

    return cms_level_of


def wrap_ddp(args, config, chunks):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=args.overlap_grad_reduce,
        use_distributed_optimizer=args.use_distributed_optimizer, bucket_size=args.ddp_bucket_size)
    return [DistributedDataParallel(config=config, ddp_config=ddp_cfg, module=c,
                                    disable_bucketing=(i > 0)) for i, c in enumerate(chunks)]


def build_optimizer(args, model):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    ocfg = OptimizerConfig(
        optimizer="adam", lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps, clip_grad=args.clip_grad,
        bf16=args.bf16, params_dtype=torch.bfloat16 if args.bf16 else torch.float32,
        use_distributed_optimizer=args.use_distributed_optimizer)
    return get_megatron_optimizer(ocfg, model)


def build_scheduler(args, optimizer):
    """Cosine (or linear/constant/inverse-sqrt) with linear warmup, stepped once per iteration."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    decay = max(args.lr_decay_iters, args.lr_warmup_iters + 1)
    return OptimizerParamScheduler(
        optimizer, init_lr=args.lr_warmup_init, max_lr=args.lr, min_lr=args.min_lr,
        lr_warmup_steps=args.lr_warmup_iters, lr_decay_steps=decay, lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay, end_wd=args.weight_decay, wd_incr_steps=decay, wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=not args.override_opt_param_scheduler,
        override_opt_param_scheduler=args.override_opt_param_scheduler)  # checkpoint_fit.schedule_note says which


def count_parameters(chunks) -> int:
    """Parameters on this rank, counting each TP-replicated tensor once (for the start-up summary)."""
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    return sum(p.numel() for c in chunks for p in c.parameters() if param_is_not_tensor_parallel_duplicate(p))
