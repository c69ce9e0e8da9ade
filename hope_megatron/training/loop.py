"""The training loop: megatron-core's schedules, DDP and optimizer, the level-gated CMS step, checkpoints, logs.

`pretrain(args)` is what `python -m hope_megatron.train` runs; tests call it in-process on spawned gloo ranks and read
the summary it returns (per-iteration losses, grad norms, CMS firings, throughput).
"""

from __future__ import annotations

import math
import signal
import time
from functools import partial

import torch
import torch.distributed as dist

from hope_megatron.training import checkpointing, data, divergence, flops, fsdp
from hope_megatron.training.arguments import cms_schedule, format_config, resolved_config, validate_args
from hope_megatron.training.cms_optimizer import CMSGate, gated_step
from hope_megatron.training.logging import TensorBoard, Throughput, print_rank0, progress_line
from hope_megatron.training.wandb_writer import WandB
from hope_megatron.training.model_setup import (build_config, build_model_chunks, build_optimizer, build_scheduler,
                                                 cms_level_fn, count_parameters, wrap_ddp)


class _Stop:
    """SIGTERM/SIGINT set a flag; the loop saves and exits at the end of the iteration (all ranks agree)."""

    def __init__(self, enabled: bool):
        self.flag = False
        self._old = {}
        if enabled:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread
                    pass

    def _handle(self, signum, frame):
        self.flag = True

    def any_rank(self) -> bool:
        t = torch.tensor([1.0 if self.flag else 0.0])
        if dist.is_initialized():
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def forward_step(data_iterator, model, device=None, eod=None):
    """Megatron's forward_step contract: (output, loss_func); the loss is the masked token mean of one micro-batch.
    eod: the EOD token id under --hope-reset-at-eod; the document starts then ride in the attention-mask argument,
    which megatron hands to every layer on every pipeline stage (layers/hope_layer.py)."""
    from hope_megatron.ops.documents import document_starts

    batch = data.get_batch(data_iterator, device)
    starts = None if eod is None else document_starts(batch["tokens"], eod)
    output = model(batch["tokens"], batch["position_ids"], starts, labels=batch["labels"])
    mask = batch["loss_mask"].float()

    def loss_func(output_tensor):
        losses = output_tensor.float().reshape(-1)
        loss = (losses * mask.reshape(-1)).sum() / mask.sum().clamp(min=1.0)
        # schedules divide the returned loss in place by num_microbatches: report a clone (notes §2.4)
        return loss, {"lm loss": loss.detach().clone()}

    return output, loss_func


def _reduce_loss(loss_dicts) -> float:
    """Mean over micro-batches and DP ranks on the last stage, then shared with every pipeline stage."""
    from megatron.core import parallel_state as ps

    t = torch.zeros(1, dtype=torch.float64)
    if ps.is_pipeline_last_stage(ignore_virtual=True) and loss_dicts:
        t[0] = sum(float(d["lm loss"]) for d in loss_dicts) / len(loss_dicts)
        dist.all_reduce(t, group=ps.get_data_parallel_group())
        t /= ps.get_data_parallel_world_size()
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.all_reduce(t, group=ps.get_pipeline_model_parallel_group())
    return float(t[0])


def _memory_state_norms(model) -> dict:
    """Per-layer memory-state norms, when the model's mixers expose `memory_state_norm` (cheap: set in forward)."""
    out = {}
    for chunk in model:
        for name, mod in chunk.named_modules():
            v = getattr(mod, "memory_state_norm", None)
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                out[name.replace("module.", "")] = float(v)
    return out


def _clip_stats(model):
    """Per layer (this rank's mixers) {name: (hit rate, mean clip scale)} of the inner chunk clip since the last call,
    and the world-wide (hits, writes, scale sum) for the log line; resets the mixers' totals (hope_math §10 #17)."""
    per_layer, total = {}, torch.zeros(3, dtype=torch.float64)
    for chunk in model:
        for name, mod in chunk.named_modules():
            t = getattr(mod, "clip_totals", None)
            if isinstance(t, torch.Tensor):
                writes, hits, scale = (float(v) for v in t.cpu())
                mod.clip_totals = None
                if writes > 0:
                    per_layer[name.replace("module.", "")] = (hits / writes, scale / writes)
                    total += torch.tensor([hits, writes, scale], dtype=torch.float64)
    if dist.is_initialized():  # layers of every stage, heads of every TP rank, data of every DP rank (a host tensor:
        dist.all_reduce(total)  # the process group is cpu:gloo,cuda:nccl, platform.py)
    return per_layer, tuple(float(v) for v in total.cpu())


def pretrain(args, level_of=None, hooks=None) -> dict:
    """Train per `args` (from arguments.parse_args). Returns a summary dict (identical on every rank)."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from hope_megatron import platform

    validate_args(args)  # one sentence, before any work
    platform.initialize(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                        args.virtual_pipeline_model_parallel_size, seed=args.seed)
    device = platform.device()
    tokenizer = data.build_tokenizer_from_args(args)
    # the tokenizer's vocabulary and the table megatron pads it to (grows with TP; masked, models/builder.py)
    args.real_vocab_size = int(tokenizer.vocab_size)
    args.padded_vocab_size = vocab = data.padded_vocab_size(
        tokenizer.vocab_size, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size)
    args_dict = resolved_config(args)
    print_rank0("------------------------ hope-train arguments ------------------------\n" + format_config(args))

    args_dict["eod_token_id"] = int(tokenizer.eod)  # for the converter's config.json (--hope-reset-at-eod)
    # args.real_vocab_size (saved with every checkpoint): --load compares it with the checkpoint's, batches are held
    # to it, and shards made with a larger tokenizer are one sentence before the model is built
    data.check_token_ranges(args, tokenizer)  # shards made with a larger tokenizer: one sentence, before the model
    config = build_config(args)
    chunks = build_model_chunks(args, config, args.real_vocab_size, vocab)  # every weight drawn full from --seed
    if hooks is not None and hasattr(hooks, "after_build"):  # tests: e.g. layout-independent weights
        hooks.after_build(chunks)
    model = wrap_ddp(args, config, chunks)
    optimizer = build_optimizer(args, model)
    scheduler = build_scheduler(args, optimizer)
    gate = CMSGate(optimizer, model, level_of or cms_level_fn(), cms_schedule(config))
    if gate.entries:
        checkpointing.prefill_optimizer_state(optimizer)
    config.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync
    config.finalize_model_grads_func = finalize_model_grads
    if args.overlap_grad_reduce:
        config.grad_sync_func = [m.start_grad_sync for m in model] if len(model) > 1 else model[0].start_grad_sync

    shape = flops.from_args(args, config, vocab)
    fam = flops.flops_per_iteration(shape, args.global_batch_size)
    n_params = _global_param_count(chunks)
    print_rank0(f"vocab {tokenizer.vocab_size} (padded {vocab}) | parameters {n_params:,} | variant "
                f"{config.hope_variant} | CMS levels (period, warmup) {cms_schedule(config) or 'none'}")
    print_rank0(flops.format_breakdown(fam))
    peak = flops.peak_flops(args.peak_flops, platform.accelerator_name())
    print_rank0(f"MFU peak: {peak:.4g} FLOP/s per device ({'--peak-flops' if args.peak_flops else platform.accelerator_name()})"
                if peak else f"MFU: not reported ({platform.accelerator_name() or 'CPU'}: no known peak; pass "
                             f"--peak-flops to set one)")

    iteration, consumed = 0, 0
    if args.load:
        with fsdp.full_view(model, optimizer, gate, loading=True):
            iteration, consumed = checkpointing.load_checkpoint(args.load, model, optimizer, scheduler, gate, args)
        print_rank0(f"loaded {args.load} at iteration {iteration} (consumed samples {consumed})")

    train_ds, valid_ds, _ = data.build_datasets(args, tokenizer)
    vpp = max(len(model), 1)
    train_iters = [data.build_iterator(train_ds, consumed, args) for _ in range(vpp)]
    has_valid = torch.tensor([1.0 if valid_ds is not None and len(valid_ds) > 0 else 0.0])
    dist.all_reduce(has_valid, op=dist.ReduceOp.MAX)  # only TP rank 0 holds datasets; every rank must agree
    valid_iters = [data.build_iterator(valid_ds, 0, args, cycle=True) for _ in range(vpp)] \
        if has_valid.item() > 0 else None
    fwd_bwd = get_forward_backward_func()
    dp = ps.get_data_parallel_world_size()
    n_micro = args.global_batch_size // (args.micro_batch_size * dp)
    step_fn = partial(forward_step, device=device, eod=int(tokenizer.eod) if config.hope_reset_at_eod else None)

    def run_schedule(iters, forward_only):
        return fwd_bwd(forward_step_func=step_fn, data_iterator=iters if vpp > 1 else iters[0], model=model,
                       num_microbatches=n_micro, seq_length=args.seq_length, micro_batch_size=args.micro_batch_size,
                       decoder_seq_length=args.seq_length, forward_only=forward_only)

    tb = TensorBoard(args.tensorboard_dir, mirror=WandB.from_args(args, args_dict))
    tb.text("config", "```\n" + format_config(args) + "\n```")
    thr = Throughput(args.global_batch_size * args.seq_length, fam["total"], dist.get_world_size(), peak)
    stop = _Stop(args.exit_signal_handler)
    summary = {"losses": {}, "grad_norms": {}, "firings": {}, "valid_losses": {}, "skipped": 0, "tokens_per_s": [],
               "clip_hit_rate": {},
               "start_iteration": iteration, "stopped_by": None}
    skipped_total, consecutive, interval_losses, last_saved, save_due, first_bad = 0, 0, [], None, False, 0
    # checkpoints this run started from or wrote: a NaN stop picks the one to resume from (training/divergence.py)
    saves = [(args.load, iteration)] if args.load and iteration else []

    def save(it):
        """A checkpoint is written only after a finite iteration: while iterations are skipped (NaN/inf) a due save
        waits for the next finite one, so the checkpoint to resume from is never one taken inside a NaN streak."""
        nonlocal last_saved, save_due
        if not args.save or last_saved == it:
            return
        if consecutive > 0:
            save_due = True
            return
        t0 = time.perf_counter()
        with fsdp.full_view(model, optimizer, gate, loading=False):  # FSDP: megatron's own layout
            checkpointing.save_checkpoint(args.save, it, model, optimizer, scheduler, gate, consumed,
                                          args_dict, save_optim=not args.no_save_optim)
        last_saved, save_due = it, False
        saves.append((args.save, it))
        print_rank0(f"saved checkpoint {checkpointing.iteration_dir(args.save, it)} "
                    f"({time.perf_counter() - t0:.1f} s)")

    while iteration < args.train_iters:
        for m in model:
            m.train()
            m.zero_grad_buffer()
        optimizer.zero_grad()
        loss_dicts = run_schedule(train_iters, forward_only=False)
        ok, grad_norm, firing = gated_step(optimizer, gate, iteration)
        if hooks is not None and hasattr(hooks, "after_step"):  # tests: sees the LR the step used
            hooks.after_step(iteration, model, optimizer, gate, firing)
        loss = _reduce_loss(loss_dicts)
        if ok:
            scheduler.step(increment=1)
            consecutive = 0
        else:
            skipped_total += 1
            consecutive += 1
        iteration += 1
        if consecutive == 1:
            first_bad = iteration
        consumed += args.global_batch_size
        thr.tick()
        summary["losses"][iteration] = loss
        summary["grad_norms"][iteration] = grad_norm
        if firing:
            summary["firings"][iteration] = list(firing)
        interval_losses.append(loss)
        if gate.entries:
            tb.cms(iteration, firing, gate.last_update_norm, gate.firings)
        if iteration % args.log_interval == 0 or iteration == args.train_iters:
            rates = thr.read()
            finite = [x for x in interval_losses if math.isfinite(x)]
            mean_loss = sum(finite) / len(finite) if finite else float("nan")
            lr = optimizer.param_groups[0]["lr"]
            line = progress_line(iteration=iteration, train_iters=args.train_iters, consumed=consumed, lr=lr,
                                 loss=mean_loss, grad_norm=grad_norm, skipped=skipped_total, **rates)
            if args.log_memory_state_norms:
                tb.memory_norms(iteration, _memory_state_norms(model))
                per_layer, (hits, writes, scale) = _clip_stats(model)
                for name, (rate, mean_scale) in per_layer.items():
                    tb.scalar(f"inner-clip-hit-rate/{name}", rate, iteration)
                    tb.scalar(f"inner-clip-scale/{name}", mean_scale, iteration)
                if writes > 0:  # hope_math §10 #17: how often the chunk clip, not η, set the inner step
                    line += f" | inner clip hits: {100 * hits / writes:.1f}% (mean scale {scale / writes:.3f})"
                    summary["clip_hit_rate"][iteration] = hits / writes
            print_rank0(line)
            tb.train(iteration, loss=mean_loss, lr=lr, grad_norm=grad_norm, skipped=skipped_total, consumed=consumed,
                     **{k: rates[k] for k in ("tokens_per_s", "mfu", "ms_per_iter")})
            summary["tokens_per_s"].append(rates["tokens_per_s"])
            interval_losses = []
        if args.eval_interval and valid_iters and iteration % args.eval_interval == 0:
            vloss = evaluate(model, valid_iters, run_schedule, args.eval_iters)
            summary["valid_losses"][iteration] = vloss
            print_rank0(f" validation at iteration {iteration} | lm loss: {vloss:.9E} | "
                        f"lm loss PPL: {math.exp(min(vloss, 50.0)):.6E}")
            tb.validation(iteration, vloss)
            thr.read()  # evaluation time is not training time
        if consecutive >= args.max_consecutive_skipped_iters:
            summary["stopped_by"] = "nan"
            print_rank0(divergence.settle(args, consecutive, grad_norm, first_bad, saves, dist.get_rank() == 0))
            break
        if args.save and ((args.save_interval and iteration % args.save_interval == 0) or
                          (save_due and consecutive == 0)):
            save(iteration)
        if stop.any_rank():
            save(iteration)
            summary["stopped_by"] = "signal"
            print_rank0(f"stopping at iteration {iteration}: received SIGTERM/SIGINT"
                        + (" (checkpoint saved)" if last_saved == iteration else ""))
            break
        if args.exit_interval and iteration % args.exit_interval == 0:
            save(iteration)
            summary["stopped_by"] = "exit_interval"
            print_rank0(f"stopping at iteration {iteration}: --exit-interval {args.exit_interval}")
            break
    if summary["stopped_by"] in (None, "signal", "exit_interval") and args.save and consecutive > 0:
        print_rank0(f"not saving iteration {iteration}: its last {consecutive} iteration(s) were skipped (non-finite); "
                    f"the latest checkpoint stays {checkpointing.iteration_dir(*saves[-1]) if saves else 'none'}")
    elif summary["stopped_by"] is None:
        save(iteration)
    stop.restore()
    tb.close()
    summary.update(iteration=iteration, consumed=consumed, skipped=skipped_total, cms_firings=list(gate.firings),
                   cms_counts=list(gate.counts), parameters=n_params, flops_per_iteration=fam["total"])
    return summary


def evaluate(model, valid_iters, run_schedule, eval_iters: int) -> float:
    for m in model:
        m.eval()
    total = 0.0
    with torch.no_grad():
        for _ in range(eval_iters):
            total += _reduce_loss(run_schedule(valid_iters, forward_only=True))
    for m in model:
        m.train()
    return total / max(eval_iters, 1)


def _global_param_count(chunks) -> int:
    from megatron.core import parallel_state as ps

    t = torch.tensor([float(count_parameters(chunks))], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t, group=ps.get_model_parallel_group())
    return int(t.item())
