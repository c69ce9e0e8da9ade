"""Every launcher, as a user runs it: examples/pretrain_hope_{tiny,160m,760m,1p3b}.sh with its default layout (on 2 CPU
ranks: TP1 x DP2 + distributed optimizer, or the 1.3B's TP2 + sequence parallel in BF16) and only the model
shrunk. One launch trains 4 iterations and checkpoints at 2 and 4; with the tracker put back to 2 (a job
killed after its save at 2), the same command resumes and must print iterations 3 and 4 digit for digit."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from hope_megatron.platform import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHRINK = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--ffn-hidden-size", "128",
          "--max-position-embeddings", "64", "--tokenizer-type", "NullTokenizer", "--vocab-size", "512",
          "--lr-warmup-iters", "1", "--log-interval", "1", "--save-interval", "2", "--eval-iters", "1"]
LAYOUT = {  # the preflight's layout line on 2 ranks
    "tiny": "TP=1 PP=1 DP=2 +distributed-optimizer",
    "160m": "TP=1 PP=1 DP=2 +distributed-optimizer",
    "760m": "TP=1 PP=1 DP=2 +distributed-optimizer",
    "1p3b": "TP=2 PP=1 DP=1 +sequence-parallel",  # (+ distributed optimizer from DP 2 up), BF16 as on GPUs
}
LOSS = re.compile(r"iteration +(\d+)/ +4 \|.*?lm loss: (\S+) \|")


def _launch(name, ckpt):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for k in ("TP", "PP", "FSDP", "SEQUENCE_PARALLEL", "DISTRIBUTED_OPTIMIZER", "VPP_LAYERS", "CONFIG", "BF16"):
        env.pop(k, None)
    env.update(PYTHON=sys.executable, TRANSFORMER_IMPL="local", GPUS_PER_NODE="2", MOCK_DATA="1", TRAIN_ITERS="4",
               MICRO_BATCH="1", GLOBAL_BATCH="2", SEQ_LEN="64", CHECKPOINT_DIR=ckpt, MASTER_PORT=str(free_port()),
               OMP_NUM_THREADS="1", PATH=os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                                          if not os.path.exists(os.path.join(p, "nvidia-smi"))))
    proc = subprocess.run(["bash", os.path.join(REPO, "examples", f"pretrain_hope_{name}.sh"), *SHRINK],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc.stdout, {int(i): loss for i, loss in LOSS.findall(proc.stdout)}


@pytest.mark.parametrize("name", ["tiny", "160m", "760m", "1p3b"])
def test_launcher_default_layout_trains_saves_and_resumes(name, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    out, straight = _launch(name, ckpt)
    assert LAYOUT[name] in out, out[:3000]
    assert sorted(straight) == [1, 2, 3, 4], out[-3000:]
    assert sorted(d for d in os.listdir(ckpt) if d.startswith("iter_")) == ["iter_0000002", "iter_0000004"]
    with open(os.path.join(ckpt, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("2\n")  # as if the job had been killed right after its save at iteration 2
    out, resumed = _launch(name, ckpt)
    assert "at iteration 2" in out and sorted(resumed) == [3, 4], out[-3000:]
    assert [resumed[3], resumed[4]] == [straight[3], straight[4]], (straight, resumed)
    assert float(straight[4]) < float(straight[1])
