"""Case 5: output paths are checked before any work, in train_tokenizer.py, the three data tools and the converter
(a path under a file, a read-only location, a full disk, a non-empty converter --output); --overwrite clears the earlier
conversion's stale files, says which, and keeps the rest."""

from __future__ import annotations

import errno
import json
import os

import pytest

from hope_megatron.testing import run_distributed
from tests.robustness.conftest import FIXTURE_TEXT, load_tool


@pytest.fixture()
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("I am a file\n")
    return str(path)


def test_data_tools_refuse_an_output_under_a_file(corpus, toks, a_file, capsys):
    cases = {
        "train_tokenizer": (["--input", corpus, "--model-prefix", a_file + "/tok/sp", "--vocab-size", "400"],
                            "--model-prefix"),
        "preprocess_data": (["--input", corpus, "--output-prefix", a_file + "/shards/h", "--tokenizer-type",
                             "SentencePieceTokenizer", "--tokenizer-model", toks[400]], "--output-prefix"),
        "clean_corpus": (["--input", corpus, "--output", a_file + "/clean/c.jsonl"], "--output"),
    }
    for tool, (argv, flag) in cases.items():
        assert load_tool(tool).main(argv) == 2, tool
        value = argv[argv.index(flag) + 1]
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {flag} {value}: {a_file} is a file, not a directory; choose another path or move the "
                       f"file."], tool
    assert open(a_file).read() == "I am a file\n"


def test_read_only_model_prefix_is_refused_before_training(corpus, tmp_path, monkeypatch, capsys):
    """A read-only file system (EROFS from the probe file; root ignores chmod, so the OS error is injected)."""
    from hope_megatron.data import output_paths

    ro = tmp_path / "ro"
    ro.mkdir()

    def read_only(dir=None, prefix=None, **kw):  # noqa: A002 - tempfile's keyword
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(output_paths.tempfile, "mkstemp", read_only)
    tool = load_tool("train_tokenizer")
    trained = []
    monkeypatch.setattr(tool, "train", lambda *a: trained.append(1))
    assert tool.main(["--input", FIXTURE_TEXT, "--model-prefix", str(ro / "sp"), "--vocab-size", "400"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --model-prefix {ro}/sp: {ro} is on a read-only file system; "
                                               f"choose a writable location.")
    assert trained == [] and os.listdir(ro) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into mode-0555 directories; the EROFS case covers it")
def test_unwritable_directory_by_permissions(corpus, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert load_tool("clean_corpus").main(["--input", corpus, "--output", str(ro / "c.jsonl")]) == 2
    finally:
        ro.chmod(0o755)
    assert "is not writable (permission denied); choose a writable location." in capsys.readouterr().err


def converter_worker(load, cases):
    """One process: convert_to_torch.main per case; {name: (exit message or None, listing of the output)}."""
    import shutil as sh

    from checkpoints_convert import convert_to_torch

    out = {}
    for name, (argv, free) in cases.items():
        real = sh.disk_usage
        if free is not None:  # a nearly full disk
            sh.disk_usage = lambda p: real(p)._replace(free=free)
        try:
            convert_to_torch.main(["--load", load] + argv)
            msg = None
        except SystemExit as e:
            msg = str(e)
        finally:
            sh.disk_usage = real
        target = argv[argv.index("--output") + 1]
        out[name] = (msg, sorted(os.listdir(target)) if os.path.isdir(target) else None)
    return out


def test_converter_output_checks(trained, converted, toks, a_file, tmp_path):
    old = str(tmp_path / "old")
    os.makedirs(os.path.join(old, "eval"))
    for name in ("model.safetensors", "config.json", "megatron_args.json", "eval/perplexity.json", "notes.md",
                 "modeling_hope.py", "tokenizer_config.json"):  # the last two: an earlier export_hf.py
        open(os.path.join(old, name), "w").write("{}" if name.endswith(".json") else "stale")
    json.dump({"tokenizer_file": "old_tok.model"}, open(os.path.join(old, "config.json"), "w"))
    open(os.path.join(old, "old_tok.model"), "w").write("stale tokenizer")
    cases = {"file": (["--output", a_file], None),
             "full disk": (["--output", str(tmp_path / "new")], 1000),
             "not empty": (["--output", old], None),
             "overwrite": (["--output", old, "--overwrite"], None)}
    res = run_distributed(converter_worker, 1, trained["save"], cases, timeout=400)[0]
    assert res["file"] == (f"convert_to_torch: --output {a_file} is a file, not a directory; pass a directory path.",
                           None)
    msg, listing = res["full disk"]
    assert msg.startswith(f"convert_to_torch: --output {tmp_path}/new: {tmp_path} has 1.0 KB free but the output needs "
                          f"about ") and msg.endswith("; free space or choose another location.") and listing is None
    assert res["not empty"] == (
        f"convert_to_torch: --output {old} is not empty (config.json, eval/, megatron_args.json, model.safetensors, "
        f"modeling_hope.py, notes.md and 2 more); pass a new or empty directory, or add --overwrite to replace the earlier "
        f"conversion (its weights, config, tokenizer and eval/ results are removed).",
        ["config.json", "eval", "megatron_args.json", "model.safetensors", "modeling_hope.py", "notes.md",
         "old_tok.model", "tokenizer_config.json"])
    new_tok = os.path.basename(toks[400])
    assert res["overwrite"] == (None, sorted(["config.json", "megatron_args.json", "model.safetensors", "notes.md",
                                              new_tok]))
    assert open(os.path.join(old, "notes.md")).read() == "stale"  # not the converter's: kept
    assert open(os.path.join(old, "model.safetensors"), "rb").read() == \
        open(os.path.join(converted, "model.safetensors"), "rb").read()


def test_a_disk_that_fills_up_mid_run_is_one_sentence_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    from hope_megatron.data import indexed

    def full(self, pieces):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(indexed.AtomicIndexedWriter, "add_document", full)
    src = tmp_path / "ids.jsonl"
    src.write_text(json.dumps({"text": "1 2 3"}) + "\n")
    prefix = str(tmp_path / "out" / "h")
    assert load_tool("preprocess_data").main(["--input", str(src), "--output-prefix", prefix, "--tokenizer-type",
                                              "NullTokenizer", "--vocab-size", "10"]) == 4
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: the disk holding {prefix} filled up while writing it (No space left on device); free space and "
        f"re-run. No output was written (temporary files removed).")
    assert os.listdir(tmp_path / "out") == []
