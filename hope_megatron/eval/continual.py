"""Continual learning across domain segments: forgetting matrix, average forgetting, plots, seeds and bootstrap CIs.

    python -m hope_megatron.eval.continual --segments FILE.yaml [--mode A|B] [--seeds 0,1,2] [--plot-dir reports]

FILE.yaml:
    segments:                     # in stream order, e.g. the demo corpus drama -> encyclopedia -> code
      - {name: drama, path: data/demo/drama.jsonl}
      - {name: encyclopedia, path: data/demo/encyclopedia.jsonl}
    eval_docs: 4                  # held-out documents per segment: the LAST ones of each file
    seq_length: 256               # evaluation window length
    max_windows: 16               # windows per segment
    checkpoints: [ck1, ck2]       # mode A: one converted checkpoint per finished segment (or a list of such lists,
                                  #   one per training seed; train_seeds: [1234, 1] names them)
    start_checkpoint: ck0         # mode A, optional: the model before the first segment (matrix row 0)
    checkpoint: ck                # mode B: the model that streams
    stream_tokens: 4096           # mode B: tokens streamed from each segment (its leading documents)
    test_time_cms: {periods: [512, 2048], lr: [1.0e-3, 1.0e-4], clip: [1.0, 1.0], momentum: [0.0, 0.0]}

Mode A evaluates checkpoint i (trained through segment i) on every segment. Mode B streams the segments in order
through one model with test-time CMS updates (hope_math.md §4.4; inference/cms_stream.py) and, after each segment,
evaluates every segment with the CMS weights of that moment (fresh memory state per window). Row 0 of the matrix is the
model before any segment. L[i][j] = mean loss on segment j after stage i. Forgetting of segment j < T (NL-arXiv §7,
Chaudhry et al.): F_j = L[T][j] - min_{j <= i < T} L[i][j] (loss rises = forgetting); average forgetting
AF = mean_j F_j. Also reported: BWT_j = L[T][j] - L[j][j]. Seeds reshuffle the streamed documents (mode B) or are
separate training runs (mode A); CIs are percentile bootstraps over evaluation windows (paired across stages) and seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
from typing import Dict, List

import numpy as np
import torch

from hope_megatron.eval.common import load_tokenizer, read_texts, run_info, write_json
from hope_megatron.inference import load_model


def forgetting(matrix) -> Dict[str, object]:
    """matrix [T+1 or T rows, T cols] of losses, row i = after stage i; the last row is final. Returns per-segment
    forgetting F_j = L[last][j] - min over rows i (that finished segment j, excluding the last) of L[i][j],
    BWT_j = L[last][j] - L[row that just finished j][j], and their means over j < T-1 (the last segment cannot be
    forgotten yet)."""
    m = np.asarray(matrix, dtype=float)
    rows, cols = m.shape
    offset = rows - cols  # 1 when row 0 is the model before any segment
    last = rows - 1
    f, bwt = [], []
    for j in range(cols - 1):
        done = j + offset  # the row right after segment j
        f.append(float(m[last, j] - m[done:last, j].min()))
        bwt.append(float(m[last, j] - m[done, j]))
    return {"forgetting": f, "average_forgetting": float(np.mean(f)) if f else 0.0, "bwt": bwt,
            "average_bwt": float(np.mean(bwt)) if bwt else 0.0}


def bootstrap_af(per_window: List[np.ndarray], n_boot: int = 1000, seed: int = 0) -> List[float]:
    """per_window: one [rows, cols, windows] loss array per seed. Returns [mean AF, lo 2.5%, hi 97.5%] resampling
    seeds and, per segment, its evaluation windows (the same resample for every row: paired)."""
    rng = np.random.default_rng(seed)
    point = float(np.mean([forgetting(w.mean(-1))["average_forgetting"] for w in per_window]))
    stats = []
    for _ in range(n_boot):
        vals = []
        for s in rng.integers(0, len(per_window), len(per_window)):
            w = per_window[s]
            idx = rng.integers(0, w.shape[-1], w.shape[-1])
            vals.append(forgetting(w[:, :, idx].mean(-1))["average_forgetting"])
        stats.append(np.mean(vals))
    return [point, float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def segment_windows(tokenizer, path: str, eval_docs: int, seq_length: int, max_windows: int) -> torch.Tensor:
    from hope_megatron.eval.perplexity import windows

    docs = [tokenizer.tokenize(t) for t in read_texts(path, limit=eval_docs, from_end=True)]
    return windows(docs, tokenizer.eod, seq_length, max_windows)


def stream_tokens(tokenizer, path: str, eval_docs: int, n_tokens: int, seed: int) -> torch.Tensor:
    texts = read_texts(path)
    train = texts[:-eval_docs] if len(texts) > eval_docs else texts[:1]
    random.Random(seed).shuffle(train)
    ids: List[int] = []
    for t in train:
        ids.extend(tokenizer.tokenize(t) + [tokenizer.eod])
        if len(ids) >= n_tokens:
            break
    return torch.tensor([ids[:n_tokens]], dtype=torch.long)


@torch.no_grad()
def window_losses(model, samples: torch.Tensor, batch: int = 4) -> np.ndarray:
    """Mean loss per window, each window a fresh sequence."""
    out = [model.token_nll(samples[i:i + batch], segment=samples.shape[1]).mean(-1) for i in range(0, len(samples), batch)]
    return torch.cat(out).double().numpy()


def mode_a(spec, evalsets) -> np.ndarray:
    rows = []
    for ck in ([spec["start_checkpoint"]] if spec.get("start_checkpoint") else []) + list(spec["checkpoints"]):
        model = load_model(ck)
        rows.append([window_losses(model, w) for w in evalsets])
    return np.asarray(rows)


def mode_b(spec, evalsets, tokenizer, seed: int) -> np.ndarray:
    from hope_megatron.inference.cms_stream import TestTimeCMS, TestTimeCMSConfig

    model = load_model(spec["checkpoint"])
    torch.manual_seed(seed)
    ttc = TestTimeCMS(model, TestTimeCMSConfig(**spec.get("test_time_cms", {})))
    rows = [[window_losses(model, w) for w in evalsets]]
    for seg in spec["segments"]:
        ttc.feed(stream_tokens(tokenizer, seg["path"], spec.get("eval_docs", 4), int(spec.get("stream_tokens", 4096)),
                               seed))
        rows.append([window_losses(model, w) for w in evalsets])
    return np.asarray(rows)


def sequences(spec: dict) -> List[List[str]]:
    """Mode A's checkpoint sequences: `checkpoints` is one list (one training run) or a list of lists (one per
    training seed)."""
    cks = spec.get("checkpoints") or []
    return [list(c) for c in cks] if cks and isinstance(cks[0], (list, tuple)) else [list(cks)]


def run(spec: dict, mode: str, seeds: List[int], n_boot: int = 1000) -> dict:
    """Mode A: one matrix per checkpoint sequence (training seed; `seeds` are then the YAML's `train_seeds` or
    0..n-1); mode B: one per streaming seed in `seeds`."""
    names = [s["name"] for s in spec["segments"]]
    if mode == "A":
        seqs = sequences(spec)
        bad = [len(q) for q in seqs if len(q) != len(names)]
        if bad:
            raise ValueError(f"mode A needs one checkpoint per segment ({len(names)}) in each list under "
                             f"`checkpoints:` in the YAML; got {bad[0]}.")
        seeds = list(spec.get("train_seeds") or range(len(seqs)))
    if mode == "B" and not spec.get("checkpoint"):
        raise ValueError("mode B needs `checkpoint:` (the converted model that streams) in the YAML.")
    ck = seqs[0][0] if mode == "A" else spec["checkpoint"]
    tokenizer = load_tokenizer(ck)
    seq, nwin, ndocs = int(spec.get("seq_length", 256)), int(spec.get("max_windows", 16)), int(spec.get("eval_docs", 4))
    evalsets = [segment_windows(tokenizer, s["path"], ndocs, seq, nwin) for s in spec["segments"]]
    if mode == "A":
        per_seed = [mode_a(dict(spec, checkpoints=q), evalsets) for q in seqs]
    else:
        per_seed = [mode_b(spec, evalsets, tokenizer, seed) for seed in seeds]
    matrix = np.mean([w.mean(-1) for w in per_seed], axis=0)
    start = ["start"] if mode == "B" or spec.get("start_checkpoint") else []
    info_ck = (spec.get("start_checkpoint") or ck) if mode == "A" else ck  # mode A: the model the sequence starts from
    res = {"kind": "continual", "mode": mode, "run": run_info(info_ck), "segments": names, "seeds": seeds,
           "matrix": matrix.tolist(), "row_labels": start + [f"after {n}" for n in names],
           **forgetting(matrix), "average_forgetting_ci": bootstrap_af(per_seed, n_boot),
           "per_seed_average_forgetting": [forgetting(w.mean(-1))["average_forgetting"] for w in per_seed],
           "spec": copy.deepcopy(spec)}
    return res


def main(argv=None) -> dict:
    import yaml

    p = argparse.ArgumentParser(description="Continual-learning forgetting across domain segments.")
    p.add_argument("--segments", required=True, help="YAML file (see the module docstring)")
    p.add_argument("--mode", choices=("A", "B"), default=None, help="A: checkpoint sequence; B: test-time CMS stream "
                   "(default: A when the YAML lists checkpoints, else B)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--plot-dir", default=None)
    p.add_argument("--output", default=None, help="JSON path (default runs/eval/continual_MODE.json)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    with open(a.segments, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    mode = a.mode or ("A" if spec.get("checkpoints") else "B")
    res = run(spec, mode, [int(s) for s in a.seeds.split(",")], a.bootstrap)
    print(json.dumps({k: res[k] for k in ("matrix", "forgetting", "average_forgetting", "average_forgetting_ci")}))
    print(f"average forgetting: {res['average_forgetting']:.4f} (95% CI {res['average_forgetting_ci'][1]:.4f} .. "
          f"{res['average_forgetting_ci'][2]:.4f})")
    if a.plot_dir:
        os.makedirs(a.plot_dir, exist_ok=True)
        from hope_megatron.eval.plots import plot_continual

        res["plots"] = plot_continual(res, a.plot_dir)
    path = write_json(a.output or os.path.join("runs", "eval", f"continual_{mode}.json"), res)
    print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
