"""Shared fixtures of the bad-input / damaged-state cases (issue 17, docs/troubleshooting.md).

One session builds, once, everything the cases damage or misuse: the Hamlet fixture as a JSONL corpus, two SentencePiece
tokenizers (400 and 700 pieces), shards made with each, a tiny HOPE trained for 6 iterations with the 400-piece one
(checkpoints at 2, 4 and 6; its per-iteration losses are the reference for the exact-resume cases) and its conversion
to plain PyTorch. Cases copy what they damage, so the fixtures stay intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.unit.data.conftest import FIXTURE_TEXT, load_tool

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL, BIG = 400, 700
ITERS = 6
TINY = ["--hope-variant", "hope", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
        "--ffn-hidden-size", "64", "--seq-length", "32", "--titans-chunk-size", "8", "--cms-levels", "2",
        "--cms-periods", "1", "2", "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-2",
        "--lr-warmup-iters", "1", "--log-interval", "1", "--split", "100,0,0", "--train-iters", str(ITERS)]
LOSS = re.compile(r"iteration +(\d+)/ +\d+ \|.*?learning rate: ([0-9.E+-]+) \| lm loss: ([0-9.E+-]+|NAN)")


def run(argv, timeout=300, **kw):
    """A CLI as users run it: a fresh interpreter in the repo, one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable] + argv, cwd=REPO, env=env, timeout=timeout, capture_output=True, text=True,
                          **kw)


def train_cli(args, timeout=300):
    return run(["-m", "hope_megatron.train"] + args, timeout=timeout)


def losses(stdout):
    """{iteration: (learning rate, lm loss)} of the log lines."""
    return {int(i): (float(lr), float(loss)) for i, lr, loss in LOSS.findall(stdout)}


def error_lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def assert_no_traceback(proc):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, (proc.stdout[-2000:] + proc.stderr[-3000:])


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    paras = [p.strip() for p in open(FIXTURE_TEXT, encoding="utf-8").read().split("\n\n") if p.strip()]
    path = root / "hamlet.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for p in paras:
            f.write(json.dumps({"text": p}) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def toks(tmp_path_factory):
    """{SMALL: path, BIG: path} of tools/train_tokenizer.py models."""
    root = tmp_path_factory.mktemp("tok")
    out = {}
    for n in (SMALL, BIG):
        code = load_tool("train_tokenizer").main(["--input", FIXTURE_TEXT, "--text-unit", "paragraph", "--model-prefix",
                                                  str(root / f"sp{n}"), "--vocab-size", str(n), "--num-threads", "1"])
        assert code == 0
        out[n] = str(root / f"sp{n}.model")
    return out


@pytest.fixture(scope="session")
def shards(corpus, toks, tmp_path_factory):
    """{SMALL: prefix, BIG: prefix} made by tools/preprocess_data.py with each tokenizer."""
    root = tmp_path_factory.mktemp("shards")
    out = {}
    for n, model in toks.items():
        prefix = str(root / f"h{n}")
        assert load_tool("preprocess_data").main(["--input", corpus, "--output-prefix", prefix, "--tokenizer-type",
                                                  "SentencePieceTokenizer", "--tokenizer-model", model,
                                                  "--append-eod"]) == 0
        out[n] = prefix + "_text_document"
    return out


def train_args(toks, shards, n=SMALL):
    return TINY + ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", toks[n], "--data-path", shards[n]]


@pytest.fixture(scope="session")
def trained(toks, shards, tmp_path_factory):
    """6 iterations, checkpoints at 2, 4, 6: {"save", "args", "losses", "stdout"}."""
    save = str(tmp_path_factory.mktemp("trained") / "ckpt")
    args = train_args(toks, shards)
    proc = train_cli(args + ["--save", save, "--save-interval", "2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = losses(proc.stdout)
    assert sorted(got) == list(range(1, ITERS + 1))
    return {"save": save, "args": args, "losses": got, "stdout": proc.stdout}


@pytest.fixture(scope="session")
def converted(trained, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("converted") / "torch")
    proc = run([os.path.join(REPO, "checkpoints_convert", "convert_to_torch.py"), "--load", trained["save"],
                "--output", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def copy_tree(src, dst):
    shutil.copytree(src, dst)
    return str(dst)
