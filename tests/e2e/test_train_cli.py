"""`python -m hope_megatron.train` end to end: the log line of design.md §5, the checkpoint layout, clean errors."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--hope-variant", "hope", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
        "--ffn-hidden-size", "64", "--seq-length", "16", "--titans-chunk-size", "4", "--cms-levels", "2",
        "--cms-periods", "1", "2", "--micro-batch-size", "2", "--global-batch-size", "4", "--mock-data",
        "--vocab-size", "60", "--make-vocab-size-divisible-by", "8", "--lr", "1e-2", "--log-interval", "1"]
LINE = re.compile(
    r"iteration +(\d+)/ +(\d+) \| consumed samples: +(\d+) \| elapsed time per iteration \(ms\): [\d.]+ \| "
    r"tokens/s: [\d.]+ \| TFLOP/s/GPU: [\d.]+ \| learning rate: [\d.E+-]+ \| "
    r"lm loss: (\d\.\d{9}E[+-]\d\d) \| grad norm: [\d.E+-]+ \| skipped iterations: +0 \| ETA: \d+:\d\d:\d\d")


def _cli(args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "hope_megatron.train"] + args, cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)


def test_cli_trains_logs_and_checkpoints(tmp_path):
    save = str(tmp_path / "ckpt")
    r = _cli(TINY + ["--train-iters", "3", "--save", save, "--save-interval", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [m.groups() for m in LINE.finditer(r.stdout)]
    assert [(int(a), int(b), int(c)) for a, b, c, _ in lines] == [(1, 3, 4), (2, 3, 8), (3, 3, 12)], r.stdout[-3000:]
    # CPU without --peak-flops: tokens/s and TFLOP/s, but no MFU against a GPU's peak
    assert "MFU: not reported (CPU: no known peak; pass --peak-flops to set one)" in r.stdout
    progress = [ln for ln in r.stdout.splitlines() if "consumed samples" in ln]
    assert "model FLOPs per iteration" in r.stdout and len(progress) == 3 and not any("MFU" in ln for ln in progress)
    # the inner chunk clip (default 0.3) in the summary at the end of each line (issue 16 item 5)
    clip = re.findall(r"ETA: \d+:\d\d:\d\d \| inner clip hits: (\d+\.\d)% \(mean scale (\d\.\d{3})\)", r.stdout)
    assert len(clip) == 3 and all(0 <= float(h) <= 100 and 0 < float(m) <= 1 for h, m in clip), r.stdout[-3000:]
    assert r.stdout.count("hope-train arguments") == 1
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read().strip() == "3"
    assert sorted(d for d in os.listdir(save) if d.startswith("iter_")) == ["iter_0000002", "iter_0000003"]
    for f in ("common.pt", ".metadata", "run_config.yaml"):
        assert os.path.exists(os.path.join(save, "iter_0000003", f)), f


def test_cli_impossible_combination_is_one_sentence():
    r = _cli(TINY + ["--train-iters", "1", "--global-batch-size", "5"], timeout=120)
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert err == ["error: --global-batch-size 5 is not divisible by --micro-batch-size 2 x data-parallel size 1."], \
        r.stderr[-2000:]


def test_distributed_optimizer_saves_when_a_rank_holds_no_cms_slice(tmp_path):
    """DP2 + distributed optimizer with an embedding larger than the rest of the model: one DP rank's slice of the
    parameters holds no CMS weight, yet it must join the all-reduce that gathers the CMS accumulators at save and load
    (it skipped it once, and the other rank waited forever). Saves at 2, resumes to 4."""
    save = str(tmp_path / "ckpt")
    model = ["--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2", "--ffn-hidden-size", "32",
             "--seq-length", "32", "--micro-batch-size", "1", "--global-batch-size", "2", "--mock-data",
             "--tokenizer-type", "NullTokenizer", "--vocab-size", "20000", "--lr", "1e-3", "--log-interval", "1",
             "--use-distributed-optimizer", "--save", save, "--save-interval", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                "hope_megatron.train"]
    for iters, extra in (("2", []), ("4", ["--load", save])):
        r = subprocess.run(torchrun + model + ["--train-iters", iters] + extra, cwd=ROOT, env=env, timeout=240,
                           capture_output=True, text=True)
        assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
        assert f"saved checkpoint {save}/iter_000000{iters}" in r.stdout, r.stdout[-2000:]
    assert f"loaded {save} at iteration 2" in r.stdout
