"""lm-eval task definitions reading the local benchmark files of tools/fetch_eval_data.py (data/eval/{task}/{split}.jsonl,
HF schemas, data_sources.md §3) with lm-eval 0.4.13's standard zero-shot prompts (its piqa, hellaswag, winogrande,
arc_easy, arc_challenge, social_iqa and super_glue boolq YAMLs, copied as config dicts). Nothing touches the network:
the `json` dataset builder reads the files."""

from __future__ import annotations

import os
import re
from typing import Dict, List

TASKS = ("piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "siqa", "boolq")
# split read per task: ARC is reported on test (what lm-eval reports), the others on validation
SPLITS = {"arc_easy": "test", "arc_challenge": "test"}


def _hs_pre(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_docs(dataset):
    def one(doc):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {"query": _hs_pre(doc["activity_label"] + ": " + ctx),
                "choices": [_hs_pre(e) for e in doc["endings"]], "gold": int(doc["label"])}
    return dataset.map(one)


def wino_text(doc):
    return {"1": 0, "2": 1}[doc["answer"]]


def wino_target(doc):
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def wino_choice(doc):
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


def arc_docs(dataset):
    """ARC test files rebuilt from OLMES requests may hold {query, choices, gold}; the HF schema holds
    {question, choices{text,label}, answerKey}. Both become the HF schema."""
    def one(doc):
        if "answerKey" in doc and doc.get("question"):
            return doc
        q = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        labels = [chr(65 + i) for i in range(len(doc["choices"]))]
        return {"question": q, "choices": {"text": doc["choices"], "label": labels}, "answerKey": labels[doc["gold"]]}
    return dataset.map(one)


_METRICS = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]

_BASE = {
    "piqa": {"doc_to_text": "Question: {{goal}}\nAnswer:", "doc_to_target": "label",
             "doc_to_choice": "{{[sol1, sol2]}}"},
    "hellaswag": {"process_docs": hellaswag_docs, "doc_to_text": "{{query}}", "doc_to_target": "{{label}}",
                  "doc_to_choice": "choices"},
    "winogrande": {"doc_to_text": wino_text, "doc_to_target": wino_target, "doc_to_choice": wino_choice},
    "arc_easy": {"process_docs": arc_docs, "doc_to_text": "Question: {{question}}\nAnswer:",
                 "doc_to_target": "{{choices.label.index(answerKey)}}", "doc_to_choice": "{{choices.text}}"},
    "siqa": {"doc_to_text": "Q: {{context}} {{question}}\nA:", "target_delimiter": " ",
             "doc_to_choice": "{{[answerA, answerB, answerC]}}", "doc_to_target": "{{ (label|int) - 1 }}"},
    "boolq": {"doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:", "doc_to_target": "{{answer|int}}",
              "doc_to_choice": ["no", "yes"]},
}
_BASE["arc_challenge"] = dict(_BASE["arc_easy"])


def task_config(task: str, data_dir: str = "data/eval", path: str = None) -> Dict[str, object]:
    """The lm-eval config dict of one task, named `{task}_local`, reading `path` (default the fetched split)."""
    if task not in _BASE:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}.")
    split = SPLITS.get(task, "validation")
    path = path or os.path.join(data_dir, task, f"{split}.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; run `python tools/fetch_eval_data.py` first (or pass --data-dir).")
    return {"task": f"{task}_local", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"validation": os.path.abspath(path)}},
            "output_type": "multiple_choice", "validation_split": "validation", "metric_list": _METRICS,
            "metadata": {"version": 1.0}, **_BASE[task]}


def task_configs(tasks: List[str], data_dir: str = "data/eval") -> List[Dict[str, object]]:
    return [task_config(t, data_dir) for t in tasks]
