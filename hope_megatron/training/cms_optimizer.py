"""The level-gated CMS optimizer step (hope_math.md §4.3) on top of megatron-core's optimizer.

Parameters outside the CMS levels step every iteration. CMS level ℓ with period P_ℓ and warmup W_ℓ:
  i < W_ℓ                         frozen: gradient discarded, parameters and optimizer state unchanged;
  i ≥ W_ℓ                         A_ℓ += g_ℓ(i), the gradient after DP reduction and after the global clip;
  (i − W_ℓ + 1) mod P_ℓ == 0      fire: one AdamW step with ḡ = A_ℓ / n_ℓ (n_ℓ = P_ℓ gradients accumulated since
                                  the last firing) at the LR schedule's value at i; A_ℓ ← 0.
Firing depends on the global iteration i only, so every TP/PP/DP rank agrees without communication.

Mechanism: `gated_step` reproduces megatron's ChainedOptimizer.step (prepare grads -> global grad norm -> clip ->
inner step) and, between the clip and the inner step, accumulates every CMS main parameter's (clipped) gradient and
sets `.grad = None` on the levels that do not fire. Every Adam megatron picks skips parameters without a gradient, so
their moments and their decoupled weight decay move only on firing iterations. The bias-correction count s_ℓ needs
more: torch's Adam/AdamW keep a step per parameter (it then moves only on firings), but the fused Adams megatron
prefers when they import (Transformer Engine's, Apex's) keep ONE step per parameter group and advance it on every
call, which would give a level firing every P iterations the bias correction of step k·P instead of k. So with any
other optimizer class the gate owns the steps (`CMSGate.step`): one inner step per distinct count, the non-CMS
parameters first at the group's own count, then each firing level with every group's step set to s_ℓ − 1 (the
optimizer adds one), and the groups' counts restored to the non-CMS count afterwards. The gate works on the
optimizer's *main* parameters, so it covers the FP32, the mixed-precision and the distributed optimizer (where the
main parameters and the accumulators are this DP rank's shards).

A non-finite global grad norm (or an fp16 overflow) skips the iteration for every parameter and accumulates nothing,
but a level due to fire at i still fires, with the mean of the n_ℓ gradients it accumulated before i (hope_math §4.3:
firing is a function of i alone); a level with nothing accumulated (P_ℓ = 1) has nothing to apply.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch


@dataclasses.dataclass(frozen=True)
class LevelClock:
    """When CMS level ℓ is frozen / accumulating / firing, from the global iteration alone (hope_math §4.3)."""

    period: int
    warmup: int = 0

    def __post_init__(self):
        if self.period < 1 or self.warmup < 0:
            raise ValueError(f"a CMS level needs period >= 1 and warmup >= 0, got period={self.period}, "
                             f"warmup={self.warmup}.")

    def frozen(self, i: int) -> bool:
        return i < self.warmup

    def fires(self, i: int) -> bool:
        return i >= self.warmup and (i - self.warmup + 1) % self.period == 0

    def firings_before(self, i: int) -> int:
        """Number of firing iterations in [0, i)."""
        return max(0, (i - self.warmup) // self.period)


def _sub_optimizers(optimizer):
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def main_model_pairs(optimizer) -> List[Tuple[torch.Tensor, torch.nn.Parameter, object]]:
    """[(main_param, model_param, sub_optimizer)] for every parameter the (chained) megatron optimizer steps."""
    pairs = []
    for opt in _sub_optimizers(optimizer):
        if getattr(opt, "is_stub_optimizer", False):
            continue
        if hasattr(opt, "shard_fp32_from_float16_groups"):  # DistributedOptimizer: this DP rank's shards
            groups = list(zip(opt.model_float16_groups, opt.shard_fp32_from_float16_groups)) + \
                list(zip(opt.model_fp32_groups, opt.shard_fp32_groups))
        elif hasattr(opt, "fp32_from_float16_groups"):  # Float16OptimizerWithFloat16Params
            groups = list(zip(opt.float16_groups, opt.fp32_from_float16_groups)) + \
                [(g, g) for g in opt.fp32_from_fp32_groups]
        else:  # FP32Optimizer: main params are the model params
            groups = [(g["params"], g["params"]) for g in opt.optimizer.param_groups]
        for model_group, main_group in groups:
            for model_p, main_p in zip(model_group, main_group):
                pairs.append((main_p, model_p, opt))
    return pairs


def keeps_step_per_param(inner) -> bool:
    """torch's Adam/AdamW count steps per parameter and only for parameters with a gradient; fused Adams (TE, Apex)
    keep one `group["step"]` that every call advances (module docstring)."""
    return isinstance(inner, (torch.optim.Adam, torch.optim.AdamW))


def _inner_optimizers(optimizer) -> list:
    return [o.optimizer for o in _sub_optimizers(optimizer)
            if not getattr(o, "is_stub_optimizer", False) and getattr(o, "optimizer", None) is not None]


def _get_step(group):
    step = group.get("step")
    return step.clone() if isinstance(step, torch.Tensor) else step


def _set_step(group, value) -> None:
    """group["step"] = value (None: no count yet), in place for a tensor count (capturable fused Adams)."""
    if value is None:
        group.pop("step", None)
    elif isinstance(group.get("step"), torch.Tensor):
        group["step"].copy_(torch.as_tensor(value))
    else:
        group["step"] = value.clone() if isinstance(value, torch.Tensor) else value


def param_names(model_chunks) -> dict:
    """id(model param) -> its name inside the GPTModel (DDP's leading "module." removed)."""
    names = {}
    for chunk in model_chunks:
        for name, p in chunk.named_parameters():
            while name.startswith("module."):
                name = name[len("module."):]
            names[id(p)] = name
    return names


@dataclasses.dataclass
class _Entry:
    level: int
    name: str
    main: torch.Tensor
    model: torch.nn.Parameter
    opt: object
    acc: torch.Tensor  # fp32, the main parameter's shape (a DP shard under the distributed optimizer)


class CMSGate:
    """Accumulators A_ℓ, counts n_ℓ and firing counts for the CMS levels of one model, over one megatron optimizer."""

    def __init__(self, optimizer, model_chunks, level_of: Callable[[str], Optional[int]],
                 schedule: Sequence[Tuple[int, int]]):
        self.clocks = [LevelClock(int(p), int(w)) for p, w in schedule]
        self.optimizer = optimizer
        names = param_names(model_chunks)
        self.entries: List[_Entry] = []
        pairs = main_model_pairs(optimizer)
        self.all_mains = [main for main, _, _ in pairs]  # every main parameter (the gate owns the group steps)
        for main, model, opt in pairs:
            name = names.get(id(model))
            level = level_of(name) if name is not None else None
            if level is None:
                continue
            if level >= len(self.clocks):
                raise ValueError(f"parameter {name} belongs to CMS level {level} but only {len(self.clocks)} "
                                 f"periods were given; pass --cms-periods with one period per level.")
            # zeros_like: under FSDP the main parameter is a DTensor shard and so is its accumulator
            self.entries.append(_Entry(level, name, main, model, opt,
                                       torch.zeros_like(main, dtype=torch.float32).detach()))
        # every CMS parameter of this rank's chunks in named_parameters order, the same on every DP rank (under the
        # distributed optimizer a DP rank has entries only for the parameters it holds a slice of)
        self.cms_params: List[Tuple[str, torch.nn.Parameter]] = []
        for ci, chunk in enumerate(model_chunks):
            for name, p in chunk.named_parameters():
                while name.startswith("module."):
                    name = name[len("module."):]
                if level_of(name) is not None:
                    self.cms_params.append((f"{ci}/{name}", p))
        self.counts = [0] * len(self.clocks)  # n_ℓ: gradients accumulated since the last firing
        self.firings = [0] * len(self.clocks)  # s_ℓ: optimizer steps taken by the level
        self.last_update_norm = [0.0] * len(self.clocks)
        self._before = {}

    @property
    def num_levels(self) -> int:
        return len(self.clocks)

    def levels_present(self) -> List[int]:
        return sorted({e.level for e in self.entries})

    @torch.no_grad()
    def before_inner_step(self, i: int) -> List[int]:
        """Called after the clip, before the inner optimizer step; returns the levels firing at iteration i."""
        firing = [lvl for lvl, c in enumerate(self.clocks) if c.fires(i)]
        accumulating = [lvl for lvl, c in enumerate(self.clocks) if not c.frozen(i)]
        self._before = {}
        for e in self.entries:
            clock = self.clocks[e.level]
            grad = e.main.grad
            if clock.frozen(i):
                e.main.grad = None  # §4.3: frozen while i < W_ℓ; the gradient is discarded
                continue
            if grad is not None:
                e.acc.add_(grad.float())
            if e.level in firing:
                n = self.counts[e.level] + 1
                e.main.grad = (e.acc / n).to(e.main.dtype)  # ḡ = A_ℓ / P_ℓ
                self._before[id(e.main)] = e.main.detach().float().clone()
            else:
                e.main.grad = None  # parameters and optimizer state untouched until the level fires
        for lvl in accumulating:
            self.counts[lvl] += 1
        return firing

    @torch.no_grad()
    def fire_without_gradient(self, i: int) -> List[int]:
        """Iteration i is skipped (non-finite grad norm): no parameter steps and nothing is accumulated, but each
        level due at i fires with the mean of what it accumulated before i (module docstring). Returns those levels."""
        firing = [lvl for lvl, c in enumerate(self.clocks) if c.fires(i) and self.counts[lvl] > 0]
        self._before = {}
        for p in self.all_mains:
            p.grad = None
        for e in self.entries:
            if e.level in firing:
                e.main.grad = (e.acc / self.counts[e.level]).to(e.main.dtype)
                self._before[id(e.main)] = e.main.detach().float().clone()
        return firing

    @torch.no_grad()
    def step(self, optimizer, firing: List[int], others: bool = True) -> bool:
        """The inner optimizer step of this iteration: the non-CMS parameters (when `others`) and the firing levels,
        each level bias-corrected with its own count s_ℓ whatever the optimizer class (module docstring)."""
        inners = _inner_optimizers(optimizer)
        if all(keeps_step_per_param(o) for o in inners):
            return bool(optimizer.step_with_ready_grads())
        grads = {id(p): p.grad for p in self.all_mains}
        cms = {id(e.main) for e in self.entries}
        passes = [({id(p) for p in self.all_mains if id(p) not in cms}, None)] if others else []
        by_count = {}
        for lvl in firing:
            by_count.setdefault(self.firings[lvl] + 1, []).append(lvl)
        for count, lvls in sorted(by_count.items()):
            passes.append(({id(e.main) for e in self.entries if e.level in lvls}, count))
        groups = [g for o in inners for g in o.param_groups]
        own = [_get_step(g) for g in groups]  # the non-CMS count of every group
        ok = True
        try:
            for n, (ids, count) in enumerate(passes):
                for p in self.all_mains:
                    p.grad = grads[id(p)] if id(p) in ids else None
                for g, natural in zip(groups, own):
                    _set_step(g, natural if count is None else count - 1)  # fused Adams add one before using it
                if n + 1 < len(passes):
                    for o in inners:
                        o.step()
                else:  # the last pass through megatron: it also copies main -> model parameters
                    ok = bool(optimizer.step_with_ready_grads())
                if count is None:
                    own = [_get_step(g) for g in groups]
        finally:
            for g, natural in zip(groups, own):
                _set_step(g, natural)
            for p in self.all_mains:
                p.grad = grads[id(p)]
        return ok

    @torch.no_grad()
    def after_inner_step(self, firing: List[int]) -> None:
        sq = [0.0] * self.num_levels
        for e in self.entries:
            if e.level in firing:
                before = self._before.pop(id(e.main), None)
                if before is not None and _counts_for_norm(e.model):
                    sq[e.level] += float((e.main.detach().float() - before).pow(2).sum())
                e.acc.zero_()
        for lvl in firing:
            self.counts[lvl] = 0
            self.firings[lvl] += 1
        self.last_update_norm = _allreduce_norms(sq, self._distributed())

    def _distributed(self) -> bool:
        """From the optimizer, not the entries: a DP rank may own no CMS shard, yet all ranks must agree."""
        return any(hasattr(o, "shard_fp32_from_float16_groups") for o in _sub_optimizers(self.optimizer))

    # ---------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {"schedule": [[c.period, c.warmup] for c in self.clocks], "counts": list(self.counts),
                "firings": list(self.firings)}

    def load_state_dict(self, state: dict) -> None:
        saved = [tuple(x) for x in state["schedule"]]
        mine = [(c.period, c.warmup) for c in self.clocks]
        counts = list(state["counts"])
        if saved != mine and any(counts):
            raise ValueError(f"the checkpoint's CMS accumulators were built under (period, warmup) {saved} but this "
                             f"run uses {mine}; resume with the saved --cms-periods/--cms-warmup or start from a "
                             f"checkpoint taken right after all levels fired.")
        n = self.num_levels
        self.counts = (counts + [0] * n)[:n]
        self.firings = (list(state["firings"]) + [0] * n)[:n]

    def sharded_accumulators(self, model_sharded_state_dict, prefix: str = "cms_accumulator") -> dict:
        """A_ℓ as ShardedTensors laid out exactly like their parameters, so they reshard with TP/PP/DP (§7.1).
        Under the distributed optimizer each DP rank holds a flat slice of A_ℓ; the slices are summed over the DP
        group into the parameter's shape first (every element lives on exactly one DP rank), so the checkpoint is the
        same as the plain optimizer's."""
        from megatron.core.dist_checkpointing.optimizer import get_param_id_to_sharded_param_map, \
            make_sharded_optimizer_tensor

        if not self.cms_params:
            return {}
        params = [p for _, p in self.cms_params]
        id_map = get_param_id_to_sharded_param_map(model_sharded_state_dict, params)
        entry = {id(e.model): e for e in self.entries}
        out = {}
        for idx, (key, p) in enumerate(self.cms_params):
            sh = id_map.get(idx)
            if sh is None:
                raise RuntimeError(f"CMS parameter {key} has no entry in the model's sharded state dict.")
            out[key] = make_sharded_optimizer_tensor(sh, self._model_shaped(p, entry.get(id(p))), prefix)
        return out

    @staticmethod
    def _dp_range(e):
        """(start, end) of this DP rank's slice of the flattened parameter, or None without the distributed
        optimizer."""
        if not hasattr(e.opt, "_get_model_param_range_map"):
            return None
        r = e.opt._get_model_param_range_map(e.model)["param"]
        return r.start, r.end

    def _model_shaped(self, param, e) -> torch.Tensor:
        """A_ℓ of `param` in its shape; `e` is its entry on this rank (None: no slice here)."""
        if not self._distributed():
            return e.acc if e is not None else torch.zeros(param.shape, dtype=torch.float32, device=param.device)
        import torch.distributed as dist
        from megatron.core import parallel_state as ps

        full = torch.zeros(param.numel(), dtype=torch.float32, device=param.device)
        if e is not None:
            start, end = self._dp_range(e)
            full[start:end] = e.acc.reshape(-1)
        if dist.is_initialized():
            dist.all_reduce(full, group=ps.get_data_parallel_group(with_context_parallel=True))
        return full.view(param.shape)

    @torch.no_grad()
    def load_accumulators(self, loaded: dict) -> None:
        keys = {id(p): key for key, p in self.cms_params}
        for e in self.entries:
            key = keys.get(id(e.model))
            if key in loaded:
                t = loaded[key].to(e.acc.dtype)
                rng = self._dp_range(e)
                if rng is not None:
                    t = t.reshape(-1)[rng[0]:rng[1]]
                e.acc.copy_(t.view_as(e.acc))


def _counts_for_norm(param) -> bool:
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    return bool(param_is_not_tensor_parallel_duplicate(param))


def _allreduce_norms(sq: List[float], distributed_opt: bool) -> List[float]:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if not sq:
        return []
    t = torch.tensor(sq, dtype=torch.float64)
    if dist.is_initialized():
        group = None if distributed_opt else ps.get_model_parallel_group()
        dist.all_reduce(t, group=group)
    return [math.sqrt(max(float(x), 0.0)) for x in t]


@torch.no_grad()
def gated_step(optimizer, gate: Optional[CMSGate], iteration: int):
    """One optimizer step at global iteration i; returns (stepped, grad_norm, firing_levels).

    The same sequence as megatron's ChainedOptimizer.step, with the CMS gate between clip and step. A non-finite
    global grad norm skips the step (the loop counts it): nothing is accumulated and no parameter outside the CMS
    levels moves, but levels due at i fire with what they accumulated before (module docstring).
    """
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    found_inf = optimizer.prepare_grads()
    grad_norm = None if found_inf else optimizer.get_grad_norm()
    if found_inf or grad_norm is None or not math.isfinite(float(grad_norm)):
        firing = gate.fire_without_gradient(iteration) if gate is not None else []
        if firing:
            gate.step(optimizer, firing, others=False)
            gate.after_inner_step(firing)
        return False, (None if grad_norm is None else float(grad_norm)), firing
    for opt in _sub_optimizers(optimizer):
        if getattr(opt, "is_stub_optimizer", False) or not opt.get_parameters():
            continue
        if opt.config.clip_grad > 0.0:
            clip_grad_by_total_norm_fp32(opt.get_parameters(), max_norm=opt.config.clip_grad, total_norm=grad_norm)
    if gate is None:
        return bool(optimizer.step_with_ready_grads()), float(grad_norm), []
    firing = gate.before_inner_step(iteration)
    ok = gate.step(optimizer, firing)
    gate.after_inner_step(firing)
    return bool(ok), float(grad_norm), firing
