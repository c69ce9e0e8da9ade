"""Case 6: a NaN streak saves nothing, moves the tracker back to the last checkpoint whose next iteration was finite,
exits 3 and names the relaunch; relaunched with --override-opt-param-scheduler the new --lr is the one used (and the
run says which schedule applies); without the flag the checkpoint's schedule applies, as the message said."""

from __future__ import annotations

import math
import os

import pytest

from tests.robustness.conftest import assert_no_traceback, losses, train_cli


@pytest.fixture(scope="module")
def diverged(trained, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("div") / "ckpt")
    args = [a for a in trained["args"]]
    args[args.index("--lr") + 1] = "300"  # warmup 1: iteration 1 trains at 300 and blows the weights up
    args[args.index("--lr-warmup-iters") + 1] = "3"
    proc = train_cli(args + ["--save", save, "--save-interval", "1", "--max-consecutive-skipped-iters", "2"])
    return save, args, proc


def test_streak_saves_nothing_and_keeps_the_last_good_checkpoint(diverged):
    save, _, proc = diverged
    got = losses(proc.stdout)
    first_bad = min(i for i, (_, loss) in got.items() if not math.isfinite(loss))
    assert proc.returncode == 3 and first_bad >= 2, proc.stdout[-3000:]
    good = first_bad - 2  # saved at good: its next iteration (good + 1) was finite; first_bad - 1 produced the NaN
    assert sorted(os.listdir(save)) == [f"iter_{i:07d}" for i in range(1, first_bad)] + \
        ["latest_checkpointed_iteration.txt"]  # nothing saved during the streak
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read().strip() == str(good)
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("stopping:")]
    assert line == (
        f"stopping: 2 consecutive iterations (from {first_bad}) had a non-finite loss or gradient norm (last grad norm "
        f"nan); nothing is saved; resume from {save}/iter_{good:07d}, the last checkpoint whose next iteration was "
        f"finite. {save}/latest_checkpointed_iteration.txt now names it; {save}/iter_{first_bad - 1:07d} (weights whose "
        f"next iteration was non-finite) stays on disk. Relaunch with --load {save} --lr 30 "
        f"--override-opt-param-scheduler (without that flag the checkpoint's learning-rate schedule applies and a new "
        f"--lr has no effect), or raise --lr-warmup-iters, or check the data.")
    assert_no_traceback(proc)


def test_relaunch_with_override_uses_the_new_lr(diverged):
    save, args, _ = diverged
    good = int(open(os.path.join(save, "latest_checkpointed_iteration.txt")).read())
    args = list(args)
    args[args.index("--lr") + 1] = "0.001"
    proc = train_cli(args + ["--load", save, "--override-opt-param-scheduler", "--max-consecutive-skipped-iters", "2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert (f"learning-rate schedule: this command line's (--lr 0.001 here, 300.0 in the checkpoint) because of "
            f"--override-opt-param-scheduler, continuing at step {good}") in proc.stdout
    got = losses(proc.stdout)
    assert sorted(got) == list(range(good + 1, 7)) and all(math.isfinite(loss) for _, loss in got.values())
    # warmup 3 then cosine to 0 at 6, peak 1e-3: the lr after step k is the schedule's, not 300's
    expect = {k: 1e-3 * k / 3 if k <= 3 else 1e-3 * 0.5 * (1 + math.cos(math.pi * (k - 3) / 3)) for k in range(1, 7)}
    assert all(got[k][0] == pytest.approx(expect[k], rel=1e-5, abs=1e-12) for k in got)


def test_schedule_note_without_the_flag():
    import argparse

    from hope_megatron.training.checkpoint_fit import schedule_note

    args = argparse.Namespace(lr=1e-3, min_lr=0.0, lr_warmup_iters=3, lr_decay_iters=6, lr_decay_style="cosine",
                              override_opt_param_scheduler=False)
    saved = {"max_lr": 300.0, "min_lr": 0.0, "lr_warmup_steps": 3, "lr_decay_steps": 6, "lr_decay_style": "cosine",
             "num_steps": 1}
    assert schedule_note(saved, args) == ("learning-rate schedule: the checkpoint's (--lr 0.001 here, 300.0 in the "
                                          "checkpoint); add --override-opt-param-scheduler to use this command line's "
                                          "values instead")
    assert schedule_note(dict(saved, max_lr=1e-3), args) is None
