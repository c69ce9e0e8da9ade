"""Evaluations of converted checkpoints (hope_megatron.inference models): MQAR accuracy, passkey recall through
hope_megatron.eval.niah's functions, permuted-class accuracy and the test-time CMS stream (inference/cms_stream.py).
No megatron here: everything reads the plain PyTorch model that convert_to_torch.py wrote."""

from __future__ import annotations

import time
from typing import Dict, List

import numpy as np
import torch

from hope_megatron.eval import niah

from benchmarks.evidence import tasks


@torch.no_grad()
def mqar_accuracy(model, spec: tasks.MQARSpec, length: int, pairs: int, n: int, seed: int) -> List[float]:
    """Per sequence: the share of query keys whose greedy next token is the value bound to them (whole forward,
    fresh state per sequence). Sequences are `length` tokens of N-pair instances (tasks.mqar_stream)."""
    rng = np.random.default_rng(seed)
    seqs = [tasks.mqar_stream(rng, spec, length, [pairs]) for _ in range(n)]
    ids = torch.tensor([s for s, _ in seqs], dtype=torch.long)
    pred = torch.cat([model(ids[i:i + 8]).argmax(-1) for i in range(0, n, 8)])
    out = []
    for b, (_, pos) in enumerate(seqs):
        p = torch.tensor(pos)
        out.append(float((pred[b, p] == ids[b, p + 1]).float().mean()))
    return out


def passkey_cells(model, cfg: dict, spec: tasks.PasskeySpec, lengths: List[int], depths: List[float], trials: int,
                  segment: int, attention_max: int, seed: int) -> List[dict]:
    """One cell per (length, depth): exact recall (niah.run_trial's criterion: the greedy continuation of the
    streamed prompt is the five digits) and the share of digits right. The prompts of one length (depths x trials)
    run as one batch through model.generate, the call niah.run_trial makes (rows are independent streams). Full
    attention runs only up to attention_max tokens (O(L^2) time on a CPU); sliding-window attention and the memory
    variants stream every length in `segment`-token calls. Peak memory: memory_probe.py (a fresh process)."""
    full_attention = any(c == "A" for c in cfg["layer_letters"])
    cells = []
    for length in lengths:
        if full_attention and length > attention_max:
            cells += [{"length": length, "depth": d, "trials": trials, "status": "not run", "recall": None,
                       "digits": None, "estimated_bytes": niah.attention_bytes(cfg, length, segment)} for d in depths]
            continue
        prompts, answers = [], []
        for depth in depths:
            rng = np.random.default_rng([seed, length, int(depth * 1000)])
            for _ in range(trials):
                ids, answer = tasks.passkey_prompt(rng, spec, length, depth)
                prompts.append(ids)
                answers.append(answer)
        batch = torch.tensor(prompts, dtype=torch.long)
        t0 = time.time()
        got = model.generate(batch, max_new_tokens=spec.digits, segment=segment).tolist()
        seconds = time.time() - t0
        for i, depth in enumerate(depths):
            rows = range(i * trials, (i + 1) * trials)
            cells.append({"length": length, "depth": depth, "trials": trials, "status": "run", "seconds": seconds,
                          "recall": float(np.mean([got[r] == answers[r] for r in rows])),
                          "digits": float(np.mean([np.mean([a == b for a, b in zip(got[r], answers[r])])
                                                   for r in rows]))})
    return cells


@torch.no_grad()
def class_accuracy(model, universe: tasks.PermutedClasses, task: int, n: int, seq: int, seed: int) -> float:
    """Accuracy on `n` held-out examples of `task`, read as documents of `seq` tokens (fresh state per document):
    the label is the argmax over the class tokens at each SEP."""
    s = universe.spec
    rng = np.random.default_rng([seed, 7919, task])
    per = seq // s.example_len
    docs = max(1, n // per)
    ex, y = universe.examples(rng, task, docs * per)
    ids = torch.tensor(ex.reshape(docs, per * s.example_len), dtype=torch.long)
    logits = model(ids)
    sep = torch.arange(per) * s.example_len + s.proto_len  # SEP positions: their next token is the label
    labels = logits[:, sep][..., s.features + 1:s.features + 1 + s.classes]
    return float((labels.argmax(-1).reshape(-1).numpy() == y).mean())


def test_time_cms_matrix(model, universe: tasks.PermutedClasses, tasks_n: int, stream_tokens: int, seq: int,
                         eval_examples: int, periods: List[int], lr: List[float], segment: int, seed: int) -> Dict:
    """The model trained on task 0 streams `stream_tokens` of task 1, then of task 2, ... with test-time CMS updates
    (predict, then learn; gradient into the CMS levels only, hope_math §4.4); after each, accuracy on every task
    with the CMS weights of that moment. Row 0: before any stream."""
    from hope_megatron.inference.cms_stream import TestTimeCMS, TestTimeCMSConfig, cms_level_params

    k = len(cms_level_params(model))
    cfg = TestTimeCMSConfig(periods=list(periods[:k]), lr=list(lr[:k]), clip=[1.0] * k, momentum=[0.0] * k,
                            segment=segment)
    ttc = TestTimeCMS(model, cfg)
    rows = [[class_accuracy(model, universe, t, eval_examples, seq, seed) for t in range(tasks_n)]]
    rng = np.random.default_rng([seed, 104729])
    for t in range(1, tasks_n):
        docs = universe.documents(rng, t, seq, max(1, stream_tokens // seq))
        ttc.feed(torch.tensor([sum(docs, [])], dtype=torch.long))
        rows.append([class_accuracy(model, universe, j, eval_examples, seq, seed) for j in range(tasks_n)])
    return {"matrix": rows, "levels": k, "updates": dict(ttc.updates)}
