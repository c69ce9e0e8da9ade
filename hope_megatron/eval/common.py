"""Shared helpers of the evaluation CLIs: loading a converted checkpoint with its tokenizer, reading texts, JSON out."""

from __future__ import annotations

import json
import os
import platform as _platform
import time
from typing import Iterator, List, Optional

import torch

from hope_megatron.inference import load_model, read_config


def load_tokenizer(checkpoint: str):
    """The tokenizer the checkpoint was trained with (its file was copied next to the weights by the converter)."""
    from hope_megatron.data.tokenizers import build_tokenizer

    cfg = read_config(checkpoint)
    kind = cfg.get("tokenizer_type") or "NullTokenizer"
    args_path = os.path.join(checkpoint, "megatron_args.json")
    args = json.load(open(args_path, encoding="utf-8")) if os.path.isfile(args_path) else {}
    local = lambda key: os.path.join(checkpoint, os.path.basename(args[key])) if args.get(key) else None  # noqa: E731
    if kind == "NullTokenizer":
        return build_tokenizer(kind, vocab_size=args.get("vocab_size") or cfg["vocab_size"] - 1)
    return build_tokenizer(kind, tokenizer_model=local("tokenizer_model"), vocab_file=local("vocab_file"),
                           merge_file=local("merge_file"))


def load(checkpoint: str, threads: Optional[int] = None, tool: str = "eval"):
    """(model, tokenizer, config dict) of a converted directory. A missing config/tokenizer, or a tokenizer with more
    ids than the model's vocabulary (an IndexError at the first forward otherwise), stops with one sentence before
    the weights are read."""
    if threads:
        torch.set_num_threads(threads)
    try:
        cfg = read_config(checkpoint)
        tokenizer = load_tokenizer(checkpoint)
    except (OSError, ValueError, RuntimeError) as e:
        raise SystemExit(f"{tool}: {e}") from e
    check_tokenizer_fits(checkpoint, tokenizer, cfg, tool)
    return load_model(checkpoint), tokenizer, cfg


def check_tokenizer_fits(checkpoint: str, tokenizer, cfg: dict, tool: str = "eval") -> None:
    if tokenizer.vocab_size > int(cfg["vocab_size"]):
        name = os.path.join(checkpoint, cfg["tokenizer_file"]) if cfg.get("tokenizer_file") else "its NullTokenizer"
        raise SystemExit(
            f"{tool}: the tokenizer of {checkpoint} ({name}) has {tokenizer.vocab_size} ids but the model's vocabulary "
            f"is {cfg['vocab_size']} (config.json vocab_size); put the tokenizer the model was trained with there "
            f"(checkpoints_convert/convert_to_torch.py copies it).")


def read_texts(path: str, field: str = "text", limit: Optional[int] = None, from_end: bool = False) -> List[str]:
    """Texts of a .jsonl file (the `field` of each line) or a plain .txt file (one text)."""
    if path.endswith(".txt"):
        return [open(path, encoding="utf-8").read()]
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line)[field] for line in f if line.strip()]
    if limit is not None:
        rows = rows[-limit:] if from_end else rows[:limit]
    return rows


def iter_jsonl(path: str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def run_info(checkpoint: str) -> dict:
    cfg = read_config(checkpoint)
    return {"checkpoint": os.path.abspath(checkpoint), "variant": cfg.get("hope_variant"),
            "layers": cfg.get("num_layers"), "hidden_size": cfg.get("hidden_size"), "iteration": cfg.get("iteration"),
            "parameters": None, "host": _platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_json(path: str, obj) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    return path


def default_output(checkpoint: str, name: str) -> str:
    return os.path.join(checkpoint, "eval", f"{name}.json")
