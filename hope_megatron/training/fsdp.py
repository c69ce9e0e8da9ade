"""FSDP (ZeRO-3: parameters, gradients and optimizer state sharded over data parallel) through megatron-core 0.16.1's
own torch-FSDP2 path, `TorchFullyShardedDataParallel` (Megatron-LM's --use-torch-fsdp2).

Why this path: Megatron-FSDP (`use_megatron_fsdp`) drives CUDA streams throughout its buffers and cannot run on
gloo; torch's FSDP2 does, once its device mesh is a CPU mesh on CPU (platform redirect G). Every HOPE layer (a
TransformerLayer) is one FSDP unit; the embedding, final norm and output layer stay in the root unit, so a tied output
layer reads the embedding while it is gathered.

Two fixes on megatron's wrapper (any device): finalize_model_grads calls `finish_grad_sync(force_all_reduce=...)`,
which its base class does not accept; FSDP2 has already reduce-scattered every gradient in the backward, so there is
nothing to finish.

Checkpoints (`full_view`): while saving or loading, every FSDP unit is gathered, the optimizer's sharded parameters
and states (and the CMS accumulators) are swapped for full ones, and megatron's own sharded state dicts are built, so
an FSDP checkpoint is the plain data-parallel one: it resumes under FSDP, DDP or the distributed optimizer's layouts,
at any TP/PP/DP. Each rank holds its full parameters and optimizer states while the checkpoint is written.
"""

from __future__ import annotations

import contextlib
from typing import Dict, List

import torch


def wrap(config, ddp_config, module):
    from megatron.core.distributed.torch_fully_sharded_data_parallel import TorchFullyShardedDataParallel
    from megatron.core.transformer.transformer_layer import TransformerLayer

    class HopeTorchFSDP(TorchFullyShardedDataParallel):
        def finish_grad_sync(self, force_all_reduce: bool = False):
            """FSDP2 reduce-scatters each gradient during the backward; nothing is left to do here."""

    if getattr(config, "transformer_impl", None) is None:
        config.transformer_impl = "local"  # read by megatron's wrapper (which units it may shard)
    return HopeTorchFSDP(config, ddp_config, module, sub_modules_to_wrap={TransformerLayer})


def is_fsdp(model_chunks) -> bool:
    from megatron.core.distributed.torch_fully_sharded_data_parallel import TorchFullyShardedDataParallel

    return any(isinstance(m, TorchFullyShardedDataParallel) for m in model_chunks)


def _units(model_chunks):
    from torch.distributed.fsdp import FSDPModule

    return [m for chunk in model_chunks for m in chunk.modules() if isinstance(m, FSDPModule)]


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _to_full(t):
    return t.full_tensor() if _is_dtensor(t) else t


def _to_shard(full: torch.Tensor, like):
    """`full` cut like the DTensor `like` (same mesh and placements), as a DTensor."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.detach().to(like.dtype), like.device_mesh, like.placements)


class _FullSwap:
    """Full stand-ins for sharded tensors, each made once: a model parameter's is the gathered module parameter, any
    other DTensor's (a main fp32 copy, an optimizer state) its full_tensor(). Records every list slot it fills."""

    def __init__(self, full_params: Dict[int, torch.Tensor]):
        self.full_params = full_params
        self.made: Dict[int, tuple] = {}  # id(shard) -> (shard, full)
        self.slots: list = []  # (list, index, shard)

    def full(self, t):
        if not _is_dtensor(t):
            return t
        if id(t) not in self.made:
            full = self.full_params[id(t)] if id(t) in self.full_params else t.full_tensor()
            self.made[id(t)] = (t, full)
        return self.made[id(t)][1]

    def swap_in(self, lst) -> None:
        for i, t in enumerate(lst):
            if isinstance(t, list):
                self.swap_in(t)
            elif _is_dtensor(t):
                self.slots.append((lst, i, t))
                lst[i] = self.full(t)

    def swap_out(self) -> None:
        for lst, i, t in reversed(self.slots):
            lst[i] = t


# the lists of parameters megatron's optimizers keep (FP32Optimizer: only the torch optimizer's groups)
_GROUP_LISTS = ("float16_groups", "fp32_from_float16_groups", "fp32_from_fp32_groups")


@contextlib.contextmanager
def full_view(model_chunks, optimizer, gate, loading: bool):
    """Inside: the model's parameters are full (gathered) tensors, the optimizer's model and main parameters and
    states are full, and the CMS gate's accumulators too, so megatron's sharded_state_dict / load_state_dict work
    unchanged. On exit after a load every full value is cut back into its FSDP shard; then every unit reshards."""
    if not is_fsdp(model_chunks):
        yield
        return
    from hope_megatron.training.cms_optimizer import _sub_optimizers

    names: List[Dict[str, torch.nn.Parameter]] = [dict(c.named_parameters()) for c in model_chunks]
    units = _units(model_chunks)
    for u in units:
        u.unshard()
    hooks = _suspend_fsdp_state_dict_hooks(model_chunks)
    fulls = [dict(c.named_parameters()) for c in model_chunks]
    swap = _FullSwap({id(sh): fulls[i][n] for i, d in enumerate(names) for n, sh in d.items()})
    states = []  # (torch optimizer, shard param, full param)
    for opt in _sub_optimizers(optimizer):
        for attr in _GROUP_LISTS:
            if isinstance(getattr(opt, attr, None), list):
                swap.swap_in(getattr(opt, attr))
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for group in inner.param_groups:
            shards = [p for p in group["params"] if _is_dtensor(p)]
            swap.swap_in(group["params"])
            for p in shards:
                if p in inner.state:
                    full = swap.full(p)
                    inner.state[full] = {k: _to_full(v) for k, v in inner.state.pop(p).items()}
                    states.append((inner, p, full))
    entries = []
    if gate is not None:
        for e in gate.entries:
            entries.append((e, e.model, e.main, e.acc))
            e.model, e.main, e.acc = swap.full(e.model), swap.full(e.main), _to_full(e.acc)
        cms_params = gate.cms_params
        gate.cms_params = [(k, swap.full(p)) for k, p in cms_params]
    try:
        yield
    finally:
        with torch.no_grad():
            for inner, p, full in states:
                if full in inner.state:
                    inner.state[p] = {k: (_to_shard(v, p) if torch.is_tensor(v) and v.dim() and v.shape == p.shape
                                          else v) for k, v in inner.state.pop(full).items()}
            swap.swap_out()
            if gate is not None:
                for e, model_p, main_p, acc in entries:
                    if loading:
                        acc.copy_(_to_shard(e.acc, acc))
                    e.model, e.main, e.acc = model_p, main_p, acc
                gate.cms_params = cms_params
            if loading:  # every parameter (and main copy) takes the loaded full value into its shard
                for shard, full in swap.made.values():
                    shard.copy_(_to_shard(full, shard))
                made = set(swap.made)
                for i, d in enumerate(names):
                    for n, sh in d.items():
                        if id(sh) not in made and _is_dtensor(sh):
                            sh.copy_(_to_shard(fulls[i][n], sh))
        _restore_hooks(hooks)
        for u in units:
            u.reshard()


_HOOK_DICTS = ("_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _suspend_fsdp_state_dict_hooks(model_chunks):
    """FSDP2 hooks state_dict()/load_state_dict() to flip a module back to its shards first (and to re-derive the
    shards after a load); megatron's sharded_state_dict reads module.state_dict(), so inside full_view those hooks
    are lifted (only FSDP's own, by their defining module) and restored on exit."""
    lifted = []
    for chunk in model_chunks:
        for module in chunk.modules():
            for attr in _HOOK_DICTS:
                table = getattr(module, attr, None)
                if not table:
                    continue
                for key, hook in list(table.items()):
                    fn = getattr(hook, "hook", hook)
                    if getattr(fn, "__module__", "").startswith("torch.distributed.fsdp"):
                        lifted.append((table, key, hook))
                        del table[key]
    return lifted


def _restore_hooks(lifted) -> None:
    for table, key, hook in lifted:
        table[key] = hook
