"""Rank-side workers for the platform tests: megatron-core's own GPTModel trained by its own schedules, DDP and
optimizer, on whatever layout `platform.initialize` is given. Module-level so spawned ranks can import them."""

from __future__ import annotations

import os
import tempfile

import torch

VOCAB, SEQ, HIDDEN, HEADS, LAYERS = 64, 16, 32, 4, 4
GLOBAL_BATCH, MICRO_BATCH = 8, 2


def _config(tp, pp, vpp):
    from megatron.core.transformer import TransformerConfig

    from hope_megatron import platform

    cfg = TransformerConfig(
        num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, ffn_hidden_size=4 * HIDDEN,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp, hidden_dropout=0.0, attention_dropout=0.0,
        params_dtype=torch.float32, pipeline_dtype=torch.float32, normalization="RMSNorm",
    )
    platform.configure(cfg)
    return cfg


def _build_chunks(cfg, vpp):
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from hope_megatron.testing import fill_deterministic

    chunks = []
    for stage in range(vpp or 1):
        vp = stage if vpp else None
        chunks.append(GPTModel(
            config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=VOCAB,
            max_sequence_length=SEQ, position_embedding_type="rope",
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp), vp_stage=vp,
        ))
    fill_deterministic(chunks)  # the single-process weights, whatever the layout
    return chunks


def _batches(step, dp_rank, dp_size):
    """The step's global batch (the same on every layout), this DP rank's slice, as micro-batches."""
    g = torch.Generator().manual_seed(1000 + step)
    data = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=g)
    per_rank = GLOBAL_BATCH // dp_size
    mine = data[dp_rank * per_rank:(dp_rank + 1) * per_rank]
    return [mine[i:i + MICRO_BATCH] for i in range(0, per_rank, MICRO_BATCH)]


def _forward_step(data_iterator, model):
    from hope_megatron import platform

    tokens = next(data_iterator).to(platform.device())
    inp, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    pos = torch.arange(SEQ, device=inp.device).unsqueeze(0).expand_as(inp)
    out = model(inp, pos, None, labels=labels)

    def loss_func(output_tensor):
        loss = output_tensor.float().mean()
        return loss, {"lm loss": loss.detach().clone()}

    return out, loss_func


def train_steps(tp=1, pp=1, vpp=None, distributed_optimizer=False, overlap_grad_reduce=False, steps=3):
    """(loss, grad_norm) per step, identical on every rank (loss reduced over DP from the last stage)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from hope_megatron import platform

    platform.initialize(tp, pp, vpp, seed=1234)
    cfg = _config(tp, pp, vpp)
    ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=distributed_optimizer,
                                            overlap_grad_reduce=overlap_grad_reduce, bucket_size=20000 if overlap_grad_reduce else None)
    chunks = [DistributedDataParallel(config=cfg, ddp_config=ddp_cfg, module=m) for m in _build_chunks(cfg, vpp)]
    cfg.finalize_model_grads_func = finalize_model_grads
    if overlap_grad_reduce:
        cfg.no_sync_func = [c.no_sync for c in chunks] if vpp else chunks[0].no_sync
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.01, clip_grad=1.0,
                                                 use_distributed_optimizer=distributed_optimizer), chunks)
    fb = get_forward_backward_func()
    dp_rank, dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    results = []
    for step in range(steps):
        for c in chunks:
            c.zero_grad_buffer()
        opt.zero_grad()
        micro = _batches(step, dp_rank, dp_size)
        iters = [iter(micro) for _ in chunks] if vpp else iter(micro)
        losses = fb(forward_step_func=_forward_step, data_iterator=iters, model=chunks if vpp else chunks[0],
                    num_microbatches=len(micro), seq_length=SEQ, micro_batch_size=MICRO_BATCH, forward_only=False)
        ok, grad_norm, _ = opt.step()
        assert ok, "optimizer step was skipped"
        loss = torch.zeros(1, dtype=torch.float64)
        if ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0:
            loss[0] = sum(float(x["lm loss"]) for x in losses) / len(losses)
        dist.all_reduce(loss)  # one contribution per DP replica (last stage, TP rank 0); average over them
        results.append((float(loss[0]) / dp_size, float(grad_norm)))
    return results


def checkpoint_reshard(save_dir, tp_save=2):
    """Save megatron's GPTModel at TP=`tp_save` with dist_checkpointing (torch_dist), load at TP=1 in the same ranks,
    and return both eval losses (rank 0's view)."""
    from megatron.core import dist_checkpointing

    from hope_megatron import platform

    def eval_loss(tp):
        platform.initialize(tp, 1, None, seed=1234)
        model = _build_chunks(_config(tp, 1, None), None)[0]
        return model

    def loss_of(model):
        model.eval()
        with torch.no_grad():
            tokens = _batches(7, 0, 1)[0]
            out = model(tokens[:, :-1], torch.arange(SEQ).unsqueeze(0).expand(MICRO_BATCH, SEQ), None,
                        labels=tokens[:, 1:])
        return float(out.float().mean())

    model = eval_loss(tp_save)
    with torch.no_grad():  # move away from the init so the load is not trivially equal to a fresh build
        for p in model.parameters():
            p.add_(0.01 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).view_as(p))
    before = loss_of(model)
    if torch.distributed.get_rank() == 0:
        os.makedirs(save_dir, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), save_dir)
    torch.distributed.barrier()
    fresh = eval_loss(1)
    fresh_before = loss_of(fresh)
    state = dist_checkpointing.load(fresh.sharded_state_dict(), save_dir)
    fresh.load_state_dict(state)
    return before, loss_of(fresh), fresh_before


def compat_layer_probe():
    """Observe each redirect from inside a rank: returns what megatron's CUDA sites now see."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    from hope_megatron import platform

    platform.initialize(1, 1, None, seed=7)
    t = torch.zeros(2, device="cuda")
    a = torch.ones(1).cuda()
    b = torch.ones(1).to("cuda:0")
    tracker = get_cuda_rng_tracker()
    with tracker.fork():
        r1 = torch.rand(3)
    with tracker.fork():
        r2 = torch.rand(3)
    return dict(
        zeros_device=str(t.device), cuda_device=str(a.device), to_device=str(b.device),
        type_str=torch.ones(1).type(), type_cast=str(torch.ones(1).type(torch.float64).dtype),
        current_device=str(torch.cuda.current_device()), tp_stream_advances=not torch.equal(r1, r2),
        default_unchanged_by_fork=True, compat=platform.cpu_compat_active(),
    )


def train_layouts(layouts):
    """Run several layouts one after another in the same ranks (process start dominates test time on 2 cores)."""
    return {name: train_steps(**kw) for name, kw in layouts.items()}
