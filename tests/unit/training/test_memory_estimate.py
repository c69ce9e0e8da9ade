"""hope_megatron.training.memory_estimate: the preflight's per-GPU memory model, held to hand counts and to
measurements of the op's saved set (docs/training.md "Memory preflight")."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from hope_megatron.ops import TitansOpConfig
from hope_megatron.training import memory_estimate as me
from hope_megatron.training import saved_memory
from hope_megatron.training.arguments import parse_args
from hope_megatron.training.model_setup import build_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PILOT_OP = TitansOpConfig(chunk_size=8, inner_clip=0.3, update_dropout=0.2)


def _layout(**kw):
    base = dict(tp=1, pp=1, dp=8, vpp=None, micro=2, num_micro=4, seq=64, sp=False, dist_opt=True, recompute=None,
                recompute_method=None, recompute_num_layers=None, bf16=True, fp8=False, transformer_impl="local")
    base.update(kw)
    return me.Layout(**base)


def _tiny():
    args = parse_args(["--config", os.path.join(REPO, "configs", "hope", "tiny.yaml"), "--mock-data"])
    return build_config(args, configure=False)


def test_weights_gradients_optimizer_by_hand():
    from hope_megatron.models.summary import count_parameters

    config = _tiny()
    fam = count_parameters(config, 8192, tied=False)
    cms = sum(v for k, v in fam.items() if k.startswith("cms_level_"))
    est = me.estimate(config, _layout(), 8192, tied=False)["items"]
    assert est["weights"] == pytest.approx(2 * fam["total"])            # BF16 weights
    assert est["gradients"] == pytest.approx(4 * fam["total"])          # FP32 grad buffer
    assert est["optimizer state"] == pytest.approx((12 * fam["total"] + 8 * cms) / 8)  # sharded over DP=8
    fp32 = me.estimate(config, _layout(bf16=False, dist_opt=False), 8192, tied=False)["items"]
    assert fp32["optimizer state"] == pytest.approx(8 * fam["total"] + 8 * cms)


def test_micro_batches_in_flight():
    assert me.in_flight(_layout(pp=4, num_micro=8), 0) == 4 and me.in_flight(_layout(pp=4, num_micro=8), 3) == 1
    assert me.in_flight(_layout(pp=4, num_micro=2), 0) == 2
    # interleaved PP=2 x 2 chunks: stage 0 runs 2 + 2 warm-up chunk forwards + 1 = 5 chunks of half its layers
    assert me.in_flight(_layout(pp=2, vpp=2, num_micro=8), 0) == 2.5


@pytest.mark.parametrize("recompute", [False, True])
def test_chunked_extrapolation_matches_a_measurement(recompute):
    # the preflight measures 1 and 2 heads at 4 and 8 chunks and extrapolates the part that grows with heads; hold it
    # to direct measurements at 2 and 4 heads of a longer sequence
    op = dataclasses.replace(PILOT_OP, recompute_chunks=recompute)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    got = saved_memory.measured_op_bytes(op, "chunked", 1, 4, 128, 16)
    m2, m4 = (saved_memory.measure_saved_bytes(op, "chunked", 1, h, 128, 16, torch.bfloat16) for h in (2, 4))
    torch.set_num_threads(threads)
    assert m4["live"] is not None  # glibc (Linux): the live measure exists here
    assert got == pytest.approx(2 * (m4["live"] - m2["live"]), rel=0.05)
    if not recompute:  # without checkpointing the hooks see what stays allocated, to a few per cent
        assert got == pytest.approx(m4["hooks"], rel=0.1)
    else:  # checkpoint keeps the chunk states outside autograd's hooks: only the live measure sees them
        assert got > 5 * m4["hooks"]
    assert got > 10 * (4 * 128 * 16 * 2 * 2)  # far more than the bf16 inputs x̃, q alone


def test_full_recompute_keeps_only_unit_inputs():
    config = _tiny()
    lay = _layout(recompute="full", recompute_method="uniform", recompute_num_layers=1)
    act = me.stage_activations(config, lay, 0, 8192)
    plain = me.stage_activations(config, _layout(), 0, 8192)
    assert act["memory op"] == 0 and plain["memory op"] > 0
    logits = 2 * 64 * (2 * 2 * 64 + 4) + 2 * 64 * (2 + 4) * 8192
    assert act["other"] == pytest.approx(config.num_layers * 2 * 64 * 2 * 64 + logits)


def test_every_ablation_fits_the_pilot_layout():
    # configs/hope/ablations/*.yaml run through examples/pretrain_hope_160m.sh: TP=1, DP=8, micro 8, BF16, dist-opt
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "hope", "ablations", "*.yaml"))):
        args = parse_args(["--config", path, "--mock-data", "--bf16", "--use-distributed-optimizer",
                           "--global-batch-size", "256"])
        est = me.estimate(build_config(args, configure=False), me.layout_from_args(args, 8), 32000, False)
        assert 5 * me.GIB < est["total"] < 80 * me.GIB, (os.path.basename(path), est["total"] / me.GIB)


_PROBE = r"""
import json, torch
from hope_megatron.ops import TitansOpConfig, triton as T
from hope_megatron.training.saved_memory import measure_saved_bytes
cfg = TitansOpConfig(chunk_size=8, inner_clip=0.3, update_dropout=0.2)
measure_saved_bytes(cfg, "triton", 1, 2, 64, 16, torch.bfloat16)  # warm-up: the interpreter's one-time allocations
r = measure_saved_bytes(cfg, "triton", 1, 2, 256, 16, torch.bfloat16)
print(json.dumps({**r, "formula": T.saved_bytes(cfg, 1, 2, 256, 16, input_bytes=2)}))
"""


def test_triton_formula_matches_the_kernels_saved_set():
    """ops.triton.saved_bytes (the preflight's figure) against what the fused kernels really keep, under Triton's
    interpreter on CPU (where the kernels always run: a fallback to the chunked form is a failure here)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert not r["fell_back"], r
    assert 0.8 * r["formula"] <= r["hooks"] <= 1.05 * r["formula"], r
    assert r["live"] is None or r["live"] <= 1.1 * r["formula"], r  # nothing kept outside save_for_backward


def test_refusal_names_a_fix_that_fits():
    # the pilot with the chunked form (~1.1 GiB per layer and sequence) does not fit 80 GiB; full recompute does
    args = parse_args(["--config", os.path.join(REPO, "configs", "hope", "pilot.yaml"), "--mock-data", "--bf16",
                       "--use-distributed-optimizer", "--titans-impl", "chunked"])
    config, lay = build_config(args, configure=False), me.layout_from_args(args, 8)
    lines, refusal = me.report(config, lay, 32000, False, 80)
    assert refusal is not None and refusal.startswith("the estimated peak memory per GPU is ~")
    assert "above GPU_MEMORY_GB=80; set RECOMPUTE=full" in refusal, refusal
    fixed = me.estimate(config, dataclasses.replace(lay, recompute="full", recompute_num_layers=1), 32000, False)
    assert fixed["total"] < 80 * me.GIB and f"estimated ~{fixed['total'] / me.GIB:.1f} GiB" in refusal
    assert lines[0].startswith("memory per GPU    ~") and "chunked form" in lines[1]
    assert me.report(config, lay, 32000, False, 1000)[1] is None
