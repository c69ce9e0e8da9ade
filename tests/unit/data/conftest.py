"""Shared fixtures for the data tests: tool modules loaded in-process, a tiny SentencePiece model."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FIXTURE_TEXT = os.path.join(REPO, "tests", "fixtures", "hamlet_excerpt.txt")


def load_tool(name: str):
    """Import tools/<name>.py as a module (tools/ is not a package)."""
    tools_dir = os.path.join(REPO, "tools")
    if tools_dir not in sys.path:
        sys.path.insert(0, tools_dir)
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(tools_dir, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def preprocess():
    return load_tool("preprocess_data")


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory):
    """A 600-piece unigram model trained by tools/train_tokenizer.py on the committed Hamlet excerpt."""
    out = tmp_path_factory.mktemp("tok")
    code = load_tool("train_tokenizer").main(
        ["--input", FIXTURE_TEXT, "--text-unit", "paragraph", "--model-prefix", str(out / "sp"), "--vocab-size", "600",
         "--num-threads", "1"])
    assert code == 0
    return str(out / "sp.model")


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")
    return str(path)
