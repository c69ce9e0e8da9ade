"""Perplexity windows and loss equal a direct computation; make_report turns result JSON into markdown with the
papers' numbers and the forgetting values."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from hope_megatron.eval import perplexity
from tests.unit.eval.helpers import ByteTokenizer, tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_windows_cut_the_eod_joined_stream():
    w = perplexity.windows([[1, 2, 3], [4, 5]], eod=9, seq_length=3, max_samples=10)
    assert w.tolist() == [[1, 2, 3, 9], [9, 4, 5, 9]]  # stream 1 2 3 9 4 5 9, windows of 3 + 1 at stride 3
    w = perplexity.windows([[1, 2, 3], [4, 5, 6, 7]], eod=9, seq_length=2, max_samples=2)
    assert w.tolist() == [[1, 2, 3], [3, 9, 4]]
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity.windows([[1]], eod=9, seq_length=8, max_samples=1)


def test_set_loss_equals_direct(tmp_path):
    path = tmp_path / "d.jsonl"
    with open(path, "w") as f:
        for t in ("alpha beta gamma delta " * 6, "one two three four five " * 5):
            f.write(json.dumps({"text": t}) + "\n")
    model, tok = tiny_model("hope", chunk=8), ByteTokenizer()
    args = argparse.Namespace(max_docs=5, stream=False, seq_length=32, max_samples=4, batch_size=3, stream_segment=16)
    r = perplexity.evaluate_set(model, tok, "d", [str(path)], args)
    w = perplexity.windows([tok.tokenize(t) for t in perplexity.read_texts(str(path))], tok.eod, 32, 4)
    with torch.no_grad():
        direct = float(model.loss(w))
    assert r["tokens"] == 4 * 32
    assert r["loss"] == pytest.approx(direct, rel=1e-5) and r["ppl"] == pytest.approx(math.exp(direct), rel=1e-5)


def test_set_of_two_files_takes_windows_from_both(tmp_path):
    """PG19-like = drama + poetry: 4 windows = 2 from each file, so the set loss is the mean of the two files' losses."""
    paths = []
    for name, text in (("a", "alpha beta gamma delta " * 9), ("b", "one two three four five " * 8)):
        paths.append(str(tmp_path / f"{name}.jsonl"))
        with open(paths[-1], "w") as f:
            f.write(json.dumps({"text": text}) + "\n")
    model, tok = tiny_model("hope", chunk=8), ByteTokenizer()
    args = argparse.Namespace(max_docs=5, stream=False, seq_length=32, max_samples=4, batch_size=3, stream_segment=16)
    both = perplexity.evaluate_set(model, tok, "ab", paths, args)
    args.max_samples = 2
    each = [perplexity.evaluate_set(model, tok, n, [p], args)["loss"] for n, p in zip("ab", paths)]
    assert both["tokens"] == 4 * 32 and both["documents"] == 2
    assert both["loss"] == pytest.approx(sum(each) / 2, rel=1e-5)
    assert abs(each[0] - each[1]) > 1e-3  # the two files differ, so a one-file set would fail the equality above


def test_make_report(tmp_path):
    run = {"checkpoint": "X", "variant": "hope", "layers": 2, "hidden_size": 64, "iteration": 60, "time": "t",
           "parameters": 1.2e6}
    ppl = {"kind": "perplexity", "run": run, "seq_length": 128,
           "results": [{"name": "PG19-like", "mode": "windows of 128", "documents": 3, "tokens": 1024, "loss": 5.5,
                        "ppl": math.exp(5.5), "paths": []}]}
    cont = {"kind": "continual", "mode": "B", "run": run, "segments": ["a", "b"], "seeds": [0],
            "matrix": [[5, 5], [2, 4], [3, 1]], "row_labels": ["start", "after a", "after b"], "forgetting": [1.0],
            "bwt": [1.0], "average_forgetting": 1.0, "average_forgetting_ci": [1.0, 0.9, 1.1],
            "per_seed_average_forgetting": [1.0]}
    cells = [{"length": n, "depth": 0.5, "needle": "passkey", "trials": 2, "status": "run", "recall": r,
              "peak_bytes": b * 2**20} for n, r, b in ((1024, 0.5, 7.0), (2048, 0.0, 14.0), (4096, 0.0, 14.7))]
    niah = {"kind": "niah", "run": run, "lengths": [1024, 2048, 4096], "depths": [0.5], "needles": ["passkey"],
            "haystack": "h.jsonl", "segment": 2048, "cells": cells, "grid": [[0.5, 0.0, 0.0]]}
    for name, obj in (("ppl.json", ppl), ("cont.json", cont), ("niah.json", niah)):
        with open(tmp_path / name, "w") as f:
            json.dump(obj, f)
    out = tmp_path / "reports"
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_report.py"), "--inputs", str(tmp_path),
                    "--output", str(out)], check=True, capture_output=True)
    text = (out / "perplexity.md").read_text()
    assert "| PG19-like | windows of 128 | 3 | 1024 | 5.5000 | 244.69 |" in text and "20.53" in text
    assert "NOT PG19" in text
    c = (out / "continual.md").read_text()
    assert "| after b | 3.0000 | 1.0000 |" in c and "+1.0000 (95% bootstrap CI +0.9000 .. +1.1000)" in c
    assert (out / "continual_B_matrix.png").stat().st_size > 1000
    index = (out / "README.md").read_text()
    assert "[perplexity](perplexity.md): ppl PG19-like 244.7" in index
    assert "mode B: average forgetting +1.0000 nats (95% CI +0.9000 .. +1.1000)" in index
    assert "recall 1/6 prompts over 3 cells; peak MiB 1k 7.0, 2k 14.0, 4k 14.7" in index
    n = (out / "niah.md").read_text()
    assert "| passkey | 0.50 | 50 | 0 | 0 |" in n and "Peak at 4k relative to the peak at 2k: 1.05x." in n
    assert (out / "niah_heatmap.png").stat().st_size > 1000
    assert all("## What this run can and cannot show" in (out / f"{k}.md").read_text()
               for k in ("perplexity", "niah", "continual"))
