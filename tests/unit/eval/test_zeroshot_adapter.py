"""The lm-eval adapter `hope` scores 20 PIQA-like items exactly as a direct log-likelihood computation: per-choice
log-likelihoods (1e-5), and lm-eval's acc / acc_norm equal the argmax of those sums (divided by the choice length in characters for acc_norm)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tests.unit.eval.helpers import ByteTokenizer, tiny_model

pytest.importorskip("lm_eval")


def _items(path, n=20):
    rng = random.Random(0)
    words = ["water", "cup", "stone", "paper", "knife", "rope", "glue", "bread", "oven", "box", "wood", "salt"]
    rows = []
    for i in range(n):
        goal = f"How do I {rng.choice(words)} the {rng.choice(words)}?"
        sols = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(2)]
        rows.append({"goal": goal, "sol1": sols[0], "sol2": sols[1], "label": i % 2})
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows


def _direct(model, tok, ctx, cont):
    """sum log p(cont | ctx), the whole string tokenised and split at the context's length."""
    c, w = tok.tokenize(ctx), tok.tokenize(ctx + cont)
    ids = torch.tensor([w])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]).float(), dim=-1)[0]
    return float(sum(logp[i - 1, w[i]] for i in range(len(c), len(w))))


def test_adapter_equals_direct_loglikelihood(tmp_path, monkeypatch):
    import lm_eval

    from hope_megatron.eval import zeroshot
    from hope_megatron.eval.lm_eval_adapter import HopeEvalLM
    from hope_megatron.eval.tasks import task_config

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    path = tmp_path / "piqa.jsonl"
    rows = _items(path)
    model, tok = tiny_model("hope", vocab=260, chunk=16), ByteTokenizer()
    lm = HopeEvalLM(model=model, tokenizer=tok, batch_size=3, max_length=512)

    class Req:  # the Instance fields the adapter reads
        def __init__(self, args):
            self.args = args

    reqs = [Req((f"Question: {r['goal']}\nAnswer:", " " + r[s])) for r in rows for s in ("sol1", "sol2")]
    got = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    want = [_direct(model, tok, *q.args) for q in reqs]
    assert max(abs(a - b) / abs(b) for a, b in zip(got, want)) <= 1e-5

    zeroshot.offline_env()
    res = lm_eval.simple_evaluate(model=lm, tasks=[task_config("piqa", path=str(path))], num_fewshot=0,
                                  bootstrap_iters=0)["results"]["piqa_local"]
    argmax = lambda xs: max(range(len(xs)), key=lambda k: (xs[k], -k))  # noqa: E731 - first index wins ties
    acc = sum(int(argmax(want[2 * i:2 * i + 2]) == r["label"]) for i, r in enumerate(rows)) / len(rows)
    norm = []
    for i, r in enumerate(rows):
        scores = [want[2 * i + k] / len(r[s]) for k, s in enumerate(("sol1", "sol2"))]  # lm-eval: choice chars
        norm.append(int(argmax(scores) == r["label"]))
    assert res["acc,none"] == pytest.approx(acc, abs=1e-12)
    assert res["acc_norm,none"] == pytest.approx(sum(norm) / len(norm), abs=1e-12)


def test_parse_results_keys_and_binomial_stderr():
    from hope_megatron.eval.zeroshot import parse_results

    res = {"results": {"piqa_local": {"alias": "piqa_local", "acc,none": 0.65, "acc_stderr,none": "N/A",
                                      "acc_norm,none": 0.5, "acc_norm_stderr,none": 0.07},
                       "boolq_local": {"acc,none": 0.25}},
           "n-samples": {"piqa_local": {"original": 1838, "effective": 40}, "boolq_local": {"effective": 1}}}
    out = parse_results(res, ["piqa", "boolq"])
    assert sorted(out) == ["boolq", "piqa"]
    assert out["piqa"]["n"] == 40 and out["piqa"]["acc"] == 0.65
    assert out["piqa"]["acc_stderr"] == pytest.approx((0.65 * 0.35 / 39) ** 0.5, rel=1e-12)  # 0.0764
    assert out["piqa"]["acc_norm_stderr"] == 0.07  # lm-eval's own stderr is kept
    assert out["boolq"] == {"acc": 0.25, "n": 1}  # one item: no stderr


def _offline(monkeypatch):
    """No network, as on this machine and in CI: the Hub client and `datasets` say so at once instead of retrying."""
    import importlib

    for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(k, "1")
    for mod in ("huggingface_hub.constants", "datasets.config"):
        m = importlib.import_module(mod)
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if hasattr(m, name):
                monkeypatch.setattr(m, name, True)


def test_task_without_local_data_needs_reachable_catalog_data(tmp_path, monkeypatch):
    """The seven without their local file and any other lm-eval name go to lm-eval's own definition; offline, its
    dataset cannot be read, and the run stops before loading the model with one sentence naming the task and the
    local file that would serve. Unknown names are refused with close matches."""
    from hope_megatron.eval import zeroshot

    _offline(monkeypatch)
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "validation.jsonl").write_text("{}\n")
    with pytest.raises(SystemExit) as e:
        zeroshot.main(["--checkpoint", str(tmp_path / "none"), "--tasks", "piqa,siqa,arc_easy",
                       "--data-dir", str(tmp_path)])
    msg = str(e.value)
    assert msg.startswith("zeroshot: lm-eval's task social_iqa could not read its data (") and "\n" not in msg, msg
    assert "No local data for siqa, arc_easy" in msg and "fetch_eval_data.py --tasks siqa arc_easy" in msg, msg
    with pytest.raises(SystemExit, match=r"'lambada_openaii' is not an lm-eval task \(did you mean lambada_openai"):
        zeroshot.main(["--checkpoint", "x", "--tasks", "lambada_openaii", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"^zeroshot: lm-eval's task lambada_openai could not read its data .*"
                                         r"EleutherAI/lambada_openai"):
        zeroshot.main(["--checkpoint", "x", "--tasks", "lambada_openai,wikitext", "--data-dir", str(tmp_path)])


def test_zeroshot_keeps_finished_tasks_when_stopped(tmp_path, monkeypatch):
    """Tasks run one at a time and each finished one is written at once: SIGTERM during the second task leaves the
    first task's results in the JSON ("complete": false) and exits 143; an uninterrupted run ends "complete": true."""
    from hope_megatron.eval import progress, zeroshot

    calls = []

    def fake_evaluate(lm, tasks, data_dir, limit=None, manager=None):
        calls.append(list(tasks))
        if len(calls) == 2 and stop:
            raise progress.Terminated()
        return {tasks[0]: {"acc": 0.5 + 0.1 * len(calls), "n": 10}}

    monkeypatch.setattr(zeroshot, "evaluate", fake_evaluate)
    monkeypatch.setattr(zeroshot, "check_data", lambda tasks, data_dir: None)
    monkeypatch.setattr(zeroshot, "load", lambda ckpt, threads: (tiny_model("hope"), ByteTokenizer(),
                                                                  {"hope_variant": "hope"}))
    monkeypatch.setattr(zeroshot, "run_info", lambda ckpt: {"checkpoint": ckpt})
    out = tmp_path / "zs.json"
    args = ["--checkpoint", str(tmp_path), "--tasks", "piqa,boolq,arc_easy", "--output", str(out)]
    stop = True
    with pytest.raises(SystemExit) as e:
        zeroshot.main(args)
    assert e.value.code == 143 and calls == [["piqa"], ["boolq"]]
    kept = json.loads(out.read_text())
    assert kept["complete"] is False and kept["results"] == {"piqa": {"acc": 0.6, "n": 10}}
    stop, calls[:] = False, []
    done = zeroshot.main(args)
    assert json.loads(out.read_text())["complete"] is True and sorted(done["results"]) == ["arc_easy", "boolq", "piqa"]
