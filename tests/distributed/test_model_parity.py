"""Every variant at TP=2, PP=2 and TP2xPP2 (a hybrid pattern also at PP2 x VPP2, interleaved) equals the
single-process model built from the same full weights (hope_math.md §8 tests 11-12): loss and every parameter's
gradient, fp32, relative 1e-5, through megatron-core's own pipeline schedules. Then a dist checkpoint saved at
TP2xPP2 loads at TP=1 and at PP=2 with the identical loss.

One 4-rank gloo group does it all (a reference layout first, then the parallel ones) to keep the cost to one spawn.
"""

from __future__ import annotations

import os

import pytest
import torch

from hope_megatron.testing import run_distributed

VOCAB, SEQ, MICRO, NUM_MICRO = 64, 16, 2, 2
BASE = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, titans_chunk_size=4,
            params_dtype=torch.float32)
CASES = {
    "hope": ("hope", dict(titans_proj_chunk_size=2, inner_clip=0.5, cms_levels=2)),
    # update dropout (the pilot/mid/target configs' 0.2, here 0.5): per-layer streams, masks over all heads, sliced
    "hope_update_dropout": ("hope", dict(update_dropout=0.5, inner_clip=0.5, cms_levels=1)),
    "hope_attention": ("hope_attention", dict(cms_levels=2)),
    "titans": ("titans", {}),
    "transformer": ("transformer", {}),
    "deltanet": ("deltanet", dict(titans_chunk_size=1)),
    "swa": ("swa", dict(swa_window=5)),
    "hybrid": ("hope", dict(num_layers=4, layer_pattern="HDWT", cms_levels=2, cms_variant="independent",
                            cms_hidden_sizes=[32, 64])),
}
CKPT_CASE = "hybrid"
LAYOUTS = [(2, 1, None), (1, 2, None), (2, 2, None), (1, 2, 2)]  # (TP, PP, virtual pipeline size)
VPP_CASES = ("hybrid",)  # interleaved 1F1B needs num_layers divisible by PP x VPP
RTOL = 1e-5


def _config(case, tp, pp, vpp=None):
    from hope_megatron import platform
    from hope_megatron.config import HopeConfig

    variant, extra = CASES[case]
    cfg = HopeConfig.for_variant(variant, **{**BASE, **extra}, tensor_model_parallel_size=tp,
                                 pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vpp)
    platform.configure(cfg)
    return cfg


def _build(case, tp, pp, vpp=None):
    """This rank's model chunks (one, or one per virtual stage)."""
    from megatron.core import parallel_state as ps

    from hope_megatron.models import build_model

    cfg = _config(case, tp, pp, vpp)
    return [build_model(cfg, VOCAB, SEQ, pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp),
                        post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp), vp_stage=vp)
            for vp in (range(vpp) if vpp else [None])]


def _forward_step(data_iterator, model):
    tokens = next(data_iterator)
    inp, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    pos = torch.arange(SEQ).unsqueeze(0).expand_as(inp)
    out = model(inp, pos, None, labels=labels)

    def loss_func(output_tensor):
        loss = output_tensor.float().mean()
        return loss, {"lm loss": loss.detach().clone()}

    return out, loss_func


def _run(chunks, forward_only=False):
    """Loss (last stage, else None) and grads {local name: grad} over NUM_MICRO micro-batches (same on all ranks)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    g = torch.Generator().manual_seed(7)
    data = [torch.randint(0, VOCAB, (MICRO, SEQ + 1), generator=g) for _ in range(NUM_MICRO)]
    for c in chunks:
        c.zero_grad(set_to_none=True)
    iterators = iter(data) if len(chunks) == 1 else [iter(data) for _ in chunks]  # interleaved: one per chunk
    losses = get_forward_backward_func()(
        forward_step_func=_forward_step, data_iterator=iterators, model=chunks, num_microbatches=NUM_MICRO,
        seq_length=SEQ, micro_batch_size=MICRO, forward_only=forward_only)
    loss = sum(float(x["lm loss"]) for x in losses) / NUM_MICRO if losses else None
    grads = [{n: p.grad.detach().clone() for n, p in c.named_parameters() if p.grad is not None} for c in chunks]
    return loss, grads


def _rel(a, b, floor):
    """err(a, b) of hope_math §8, with the denominator floored at `floor` (1e-4 of the model's whole reference
    gradient norm): a parameter whose gradient is 1e-6 of the rest (a saturated alpha bias) is held to fp32
    round-off of the model's gradient, not to a relative error of its own cancellation noise."""
    return float((a - b).norm() / max(float(b.norm()), floor))


def parity_worker(ckpt_dir):
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from hope_megatron import platform
    from hope_megatron.models.full_weights import global_name, load_full_state_dict, shard_full_tensor

    import time
    t0 = time.time()
    platform.initialize(1, 1, seed=11)
    ref = {}
    for case in CASES:
        (model,) = chunks = _build(case, 1, 1)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():  # move off the init so readouts, norms and biases all carry gradient
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        loss, (grads,) = _run(chunks)
        ref[case] = ({n: p.detach().clone() for n, p in model.named_parameters()}, loss, grads)

    out = {"layouts": {}, "missing_grads": [], "ckpt": {}, "times": [("ref", time.time() - t0)]}
    for tp, pp, vpp in LAYOUTS:
        platform.initialize(tp, pp, virtual_pipeline_model_parallel_size=vpp, seed=11)
        for case in CASES if vpp is None else VPP_CASES:
            full_sd, ref_loss, ref_grads = ref[case]
            floor = 1e-4 * float(torch.sqrt(sum(g.pow(2).sum() for g in ref_grads.values())))
            chunks = _build(case, tp, pp, vpp)
            for model in chunks:
                load_full_state_dict(model, full_sd)
            loss, grads = _run(chunks)
            worst = abs(loss - ref_loss) / abs(ref_loss) if loss is not None else 0.0
            where = "loss"
            for model, chunk_grads in zip(chunks, grads):
                for name, p in model.named_parameters():
                    if name not in chunk_grads:
                        out["missing_grads"].append((tp, pp, vpp, case, name))
                        continue
                    expect = shard_full_tensor(model, name, ref_grads[global_name(model, name)])
                    err = _rel(chunk_grads[name], expect, floor)
                    if err > worst:
                        worst, where = err, f"{name} (|grad| {float(expect.norm()):.2e})"
            out["layouts"][(tp, pp, vpp, case)] = (worst, loss, ref_loss, where)
            if (tp, pp, vpp) == (2, 2, None) and case == CKPT_CASE:
                if dist.get_rank() == 0:
                    os.makedirs(ckpt_dir, exist_ok=True)
                dist.barrier()
                dist_checkpointing.save(chunks[0].sharded_state_dict(), ckpt_dir)
                out["ckpt"]["saved_loss"] = loss
        out["times"].append(((tp, pp, vpp), time.time() - t0))
    for tp, pp in [(1, 1), (1, 2)]:
        platform.initialize(tp, pp, seed=99)  # a different init, so only the load can make the losses agree
        chunks = _build(CKPT_CASE, tp, pp)
        model = chunks[0]
        fresh, _ = _run(chunks, forward_only=True)
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), ckpt_dir))
        loaded, _ = _run(chunks, forward_only=True)
        out["ckpt"][(tp, pp)] = (fresh, loaded)
    out["times"].append(("ckpt", time.time() - t0))
    out["ref_losses"] = {c: ref[c][1] for c in CASES}
    return out


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    return run_distributed(parity_worker, 4, str(tmp_path_factory.mktemp("ckpt") / "tp2pp2"), timeout=400)


def test_every_variant_matches_single_process_in_every_layout(parity):
    worst = {}
    print("\nphase end times (s):", parity[0]["times"])
    for rank_out in parity:
        assert rank_out["missing_grads"] == [], f"parameters without a gradient: {rank_out['missing_grads'][:5]}"
        for (tp, pp, vpp, case), (err, _, _, where) in rank_out["layouts"].items():
            worst[case] = max(worst.get(case, 0.0), err)
            assert err <= RTOL, (f"{case} at TP={tp} PP={pp} VPP={vpp}: largest relative difference {err:.3e} > "
                                 f"{RTOL} in {where}")
    print("\nlargest relative difference (loss and every grad) over TP2, PP2, TP2xPP2 (hybrid also PP2xVPP2):")
    for case, err in worst.items():
        print(f"  {case:15s} {err:.3e}")
    assert set(worst) == set(CASES)
    assert any(k[2] == 2 for r in parity for k in r["layouts"]), "the interleaved (VPP) layout did not run"


def test_last_stage_losses_are_the_reference(parity):
    """The losses themselves (not only their errors): last-stage ranks report, and match the TP1/PP1 loss."""
    for rank_out in parity:
        for (tp, pp, vpp, case), (_, loss, ref_loss, _) in rank_out["layouts"].items():
            if loss is not None:
                assert loss == pytest.approx(ref_loss, rel=RTOL), (case, tp, pp, vpp)
                assert 3.0 < ref_loss < 6.0, f"{case}: reference loss {ref_loss} is not near ln(64) = 4.16"


def test_checkpoint_saved_at_tp2pp2_loads_at_tp1_and_pp2(parity):
    saved = [r["ckpt"]["saved_loss"] for r in parity if r["ckpt"].get("saved_loss") is not None]
    assert saved, "no last-stage rank reported the TP2xPP2 loss"
    for layout in [(1, 1), (1, 2)]:
        got = [r["ckpt"][layout] for r in parity if r["ckpt"][layout][1] is not None]
        assert got, f"no rank reported a loss at TP/PP {layout}"
        for fresh, loaded in got:
            assert loaded == pytest.approx(saved[0], rel=RTOL), (layout, loaded, saved[0])
            assert abs(fresh - loaded) > 1e-3, f"at {layout} a fresh model already had the checkpoint's loss"
    # identical, not just close: the loaded weights are exactly the ones that layout ran with before the save
    r = next(r for r in parity if r["ckpt"][(1, 1)][1] is not None)
    assert r["ckpt"][(1, 1)][1] == r["ref_losses"][CKPT_CASE]
    r = next(r for r in parity if r["ckpt"][(1, 2)][1] is not None)
    assert r["ckpt"][(1, 2)][1] == r["layouts"][(1, 2, None, CKPT_CASE)][1]
