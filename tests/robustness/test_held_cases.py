"""The audit's cases that held, replayed so they keep holding (the others are already tests: malformed JSON, missing
keys and invalid UTF-8 in tests/unit/data/test_preprocess_data.py; impossible parallel sizes and FP8 without TE in
tests/unit/training/test_arguments.py; a crash between the shard writes and the tracker in
tests/distributed/test_train_loop.py; a killed re-run onto existing shards in test_empty_and_leftovers.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.robustness.conftest import REPO, load_tool, losses, train_cli
from tests.unit.data.test_preprocess_data import read_docs


def test_a_multi_megabyte_line_is_read_whole(tmp_path):
    """One 5 MB JSONL line (the audit used 50 MB): every id arrives, nothing is truncated."""
    n = 1_000_000
    ids = [str(1000 + i % 997) for i in range(n)]
    src = tmp_path / "big.jsonl"
    src.write_text(json.dumps({"text": " ".join(ids)}) + "\n{\"text\": \"1 2\"}\n")
    assert src.stat().st_size > 4_900_000
    prefix = str(tmp_path / "big")
    assert load_tool("preprocess_data").main(["--input", str(src), "--output-prefix", prefix, "--tokenizer-type",
                                              "NullTokenizer", "--vocab-size", "2000", "--append-eod"]) == 0
    docs, _ = read_docs(prefix + "_text_document")
    assert len(docs) == 2 and len(docs[0][0]) == n + 1 and docs[0][0][-2:] == [1000 + (n - 1) % 997, 2000]


def test_sigterm_saves_and_the_resume_is_exact(trained, tmp_path):
    """SIGTERM after the first log line: the run finishes its iteration, saves, says so; the resumed run prints exactly
    the uninterrupted run's losses for the remaining iterations."""
    save = str(tmp_path / "ckpt")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen([sys.executable, "-m", "hope_megatron.train"] + trained["args"] + ["--save", save],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        out.append(line)
        if line.lstrip().startswith("iteration") or time.monotonic() > deadline:
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=240)
    text = "".join(out) + rest
    assert proc.returncode == 0, err[-3000:]
    stopped = [ln for ln in text.splitlines() if ln.startswith("stopping at iteration")]
    assert len(stopped) == 1 and stopped[0].endswith("received SIGTERM/SIGINT (checkpoint saved)"), text[-2000:]
    k = int(stopped[0].split()[3].rstrip(":"))
    assert 1 <= k < 6 and open(os.path.join(save, "latest_checkpointed_iteration.txt")).read().strip() == str(k)
    resumed = train_cli(trained["args"] + ["--load", save])
    got = losses(resumed.stdout)
    assert sorted(got) == list(range(k + 1, 7))
    assert all(got[i] == trained["losses"][i] for i in got)  # learning rate and loss, exactly
