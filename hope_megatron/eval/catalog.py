"""Which zero-shot tasks run from local files and which from lm-eval's own catalog (issue 19 item 2).

The seven Table 1 reasoning tasks run from local files (tools/fetch_eval_data.py, tasks.py) whenever those files are
there: offline, the default. Any other name of lm-eval's catalog (lambada_openai, wikitext, mmlu, a group or a tag),
or one of the seven without its local file, runs from lm-eval's own task definition, whose data the `datasets`
library reads from its cache or the Hugging Face Hub; `preflight` builds those tasks before any model is loaded and
turns an unreachable dataset into one sentence. `write_task_yamls` writes the local tasks as YAML files for the
`lm_eval --model hf --include_path DIR` route. No model code here.
"""

from __future__ import annotations

import difflib
import os
from typing import Dict, List, Tuple

from hope_megatron.eval.tasks import SPLITS, TASKS, task_config

# our local names whose lm-eval catalog name differs
CATALOG_NAME = {"siqa": "social_iqa"}
SHIM = "hope_local_tasks"  # the module the YAML files' !function entries name (written next to them)


def local_path(task: str, data_dir: str) -> str:
    return os.path.join(data_dir, task, f"{SPLITS.get(task, 'validation')}.jsonl")


def split_tasks(tasks: List[str], data_dir: str) -> Tuple[List[str], List[str]]:
    """(local, catalog): the seven with a local file, and every other name as lm-eval's catalog spells it."""
    local = [t for t in tasks if t in TASKS and os.path.isfile(local_path(t, data_dir))]
    catalog = [CATALOG_NAME.get(t, t) for t in tasks if t not in local]
    return local, catalog


def offline_env() -> None:
    """lm-eval, `datasets` and the Hub client must not reach the network (set before they are imported)."""
    for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")


_MANAGER = []


def task_manager():
    """lm-eval's TaskManager (indexing its catalog takes seconds: built once per process)."""
    if not _MANAGER:
        from lm_eval.tasks import TaskManager

        _MANAGER.append(TaskManager())
    return _MANAGER[0]


def preflight(catalog: List[str], data_dir: str):
    """The lm-eval TaskManager with every catalog task built (its data read), or SystemExit with one sentence naming
    the unknown name or the unreachable dataset. Runs before the model is loaded."""
    manager = task_manager()
    known = set(manager.all_tasks)
    for name in catalog:
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=3)
        local = f"; the local tasks are {', '.join(TASKS)}" if name not in TASKS else \
            f"; its local file {local_path(name, data_dir)} is missing too (tools/fetch_eval_data.py writes it)"
        raise SystemExit(f"zeroshot: {name!r} is not an lm-eval task{' (did you mean ' + ', '.join(close) + '?)' if close else ''}"
                         f"{local}; `lm_eval ls tasks` lists the catalog.")
    for name in catalog:
        try:
            manager.load([name])
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; the sentence names the task and the cause
            first = (str(e).strip().splitlines() or [""])[0][:240]
            raise SystemExit(
                f"zeroshot: lm-eval's task {name} could not read its data ({type(e).__name__}: {first}); run where "
                f"the Hugging Face Hub is reachable (or with the `datasets` cache filled there: HF_DATASETS_CACHE), "
                f"or leave {name} out of --tasks.")
    return manager


def write_task_yamls(tasks: List[str], data_dir: str, out_dir: str) -> List[str]:
    """`{task}_local` YAML files for lm-eval's CLI (--include_path out_dir), reading the local files of `data_dir`;
    Python hooks (hellaswag's process_docs, winogrande's choices) go through a shim module next to them that
    re-exports hope_megatron.eval.tasks. Returns the task names written."""
    import yaml

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{SHIM}.py"), "w", encoding="utf-8") as f:
        f.write("# lm-eval !function hooks of the hope_megatron local tasks (needs hope_megatron importable)\n"
                "from hope_megatron.eval.tasks import *  # noqa: F401,F403\n")
    names = []
    for t in tasks:
        cfg = task_config(t, data_dir)
        lines = []
        for key, value in cfg.items():
            if callable(value):
                lines.append(f"{key}: !function {SHIM}.{value.__name__}")
            else:
                lines.append(yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False).rstrip())
        with open(os.path.join(out_dir, f"{cfg['task']}.yaml"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        names.append(cfg["task"])
    return names


def results_by_task(res: dict) -> Dict[str, Dict[str, float]]:
    """lm-eval's `results` ("acc,none": 0.5, ...) -> {task: {metric: value, ..., "n": items}} for every task and
    group it reports; local tasks lose their `_local` suffix. With bootstrap_iters=0 lm-eval leaves accuracy stderrs
    out; they are then the binomial sqrt(p(1-p)/(n-1))."""
    import math

    out = {}
    for name, r in res.get("results", {}).items():
        metrics = {k.split(",")[0]: float(v) for k, v in r.items() if isinstance(v, (int, float)) and "," in k}
        n = int(res.get("n-samples", {}).get(name, {}).get("effective", 0))
        metrics["n"] = n
        for m in ("acc", "acc_norm"):
            if m in metrics and f"{m}_stderr" not in metrics and n > 1:
                metrics[f"{m}_stderr"] = math.sqrt(metrics[m] * (1.0 - metrics[m]) / (n - 1))
        out[name.removesuffix("_local")] = metrics
    return out
