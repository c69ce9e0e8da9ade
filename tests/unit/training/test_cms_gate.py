"""The level-gated CMS step (hope_math §4.3) under both kinds of Adam megatron picks: torch's AdamW (a step count per
parameter) and a stand-in for Transformer Engine's FusedAdam (one count per parameter group, advanced on every call).
Each level must be bias-corrected with its own firing count s_ℓ and decayed only when it fires; a skipped iteration
(non-finite grad norm) still fires the levels due then, with what they accumulated before it (issue 16 items 1, 6)."""

from __future__ import annotations

import pytest
import torch

from hope_megatron.layers.cms import cms_level_of
from hope_megatron.training.cms_optimizer import CMSGate, gated_step

LR, WD, BETAS, EPS = 1e-2, 0.1, (0.9, 0.95), 1e-8
NAMES = ("embedding.word_embeddings.weight",              # not CMS: steps every (finite) iteration
         "decoder.layers.0.mlp.levels.0.mlp.linear_fc1.weight",   # level 0: period 1
         "decoder.layers.0.mlp.levels.1.mlp.linear_fc1.weight",   # level 1: period 3, warmup 1
         "decoder.layers.0.mlp.levels.1.pre_mlp_layernorm.weight")  # level 1, in the no-decay group
SCHEDULE = [(1, 0), (3, 2)]
ITERS = 10  # level 1: frozen at i = 0, 1; fires at i = 4, 7 (the skip case gives i = 7 a non-finite gradient)


class GroupStepAdam(torch.optim.Optimizer):
    """AdamW that behaves like TE's FusedAdam (adam_w_mode): one `group["step"]`, incremented on every call for each
    non-empty group, used for the bias correction of every parameter with a gradient; parameters without one skip."""

    def __init__(self, params, lr, betas, eps, weight_decay, adam_w_mode=True):
        assert adam_w_mode, "the stand-in implements AdamW (megatron's default, decoupled_weight_decay=True)"
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if not group["params"]:
                continue
            group["step"] = group["step"] + 1 if "step" in group else 1
            t, (b1, b2) = group["step"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.addcdiv_(m / (1 - b1 ** t), (v / (1 - b2 ** t)).sqrt().add_(group["eps"]), value=-group["lr"])


@pytest.fixture(scope="module")
def mp_group():
    from hope_megatron import platform

    info = platform.initialize(1, 1, seed=1234)
    yield info
    platform.teardown()


def _model():
    root = torch.nn.Module()
    for i, name in enumerate(NAMES):
        mod = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, torch.nn.Module())
            mod = getattr(mod, part)
        g = torch.Generator().manual_seed(i)
        mod.register_parameter(leaf, torch.nn.Parameter(torch.randn(3, 4, generator=g)))
    return root


def _grad(i, k, skipped=None):
    g = torch.randn(3, 4, generator=torch.Generator().manual_seed(100 * i + k))
    return g * float("inf") if i == skipped and k == 0 else g


def _reference(params, skipped_at):
    """Each parameter as its own torch AdamW, stepped exactly when hope_math §4.3 says, with the level's mean."""
    opts = [torch.optim.AdamW([p], lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0 if k == 3 else WD)
            for k, p in enumerate(params)]
    acc, cnt = [torch.zeros(3, 4) for _ in params], [0] * len(params)
    for i in range(ITERS):
        skipped = i == skipped_at
        for k, (p, opt) in enumerate(zip(params, opts)):
            if cms_level_of(NAMES[k]) != 1:  # non-CMS and level 0 (period 1): every finite iteration
                if not skipped:
                    p.grad = _grad(i, k)
                    opt.step()
                continue
            if i < 2:  # frozen: the gradient is discarded
                continue
            if not skipped:
                acc[k] += _grad(i, k)
                cnt[k] += 1
            if (i - 1) % 3 == 0 and cnt[k]:  # (i − W + 1) mod P = 0
                p.grad = acc[k] / cnt[k]
                opt.step()
                acc[k], cnt[k] = torch.zeros(3, 4), 0
    return params


@pytest.mark.parametrize("skipped", [None, 7], ids=["finite", "skip_at_firing"])
@pytest.mark.parametrize("adam", [torch.optim.AdamW, GroupStepAdam], ids=["torch_adamw", "fused_adam_like"])
def test_each_level_steps_with_its_own_count(mp_group, adam, skipped):
    from megatron.core.optimizer import OptimizerConfig
    from megatron.core.optimizer.optimizer import FP32Optimizer

    model = _model()
    params = [model.get_parameter(n) for n in NAMES]
    groups = [{"params": params[:3], "weight_decay": WD}, {"params": params[3:], "weight_decay": 0.0},
              {"params": [], "weight_decay": WD}]  # megatron aligns groups across ranks: some may be empty here
    inner = adam(groups, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    optimizer = FP32Optimizer(inner, OptimizerConfig(optimizer="adam", lr=LR, clip_grad=0.0), lambda o, c: None)
    gate = CMSGate(optimizer, [model], cms_level_of, SCHEDULE)
    stepped, fired = [], {}
    for i in range(ITERS):
        for k, p in enumerate(params):
            p.grad = _grad(i, k, skipped)
        ok, _, firing = gated_step(optimizer, gate, i)
        stepped.append(ok)
        fired[i] = firing
    ref = _reference([p.detach().clone().requires_grad_(True) for p in _model().parameters()], skipped)
    finite = ITERS - (skipped is not None)
    assert stepped == [i != skipped for i in range(ITERS)]
    assert fired[4] == [0, 1] and fired[7] == ([1] if skipped else [0, 1]) and gate.firings == [finite, 2]
    for name, got, want in zip(NAMES, params, ref):
        err = (got.detach() - want.detach()).abs().max().item()
        assert err < 2e-6, f"{name}: max |Δ| {err:.3g} against per-level AdamW"
    if adam is GroupStepAdam:  # the groups' own count stays the non-CMS parameters' (finite iterations)
        assert [g.get("step") for g in inner.param_groups] == [finite, finite, None]
