"""The training loop on gloo: layout parity from the CLI's own initialisation (TP2, PP2, TP2 + sequence parallel, DP2 with
the distributed optimizer, FSDP; the vocabulary padded to 128 rows at TP1 and 256 at TP2), exact resume with CMS
accumulators (plain, distributed optimizer, FSDP), resharding resume, crash-safe tracker, the period-4 CMS rule,
TensorBoard tags. Several checks share one spawned group (process start dominates on 2 cores)."""

from __future__ import annotations

import os

import pytest

from hope_megatron.testing import run_distributed

BASE = ["--hope-variant", "hope", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
        "--ffn-hidden-size", "64", "--seq-length", "16", "--titans-chunk-size", "4", "--cms-levels", "2",
        "--cms-periods", "1", "2", "--micro-batch-size", "2", "--global-batch-size", "4", "--mock-data",
        "--tokenizer-type", "NullTokenizer", "--vocab-size", "60",
        "--lr", "1e-2", "--min-lr", "1e-3", "--lr-warmup-iters", "1", "--clip-grad", "1.0", "--log-interval", "1",
        "--untie-embeddings-and-output-weights", "--seed", "7", "--no-exit-signal-handler"]
REL = 1e-5
P4 = ["--train-iters", "7", "--cms-periods", "1", "4", "--cms-warmup", "0", "2", "--weight-decay", "0.1"]


def _run(argv, hooks=None):
    from hope_megatron.training.arguments import parse_args
    from hope_megatron.training.loop import pretrain

    return pretrain(parse_args(BASE + argv), hooks=hooks)


def _losses(summary):
    return [summary["losses"][i] for i in sorted(summary["losses"])]


def worker_layout(extra, steps=3):
    return _losses(_run(extra + ["--train-iters", str(steps)]))


def worker_resume(tmp, extra):
    """6 straight; 3 saved by --exit-interval; resumed 3 -> 6."""
    straight = _losses(_run(extra + ["--train-iters", "6"]))
    ck = os.path.join(tmp, "ckpt")
    first = _run(extra + ["--train-iters", "6", "--save", ck, "--exit-interval", "3"])
    resumed = _run(extra + ["--train-iters", "6", "--load", ck])
    return dict(straight=straight, first=_losses(first), resumed=_losses(resumed), start=resumed["start_iteration"],
                firings=resumed["cms_firings"], stopped_by=first["stopped_by"])


def worker_resume_reshard(tmp, extra, reshard):
    """worker_resume, then the checkpoint at 3 resumed again under the flags `reshard` (another layout or wrapper)."""
    import torch.distributed as dist

    from hope_megatron.training import checkpointing

    out = worker_resume(tmp, extra)
    ck = os.path.join(tmp, "ckpt")
    if dist.get_rank() == 0:
        checkpointing.write_tracker(ck, 3)  # the resumed run saved 6; go back to the save at 3
    dist.barrier()
    resharded = _run(reshard + ["--train-iters", "6", "--load", ck])
    out.update(resharded=_losses(resharded), resharded_start=resharded["start_iteration"])
    return out


def _crash_and_resume(tmp):
    """Single process: a crash between the shard writes of iteration 6 and the tracker update leaves 3 as latest,
    and resuming from it reproduces iterations 4..6."""
    from hope_megatron.training import checkpointing

    ck = os.path.join(tmp, "crash")
    real = checkpointing.write_tracker

    def crash_at_6(root, it):
        if it == 6:
            raise RuntimeError("simulated crash between shard writes and tracker update")
        real(root, it)

    checkpointing.write_tracker = crash_at_6
    crashed = False
    try:
        _run(["--train-iters", "6", "--save", ck, "--save-interval", "3"])
    except RuntimeError as e:
        crashed = "simulated crash" in str(e)
    finally:
        checkpointing.write_tracker = real
    latest, shards_6 = checkpointing.read_tracker(ck), os.path.isdir(checkpointing.iteration_dir(ck, 6))
    resumed = _run(["--train-iters", "6", "--load", ck])
    return dict(crashed=crashed, latest=latest, shards_6=shards_6, start=resumed["start_iteration"],
                resumed=_losses(resumed))


def worker_tp1_suite(tmp, tp2_ckpt):
    """TP=1 reference, TP2 checkpoint resumed at TP1, the period-4 rule and TensorBoard tags, in one process."""
    out = {}
    tb = os.path.join(tmp, "tb")
    for k in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):  # no credentials: W&B must choose offline itself
        os.environ.pop(k, None)
    os.environ.update(NETRC=os.path.join(tmp, "no-netrc"), WANDB_CONFIG_DIR=os.path.join(tmp, "wandb-config"),
                      WANDB_CACHE_DIR=os.path.join(tmp, "wandb-cache"), WANDB_DATA_DIR=os.path.join(tmp, "wandb-data"))
    ref = _run(["--train-iters", "6", "--tensorboard-dir", tb, "--eval-interval", "3", "--eval-iters", "1",
                "--wandb-project", "hope-test", "--wandb-exp-name", "tp1", "--wandb-save-dir", os.path.join(tmp, "wb")])
    out["ref"] = _losses(ref)
    out["valid"] = ref["valid_losses"]
    out["clip_hit_rate"] = ref["clip_hit_rate"]
    out["reset"] = _losses(_run(["--train-iters", "3", "--hope-reset-at-eod"]))
    resharded = _run(["--train-iters", "6", "--load", tp2_ckpt])
    out["resharded_start"] = resharded["start_iteration"]
    out["resharded"] = _losses(resharded)
    out["crash"] = _crash_and_resume(tmp)
    rec = _Period4Recorder()
    p4 = _run(P4, hooks=rec)
    out["p4"] = dict(changed=rec.changed, steps=rec.steps, firings=p4["cms_firings"], update_err=rec.update_err,
                     fired_at=rec.fired_at, n_params=rec.n_params, other_steps=rec.other_steps, losses=_losses(p4))
    out["p4_fused"] = _losses(_with_fused_adam_stand_in(lambda: _run(P4)))
    return out


def _with_fused_adam_stand_in(fn):
    """Run fn with megatron picking a FusedAdam-like optimizer (one step count per param group), as it does when
    Transformer Engine or Apex imports (issue 16 item 1)."""
    import megatron.core.optimizer as mcore_optimizer

    from tests.unit.training.test_cms_gate import GroupStepAdam

    saved = mcore_optimizer.Adam, mcore_optimizer.USING_PYTORCH_OPTIMIZER
    mcore_optimizer.Adam, mcore_optimizer.USING_PYTORCH_OPTIMIZER = GroupStepAdam, False
    try:
        return fn()
    finally:
        mcore_optimizer.Adam, mcore_optimizer.USING_PYTORCH_OPTIMIZER = saved


class _Period4Recorder:
    """After each optimizer step: did any level-1 parameter change, its AdamW step count, and at the firing the
    relative error of Δθ against AdamW's first step with the accumulated mean gradient."""

    def __init__(self):
        self.prev, self.changed, self.steps, self.fired_at, self.update_err = None, [], [], [], None
        self.n_params, self.other_steps = 0, None

    def after_step(self, i, model, optimizer, gate, firing):
        import torch

        entries = [e for e in gate.entries if e.level == 1]
        self.n_params = len(entries)
        now = [e.main.detach().clone() for e in entries]
        if self.prev is not None:
            self.changed.append(any(not torch.equal(a, b) for a, b in zip(now, self.prev)))
            if 1 in firing:
                self.fired_at.append(i)
                self._check_update(entries, self.prev, now)
        inner = entries[0].opt.optimizer
        self.steps.append(float(inner.state[entries[0].main]["step"]))
        others = [p for g in inner.param_groups for p in g["params"] if all(p is not e.main for e in gate.entries)]
        self.other_steps = float(inner.state[others[0]]["step"])
        self.prev = now

    def _check_update(self, entries, before, after):
        num, den = 0.0, 0.0
        for e, b, a in zip(entries, before, after):
            group = next(g for g in e.opt.optimizer.param_groups if any(p is e.main for p in g["params"]))
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            g = e.main.grad  # ḡ = A/P set by the gate, still attached after the step
            expect = b * (1 - lr * wd) - lr * g / (g.abs() + eps)  # AdamW's first step (m̂ = ḡ, v̂ = ḡ²)
            num += float((a - expect).pow(2).sum())
            den += float((a - b).pow(2).sum())
        self.update_err = (num / max(den, 1e-30)) ** 0.5


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def tp2_results(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("tp2"))
    res = run_distributed(worker_resume, 2, tmp, ["--tensor-model-parallel-size", "2"], timeout=400)
    return tmp, res[0]


@pytest.fixture(scope="module")
def tp1_results(tmp_path_factory, tp2_results):
    tmp = str(tmp_path_factory.mktemp("tp1"))
    return tmp, run_distributed(worker_tp1_suite, 1, tmp, os.path.join(tp2_results[0], "ckpt"), timeout=400)[0]


def test_tp2_resume_equals_straight(tp2_results):
    _, r = tp2_results
    assert r["stopped_by"] == "exit_interval" and r["first"] == r["straight"][:3]
    assert r["start"] == 3
    assert r["resumed"] == r["straight"][3:], (r["resumed"], r["straight"])  # exact: same layout and process count
    assert r["firings"] == [6, 3]  # level 1 (period 2) fired at i=1 | 3, 5 across the save at 3
    assert r["straight"][-1] < r["straight"][0]


def test_crash_before_tracker_keeps_previous_and_resume_is_exact(tp1_results):
    _, r = tp1_results
    c = r["crash"]
    assert c["crashed"] and c["latest"] == 3 and c["shards_6"] and c["start"] == 3, c
    assert c["resumed"] == r["ref"][3:], (c["resumed"], r["ref"])


def test_tp1_parity_and_resharded_resume(tp1_results, tp2_results):
    _, r = tp1_results
    _, t = tp2_results
    for a, b in zip(t["straight"], r["ref"]):
        assert _rel(a, b) < REL, (t["straight"], r["ref"])
    assert r["resharded_start"] == 3
    for a, b in zip(r["resharded"], t["straight"][3:]):  # TP2 checkpoint at 3, continued at TP1
        assert _rel(a, b) < REL, (r["resharded"], t["straight"])


def test_period4_level_changes_only_when_firing(tp1_results):
    _, r = tp1_results
    p4 = r["p4"]
    assert p4["n_params"] >= 4  # fc1, fc2, norm of the level in each of 2 layers
    # period 4, warmup 2: frozen at i=0,1; accumulates from i=2; fires at i=5 only ((5-2+1) % 4 == 0) in i=0..6
    assert p4["fired_at"] == [5]
    assert p4["changed"] == [i == 5 for i in range(1, 7)], p4["changed"]
    assert p4["steps"] == [0, 0, 0, 0, 0, 1, 1] and p4["firings"] == [7, 1]
    assert p4["other_steps"] == 7
    assert p4["update_err"] < 1e-5, p4["update_err"]
    # the same run under a FusedAdam-like optimizer (per-group step) gives the same losses: the level that fired at
    # i = 5 was bias-corrected with its own count 1, not the group's 6 (the loss at i = 6 shows it)
    for a, b in zip(r["p4_fused"], p4["losses"]):
        assert _rel(a, b) < REL, (r["p4_fused"], p4["losses"])


def test_tensorboard_tags(tp1_results):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, r = tp1_results
    acc = EventAccumulator(os.path.join(tmp, "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("lm loss", "perplexity", "learning-rate", "grad-norm", "throughput/tokens-per-second",
                "validation/lm loss", "validation/perplexity", "cms/level0/fired",
                "cms/level1/fired", "cms/level1/update-norm", "cms/level1/firings"):
        assert tag in tags, (tag, sorted(tags))
    assert "throughput/mfu" not in tags  # CPU without --peak-flops: no MFU against a GPU's peak
    norms = [t for t in tags if t.startswith("memory-state-norm/") and t.endswith("self_attention")]
    assert len(norms) >= 2, sorted(tags)  # one per HOPE layer's Titans mixer
    assert all(0 < acc.Scalars(t)[-1].value < float("inf") for t in norms)
    # the chunk clip (default 0.3) per layer: hit rate in [0, 1], mean scale in (0, 1] (issue 16 item 5)
    for kind, lo in (("inner-clip-hit-rate", 0.0), ("inner-clip-scale", 1e-6)):
        clip = [t for t in tags if t.startswith(f"{kind}/") and t.endswith("self_attention")]
        assert len(clip) == 2, sorted(tags)
        assert all(lo <= e.value <= 1.0 for t in clip for e in acc.Scalars(t)) and len(acc.Scalars(clip[0])) == 6
    assert sorted(r["clip_hit_rate"]) == list(range(1, 7)) and all(0 <= v <= 1 for v in r["clip_hit_rate"].values())
    assert [e.value for e in acc.Scalars("cms/level1/fired")] == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert abs(acc.Scalars("lm loss")[0].value - r["ref"][0]) < 1e-5 * abs(r["ref"][0])
    assert sorted(r["valid"]) == [3, 6]


def test_wandb_offline_history_equals_tensorboard(tp1_results):
    """--wandb-project without credentials logs offline, and the run's history holds every TensorBoard scalar at the
    same iteration with the same value (loss, lr, grad norm, throughput, CMS and memory-state scalars)."""
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.unit.training.test_wandb_logging import wandb_history

    tmp, _ = tp1_results
    files = glob.glob(os.path.join(tmp, "wb", "wandb", "offline-run-*", "run-*.wandb"))
    assert len(files) == 1, files
    rows = {row["_step"]: row for row in wandb_history(files[0])}
    acc = EventAccumulator(os.path.join(tmp, "tb"))
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t != "lm loss vs samples"]  # W&B plots it against "consumed samples"
    for tag in ("lm loss", "learning-rate", "grad-norm", "throughput/tokens-per-second", "cms/level1/update-norm"):
        assert tag in tags
    assert any(t.startswith("memory-state-norm/") for t in tags)
    n = 0
    for tag in tags:
        for e in acc.Scalars(tag):
            assert abs(rows[e.step][tag] - e.value) <= 1e-6 * max(abs(e.value), 1e-6), (tag, e.step)
            n += 1
    assert n >= 6 * 10 and [rows[i]["consumed samples"] for i in range(1, 7)] == [4, 8, 12, 16, 20, 24]
    logged = {k for row in rows.values() for k in row if not k.startswith("_")}
    assert logged == set(tags) | {"consumed samples"}, sorted(logged ^ (set(tags) | {"consumed samples"}))


@pytest.fixture(scope="module")
def distopt_results(tmp_path_factory):
    """DP2 + distributed optimizer (+ overlapped grad reduce): resumed at DP2, and resharded to PP2."""
    tmp = str(tmp_path_factory.mktemp("distopt"))
    return run_distributed(worker_resume_reshard, 2, tmp, ["--use-distributed-optimizer", "--overlap-grad-reduce"],
                           ["--use-distributed-optimizer", "--pipeline-model-parallel-size", "2"], timeout=400)[0]


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    """DP2 FSDP (torch FSDP2): resumed under FSDP, and resumed under plain DDP at TP2."""
    tmp = str(tmp_path_factory.mktemp("fsdp"))
    return run_distributed(worker_resume_reshard, 2, tmp, ["--use-torch-fsdp2"],
                           ["--tensor-model-parallel-size", "2"], timeout=400)[0]


@pytest.mark.parametrize("results", ["distopt_results", "fsdp_results"])
def test_sharded_optimizer_parity_resume_and_reshard(results, request, tp1_results):
    r = request.getfixturevalue(results)
    _, ref = tp1_results
    for a, b in zip(r["straight"], ref["ref"]):  # the single process's losses
        assert _rel(a, b) < REL, (r["straight"], ref["ref"])
    assert r["stopped_by"] == "exit_interval" and r["first"] == r["straight"][:3] and r["start"] == 3
    assert r["resumed"] == r["straight"][3:], (r["resumed"], r["straight"])  # exact: same layout
    assert r["firings"] == [6, 3]  # the period-2 level's accumulator crossed the save at 3
    assert r["resharded_start"] == 3
    for a, b in zip(r["resharded"], r["straight"][3:]):
        assert _rel(a, b) < REL, (r["resharded"], r["straight"])


@pytest.mark.parametrize("extra", [["--pipeline-model-parallel-size", "2"],
                                   ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
                                   ["--pipeline-model-parallel-size", "2", "--hope-reset-at-eod"]],
                         ids=["pp2", "tp2_sp", "pp2_reset_at_eod"])
def test_layout_parity(extra, tp1_results):
    _, r = tp1_results
    want = r["reset"] if "--hope-reset-at-eod" in extra else r["ref"][:3]
    losses = run_distributed(worker_layout, 2, extra, timeout=300)[0]
    for a, b in zip(losses, want):
        assert _rel(a, b) < REL, (extra, losses, want)
    if "--hope-reset-at-eod" in extra:  # the mock data holds EOD tokens: the reset changed the run, on both stages
        assert max(_rel(a, b) for a, b in zip(r["reset"], r["ref"])) > 1e-4, (r["reset"], r["ref"])
