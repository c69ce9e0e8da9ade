"""The `make demo` chain end to end on a local fixture corpus (no network): split -> tokenizer -> shards -> train
(2 gloo ranks, saves, exits halfway) -> resume -> convert -> perplexity / zero-shot / NIAH -> summary, then a second
run that reuses everything. One demo run is shared by the tests of this module (module-scoped fixture).

A step whose tool has not landed in this checkout is left out of the run (`--skip`) and its test is skipped with the
tool's path as the reason; every other step is asserted on its numbers."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_ITERS = 4
VOCAB = 512  # byte fallback needs 256 + the distinct characters (~390 here)
# step -> the file that must exist for the step to run
TOOLS = {
    "perplexity": "hope_megatron/eval/perplexity.py",
    "zeroshot": "hope_megatron/eval/zeroshot.py",
    "niah": "hope_megatron/eval/niah.py",
    "convert": "checkpoints_convert/convert_to_torch.py",
}
# --split 90,10,0: every domain's validation split gets at least one of its ~50 pieces
TINY = ("--num-layers 2 --hidden-size 32 --num-attention-heads 2 --ffn-hidden-size 64 --seq-length 64 "
        "--micro-batch-size 2 --global-batch-size 4 --titans-chunk-size 8 --lr-warmup-iters 1 --split 90,10,0 --log-interval 1")


def _missing():
    missing = {step for step, path in TOOLS.items() if not os.path.exists(os.path.join(REPO, path))}
    try:
        import lm_eval  # noqa: F401  (the `eval` extra; the test never installs anything)
    except ImportError:
        missing.add("zeroshot")
    return missing


def _write_corpus(root):
    """Two domains from local files: Hamlet (tests/fixtures) and three stdlib modules, each record ~3 KB."""
    os.makedirs(root)
    hamlet = open(os.path.join(REPO, "tests", "fixtures", "hamlet_excerpt.txt"), encoding="utf-8").read()
    stdlib = sysconfig.get_paths()["stdlib"]
    code = "".join(open(os.path.join(stdlib, m), encoding="utf-8").read() for m in ("textwrap.py", "shlex.py", "bisect.py"))
    for name, text in (("prose", hamlet * 2), ("code", code)):
        with open(os.path.join(root, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            for i in range(0, len(text), 3000):
                f.write(json.dumps({"text": text[i:i + 3000]}) + "\n")


def _write_eval_data(root):
    """A 4-example PIQA file in the HF schema (the NIAH haystack is the demo's own held-out text)."""
    os.makedirs(os.path.join(root, "piqa"))
    with open(os.path.join(root, "piqa", "validation.jsonl"), "w") as f:
        for goal, a, b in [("To open a door,", "turn the handle.", "eat the handle."),
                           ("To dry wet hands,", "use a towel.", "use a bucket of water."),
                           ("To read at night,", "switch on a lamp.", "close your eyes."),
                           ("To cool hot soup,", "let it rest.", "put it in the oven.")]:
            f.write(json.dumps({"goal": goal, "sol1": a, "sol2": b, "label": 0}) + "\n")


def _run_demo(tmp, skip):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "BF16": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, os.path.join(REPO, "tools", "demo.py"), "--workdir", str(tmp / "work"),
           "--corpus-dir", str(tmp / "corpus"), "--eval-data", str(tmp / "eval"), "--piece-chars", "400",
           "--vocab-size", str(VOCAB), "--train-iters", str(TRAIN_ITERS), "--save-interval", "2", "--nproc", "2",
           "--train-args", TINY, "--ppl-samples", "4", "--zeroshot-tasks", "piqa", "--zeroshot-limit", "4",
           "--niah-lengths", "96", "--niah-trials", "1", "--offline"]
    skip = set(skip) | ({"eval_deps"} if "zeroshot" in skip else set())
    if skip:
        cmd += ["--skip", *sorted(skip)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the demo stops the step it runs (its own process group) before exiting
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the demo chain took over 600 s; last output:\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    _write_corpus(tmp / "corpus")
    _write_eval_data(tmp / "eval")
    skip = _missing()
    first = _run_demo(tmp, skip)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    second = _run_demo(tmp, skip)
    return {"work": tmp / "work", "first": first.stdout, "second": second, "skip": skip}


def _skip_if_missing(demo, step):
    if step in demo["skip"]:
        why = f"{TOOLS[step]} has not landed in this checkout" if not os.path.exists(os.path.join(REPO, TOOLS[step])) \
            else "lm-eval (the `eval` extra) is not installed"
        pytest.skip(f"{why}; the demo leaves the '{step}' step out")


def _rows(stdout):
    """The summary table: step -> (status, artefact)."""
    rows = {}
    for m in re.finditer(r"^(\w+)\s+(ran|reused|skipped|missing)\s+[\d.]+\s+(.*)$", stdout, flags=re.M):
        rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_data_steps(demo):
    work = demo["work"]
    rows = _rows(demo["first"])
    assert [rows[s][0] for s in ("split", "tokenizer", "shards")] == ["ran", "ran", "ran"]
    sidecar = json.load(open(work / "tokenizer" / "demo8k.json"))
    assert sidecar["eod_id"] == 2 and sidecar.get("vocab_size") == VOCAB
    for domain in ("prose", "code"):
        n_train = sum(1 for _ in open(work / "pieces" / f"{domain}.train.jsonl"))
        n_held = sum(1 for _ in open(work / "pieces" / f"{domain}.heldout.jsonl"))
        assert n_held >= 1 and n_train == pytest.approx(9 * n_held, abs=9)  # every 10th piece is held out
        for kind in ("train", "heldout"):
            assert (work / "shards" / f"{domain}_{kind}_text_document.idx").stat().st_size > 0


def test_train_saves_and_resume_continues(demo):
    work, out = demo["work"], demo["first"]
    assert (work / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == str(TRAIN_ITERS)
    assert (work / "checkpoints" / f"iter_{TRAIN_ITERS // 2:07d}").is_dir()
    resume_log = (work / "logs" / "resume.log").read_text()
    assert re.search(rf"loaded \S+ at iteration {TRAIN_ITERS // 2}\b", resume_log), resume_log[-2000:]
    losses = [float(x) for x in re.findall(r"lm loss: ([0-9.E+-]+)", (work / "logs" / "train.log").read_text())]
    assert losses and all(math.isfinite(x) for x in losses)
    assert abs(losses[0] - math.log(VOCAB)) < 1.5  # an untrained model is near uniform over the vocabulary
    assert "train lm loss: iteration" in out


def test_convert(demo):
    _skip_if_missing(demo, "convert")
    cfg = json.load(open(demo["work"] / "torch" / "config.json"))
    assert os.path.getsize(demo["work"] / "torch" / "model.safetensors") > 0
    # the export is the model the demo trained: TINY's shape, the demo tokenizer's vocabulary, seq 64, HOPE layers
    assert (cfg["num_layers"], cfg["hidden_size"], cfg["seq_length"]) == (2, 32, 64)
    assert cfg["hope_variant"] == "hope" and cfg["layer_letters"] == "HH"
    assert cfg["vocab_size"] >= VOCAB and cfg["tokenizer_type"] == "SentencePieceTokenizer"


def test_perplexity_per_domain(demo):
    _skip_if_missing(demo, "perplexity")
    res = json.load(open(demo["work"] / "eval" / "perplexity.json"))
    text = json.dumps(res)
    for domain in ("prose", "code"):
        assert domain in text
    by_name = {r["name"]: r for r in res["results"]}
    assert set(by_name) == {"prose_heldout_text_document", "code_heldout_text_document"}
    for r in by_name.values():
        assert r["tokens"] > 0 and r["ppl"] == pytest.approx(math.exp(r["loss"]), rel=1e-3)
        assert 1.0 < r["ppl"] < VOCAB * 4  # a 4-iteration model: near uniform over the vocabulary
    assert re.search(r"perplexity \(held-out\): (prose|code) [\d.]+, (prose|code) [\d.]+", demo["first"])


def test_zeroshot(demo):
    _skip_if_missing(demo, "zeroshot")
    piqa = json.load(open(demo["work"] / "eval" / "zeroshot.json"))["results"]["piqa"]
    assert piqa["n"] == 4 and 0.0 <= piqa["acc"] <= 1.0
    assert piqa["acc"] * 4 == pytest.approx(round(piqa["acc"] * 4))  # a fraction of the 4 items
    assert re.search(r"zero-shot accuracy: piqa [\d.]+", demo["first"])


def test_niah(demo):
    _skip_if_missing(demo, "niah")
    res = json.load(open(demo["work"] / "eval" / "niah.json"))
    assert res["lengths"] == [96] and len(res["grid"]) == 3  # depths 0, 0.5, 1
    recalls = [c["recall"] for c in res["cells"]]
    assert len(recalls) == 3 and all(r is not None and 0.0 <= r <= 1.0 for r in recalls)
    assert "NIAH passkey recall: 96 tokens" in demo["first"]


def test_second_run_reuses_everything(demo):
    second = demo["second"]
    assert second.returncode == 0, second.stderr[-3000:]
    rows = _rows(second.stdout)
    ran = {s for s, (status, _) in rows.items() if status == "ran"}
    assert ran == set(), ran
    assert second.stdout.count("reusing ") == sum(1 for s, _ in rows.values() if s == "reused") >= 6
    assert "hope_megatron demo summary" in second.stdout
