"""Checkpoints in Megatron's layout through megatron dist_checkpointing (torch_dist), resharding across TP/PP.

    <save>/iter_0000100/          dist_checkpointing directory (model, optimizer, CMS accumulators, RNG shards,
                                  common.pt with iteration, consumed samples, scheduler, CMS clocks, arguments)
    <save>/iter_0000100/run_config.yaml   the resolved configuration (human readable copy of the arguments)
    <save>/latest_checkpointed_iteration.txt   written last, atomically (tmp file + os.replace)

A crash between the shard writes and the tracker update leaves the previous iteration as latest (hope_math §7.1 lists
the state). Per-parameter AdamW step counts differ for CMS levels (s_ℓ = firings) while megatron stores one common
step, so the CMS steps are stored with the level clocks and restored after the optimizer loads.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist
import yaml

from hope_megatron import platform

TRACKER = "latest_checkpointed_iteration.txt"
# The distributed optimizer's state in model space (one tensor per parameter, like the plain optimizer's), gathered
# over DP at save: it reshards over TP, PP and DP. megatron's default (fully_sharded_model_space) needs
# ShardedTensor.flattened_range, which 0.16.1's torch_dist refuses.
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def read_tracker(root: str):
    """The latest complete iteration under root, or None."""
    path = os.path.join(root, TRACKER)
    if not os.path.isfile(path):
        return None
    text = open(path, encoding="utf-8").read().strip()
    try:
        return int(text)
    except ValueError as e:
        raise ValueError(f"{path} holds {text!r}, not an iteration number; fix or delete it.") from e


def write_tracker(root: str, iteration: int) -> None:
    """Atomic: readers see the old iteration or the new one, never a partial file."""
    tmp = os.path.join(root, f".{TRACKER}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{iteration}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, TRACKER))


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    state = {"random": random.getstate(), "np": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["random"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(state):
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    pp, tp = ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()
    return ShardedObject("rng_state", state, (pp, tp), (ps.get_pipeline_model_parallel_rank(),
                                                         ps.get_tensor_model_parallel_rank()),
                         replica_id=ps.get_data_parallel_rank(with_context_parallel=True))


def _unwrap(m):
    return getattr(m, "module", m)  # DDP's state-dict keys carry "module."; the checkpoint holds the GPTModel's


def _model_sharded(model):
    if len(model) == 1:
        return {"model": _unwrap(model[0]).sharded_state_dict()}
    return {f"model{i}": _unwrap(m).sharded_state_dict() for i, m in enumerate(model)}


def _cms_step_params(gate):
    return [] if gate is None else [(e, e.opt) for e in gate.entries]


def _optimizer_states(gate):
    """(state dict, entry) for every CMS main param that the torch optimizer tracks."""
    out = []
    for e, opt in _cms_step_params(gate):
        inner = getattr(opt, "optimizer", None)
        if inner is not None and e.main in inner.state:
            out.append((inner.state[e.main], e))
    return out


def prefill_optimizer_state(optimizer) -> None:
    """Give every parameter AdamW state (step 0, zero moments) so the checkpoint layout does not depend on which CMS
    levels have fired; torch's AdamW continues from a pre-filled state exactly as from an empty one."""
    from hope_megatron.training.cms_optimizer import _sub_optimizers

    for opt in _sub_optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                st = inner.state[p]
                if len(st) == 0:
                    st["step"] = torch.tensor(0.0, dtype=torch.float32)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def build_state_dict(model, optimizer, scheduler, gate, iteration, consumed, args_dict, *, save_optim=True,
                     load_rng=True, loading=False):
    sd = _model_sharded(model)
    merged = {}
    for v in sd.values():
        merged.update(v)
    if save_optim and optimizer is not None:
        sd["optimizer"] = optimizer.sharded_state_dict(merged, is_loading=loading, metadata=OPTIMIZER_METADATA)
    if scheduler is not None:
        sd["opt_param_scheduler"] = scheduler.state_dict()
    if gate is not None and gate.cms_params:  # not gate.entries: a distributed-optimizer rank may hold no CMS slice,
        sd["cms_accumulators"] = gate.sharded_accumulators(merged)  # but it joins the DP all-reduce all the same
    sd["cms"] = gate.state_dict() if gate is not None else None
    sd["iteration"] = iteration
    sd["consumed_train_samples"] = consumed
    sd["args"] = args_dict
    sd["checkpoint_version"] = 1
    if load_rng:
        sd["rng_state"] = _rng_sharded_object(_rng_state())
    return sd


def save_checkpoint(root, iteration, model, optimizer, scheduler, gate, consumed, args_dict, *, save_optim=True,
                    before_tracker=None) -> str:
    """Write iter_XXXXXXX/ on every rank, then (rank 0) the tracker. `before_tracker` is a test hook."""
    from megatron.core import dist_checkpointing

    from hope_megatron.training import checkpoint_writers

    checkpoint_writers.install()  # megatron's writer processes die with this rank
    path = iteration_dir(root, iteration)
    if _rank() == 0:
        os.makedirs(path, exist_ok=True)
    _barrier()
    # megatron stores one common AdamW step; CMS params hold s_ℓ, restored from the clocks at load (see module doc)
    swapped = []
    common = _common_step(optimizer, gate) if save_optim else None
    for st, _ in (_optimizer_states(gate) if save_optim else []):
        swapped.append((st, st.get("step")))
        if common is not None:
            st["step"] = common.clone()
    try:
        sd = build_state_dict(model, optimizer, scheduler, gate, iteration, consumed, args_dict,
                              save_optim=save_optim)
        dist_checkpointing.save(sd, path, sharded_strategy=("torch_dist", 1))
    finally:
        for st, step in swapped:
            st["step"] = step
    _barrier()
    if _rank() == 0:
        with open(os.path.join(path, "run_config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(args_dict, f, sort_keys=True)
        if before_tracker is not None:
            before_tracker(path)
        write_tracker(root, iteration)
    _barrier()
    return path


def _common_step(optimizer, gate):
    from hope_megatron.training.cms_optimizer import _sub_optimizers

    cms = {id(e.main) for e in (gate.entries if gate is not None else [])}
    for opt in _sub_optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for p, st in inner.state.items():
            if id(p) not in cms and "step" in st:
                return torch.as_tensor(st["step"]).detach().clone()
    return None


def load_checkpoint(root, model, optimizer, scheduler, gate, args):
    """Load the latest complete checkpoint under root (or --ckpt-step's) into model/optimizer/scheduler/gate; returns
    (iteration, consumed). Damaged or unfitting checkpoints stop with one sentence (checkpoint_health, checkpoint_fit)."""
    from megatron.core import dist_checkpointing

    from hope_megatron.training import checkpoint_fit, checkpoint_health as health

    choice = health.choose(root, getattr(args, "ckpt_step", None))
    if choice is None:
        if args.exit_on_missing_checkpoint:
            raise health.CheckpointError(f"--load {root} has no {TRACKER}; check the path or drop "
                                         f"--exit-on-missing-checkpoint.")
        return 0, 0
    if choice.warning and _rank() == 0:
        print(choice.warning, flush=True)
    path, common = choice.path, choice.common
    saved = common.get("args", {})
    same_layout = (saved.get("tensor_model_parallel_size") == args.tensor_model_parallel_size and
                   saved.get("pipeline_model_parallel_size") == args.pipeline_model_parallel_size)
    load_optim = not (args.no_load_optim or args.finetune) and "optimizer" in common
    load_rng = same_layout and not (args.no_load_rng or args.finetune) and saved.get("world_size") == args.world_size
    if load_optim and bool(saved.get("use_distributed_optimizer")) != bool(args.use_distributed_optimizer):
        had = "with" if saved.get("use_distributed_optimizer") else "without"
        raise ValueError(f"--load {root} was saved {had} --use-distributed-optimizer and its optimizer state loads "
                         f"only the same way; resume {had} it, or add --no-load-optim to keep the weights and start "
                         f"a fresh optimizer.")
    with health.reading(path, "the files are damaged; pass --ckpt-step N to load an earlier iteration."):
        tensors = dist_checkpointing.load_tensors_metadata(path)
    if getattr(args, "real_vocab_size", None):
        checkpoint_fit.check_vocab(path, saved, tensors, args, args.real_vocab_size)
    checkpoint_fit.check_shapes(path, _model_sharded(model), tensors, saved, args)
    if gate is not None and common.get("cms") and not args.finetune:
        gate.load_state_dict(common["cms"])
    if load_optim and platform.torch_adamw_fallback():  # the distributed optimizer's state_dict needs a step
        prefill_optimizer_state(optimizer)
    sd = build_state_dict(model, optimizer, scheduler, gate, 0, 0, {}, save_optim=load_optim, load_rng=load_rng,
                          loading=True)
    if not load_optim:
        sd.pop("opt_param_scheduler", None)
    if args.finetune or not (gate is not None and gate.cms_params):
        sd.pop("cms_accumulators", None)
    if load_optim and not same_layout:
        advice = (f"its optimizer state was saved at TP={saved.get('tensor_model_parallel_size')}, PP="
                  f"{saved.get('pipeline_model_parallel_size')}; add --no-load-optim to load the model only.")
    else:
        advice = "the files are damaged or were written by different code; pass --ckpt-step N to load an earlier " \
                 "iteration."
    with health.reading(path, advice):
        state = dist_checkpointing.load(sd, path)
    if len(model) == 1:
        _unwrap(model[0]).load_state_dict(state["model"])
    else:
        for i, m in enumerate(model):
            _unwrap(m).load_state_dict(state[f"model{i}"])
    if load_optim:
        with health.reading(path, "the optimizer state does not fit this model/layout; add --no-load-optim."):
            optimizer.load_state_dict(state["optimizer"])
        for st, e in _optimizer_states(gate):
            st["step"] = torch.tensor(float(gate.firings[e.level]), dtype=torch.float32)
        if scheduler is not None and "opt_param_scheduler" in state:
            note = checkpoint_fit.schedule_note(state["opt_param_scheduler"], args)
            scheduler.load_state_dict(state["opt_param_scheduler"])
            checkpoint_fit.apply_schedule_override(optimizer, scheduler, args)
            if note and _rank() == 0:
                print(note, flush=True)
    if gate is not None and "cms_accumulators" in state:
        gate.load_accumulators(state["cms_accumulators"])
    if load_rng and "rng_state" in state:
        _set_rng_state(state["rng_state"])
    if args.finetune:
        return 0, 0
    return int(state["iteration"]), int(state["consumed_train_samples"])
