"""From arguments to the model chunks, DDP wrappers, optimizer and LR scheduler (Megatron-LM's
setup_model_and_optimizer). The model itself comes from `hope_megatron.models.build_model`; training never
contains model math (style.md)."""

from __future__ import annotations

import torch

from hope_megatron.training.model_config import build_config, transformer_config_kwargs  # noqa: F401 (re-exported)


def build_model_chunks(args, config, vocab_size: int, padded_vocab_size: int = None, init: bool = True):
    """This rank's model chunks (one, or one per virtual stage). `vocab_size` is the tokenizer's; the tables hold
    `padded_vocab_size` rows. With `init`, every parameter is drawn full from (--seed, its name) and sliced, so every
    layout starts from the same weights (models/seeded_init.py); the converter, which loads weights, passes False."""
    from megatron.core import parallel_state as ps

    vpp = args.virtual_pipeline_model_parallel_size
    chunks = []
    for vp in (range(vpp) if vpp else [None]):
        pre = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp)
        post = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp)
        chunks.append(_build_one(args, config, vocab_size, padded_vocab_size, pre, post, vp, init))
    return chunks


def _build_one(args, config, vocab_size, padded_vocab_size, pre, post, vp, init):
    from hope_megatron.models import build_model

    return build_model(config, vocab_size, args.max_position_embeddings, pre_process=pre, post_process=post,
                       vp_stage=vp, transformer_impl=args.transformer_impl,
                       share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
                       rotary_base=args.rotary_base, padded_vocab_size=padded_vocab_size,
                       seed=args.seed if init else None)


def cms_level_fn():
    """hope_megatron.layers.cms.cms_level_of, or a function that finds no CMS parameter before that lands."""
    from hope_megatron.layers.cms import cms_level_of

    return cms_level_of


def wrap_ddp(args, config, chunks):
    """megatron's DistributedDataParallel around each chunk, or its torch-FSDP2 wrapper with --use-torch-fsdp2."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    if args.use_torch_fsdp2:
        from hope_megatron.training import fsdp

        return [fsdp.wrap(config, DistributedDataParallelConfig(), c) for c in chunks]

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
    """Parameters on this rank as the model's size: each TP-replicated tensor once, no vocabulary padding row (the
    padding grows with TP) and not the last stage's copy of a tied embedding (it exists only under PP)."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    total = 0
    for c in chunks:
        m = getattr(c, "module", c)
        real = getattr(m, "real_vocab_size", None)
        tied = getattr(m, "share_embeddings_and_output_weights", False)
        for name, p in m.named_parameters():
            if not param_is_not_tensor_parallel_duplicate(p):
                continue
            if name == "output_layer.weight" and tied and not m.pre_process:
                continue
            if name in ("embedding.word_embeddings.weight", "output_layer.weight") and real is not None:
                rows = p.shape[0]  # this rank's rows [rank*rows, (rank+1)*rows) of the padded table
                start = ps.get_tensor_model_parallel_rank() * rows
                total += max(0, min(rows, real - start)) * (p.numel() // max(rows, 1))
            else:
                total += p.numel()
    return total
