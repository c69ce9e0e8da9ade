"""Case 3: token ids beyond the vocabulary. Shards made with a larger tokenizer (ids past the model, or inside its
padding rows) stop training with one sentence before the model is built; a converted directory holding a tokenizer
larger than its model stops perplexity, zero-shot and NIAH before any work."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tests.robustness.conftest import (BIG, SMALL, assert_no_traceback, copy_tree, error_lines, load_tool,
                                       train_cli)


def test_shards_of_a_larger_tokenizer_stop_training_before_the_model(trained, toks, shards):
    proc = train_cli(trained["args"][:-2] + ["--data-path", shards[BIG]])  # the 700-piece shards, the 400 tokenizer
    assert proc.returncode == 2
    [line] = error_lines(proc.stderr)
    assert line.startswith(f"error: {shards[BIG]}.bin holds token id ")
    top = int(line.split("token id ")[1].split()[0])
    assert SMALL <= top < BIG
    assert line.endswith(f"but the tokenizer (--tokenizer-model {toks[SMALL]}) has {SMALL} ids (0..{SMALL - 1}); these "
                         f"shards were made with a larger tokenizer: train with that one, or re-run "
                         f"tools/preprocess_data.py with this one.")
    assert "parameters" not in proc.stdout  # refused before the model was built
    assert_no_traceback(proc)


@pytest.fixture(scope="module")
def null_shards(tmp_path_factory):
    """NullTokenizer shards holding ids 0..499 (vocab 500)."""
    root = tmp_path_factory.mktemp("null")
    src = root / "ids.jsonl"
    src.write_text("".join(json.dumps({"text": " ".join(str(i) for i in range(j, j + 50))}) + "\n"
                           for j in range(0, 500, 50)))
    prefix = str(root / "ids")
    assert load_tool("preprocess_data").main(["--input", str(src), "--output-prefix", prefix, "--tokenizer-type",
                                              "NullTokenizer", "--vocab-size", "500"]) == 0
    return prefix + "_text_document"


@pytest.mark.parametrize("vocab", [300, 450])  # 450: ids 451..499 land in the padding rows (padded to 512)
def test_ids_past_the_real_vocabulary_are_refused_even_inside_the_padding(null_shards, vocab):
    from hope_megatron.data.token_range import DatasetFileError, check_prefix
    from hope_megatron.training.data import padded_vocab_size

    assert padded_vocab_size(vocab + 1, 128, 1) == (512 if vocab == 450 else 384)
    with pytest.raises(DatasetFileError) as e:
        check_prefix(null_shards, vocab + 1, f"--tokenizer-type NullTokenizer --vocab-size {vocab}")
    assert str(e.value).startswith(f"{null_shards}.bin holds token id 499 but the tokenizer (--tokenizer-type "
                                   f"NullTokenizer --vocab-size {vocab}) has {vocab + 1} ids")
    check_prefix(null_shards, 501, "--vocab-size 500")  # the tokenizer that made them: fine


def test_sampled_scan_of_a_large_bin_and_the_batch_guard(null_shards, monkeypatch):
    """Past FULL_SCAN_BYTES only blocks are read (said in the sentence); every batch is still held to the vocabulary."""
    from hope_megatron.data import token_range
    from hope_megatron.training.data import checked_batches

    monkeypatch.setattr(token_range, "FULL_SCAN_BYTES", 16)
    monkeypatch.setattr(token_range, "BLOCK_BYTES", 8)
    top, whole = token_range.max_token_id(null_shards)
    assert not whole and top <= 499
    good = {"tokens": torch.tensor([[1, 2]]), "labels": torch.tensor([[2, 3]])}
    bad = {"tokens": torch.tensor([[1, 2]]), "labels": torch.tensor([[2, 450]])}
    assert list(checked_batches(iter([good]), 451)) == [good]
    with pytest.raises(ValueError, match="a training batch holds token id 450 but the tokenizer has 300 ids"):
        list(checked_batches(iter([good, bad]), 300))


@pytest.fixture(scope="module")
def big_tok_dir(converted, toks, tmp_path_factory):
    """The converted model with the 700-piece tokenizer in place of its 400-piece one (same file name)."""
    out = copy_tree(converted, tmp_path_factory.mktemp("bigtok") / "torch")
    name = json.load(open(os.path.join(out, "config.json")))["tokenizer_file"]
    shutil.copy(toks[BIG], os.path.join(out, name))
    return out, os.path.join(out, name)


def _expected(tool, out, tok_file):
    # the converter keeps the tokenizer's rows only (issue 15), so config.json's vocab_size is the 400-piece tokenizer's
    return (f"{tool}: the tokenizer of {out} ({tok_file}) has {BIG} ids but the model's vocabulary is {SMALL} "
            f"(config.json vocab_size); put the tokenizer the model was trained with there (checkpoints_convert/convert_to_torch.py "
            f"copies it).")


def test_perplexity_and_niah_refuse_a_larger_tokenizer(big_tok_dir, corpus):
    from hope_megatron.eval import niah, perplexity

    out, tok_file = big_tok_dir
    with pytest.raises(SystemExit) as e:
        perplexity.main(["--checkpoint", out, "--data-path", corpus])
    assert str(e.value) == _expected("perplexity", out, tok_file)
    with pytest.raises(SystemExit) as e:
        niah.main(["--checkpoint", out, "--lengths", "256", "--haystack", corpus])
    assert str(e.value) == _expected("niah", out, tok_file)
    assert not os.path.exists(os.path.join(out, "eval"))  # nothing ran, nothing written


def test_zeroshot_refuses_a_larger_tokenizer(big_tok_dir, tmp_path):
    from hope_megatron.eval import zeroshot

    out, tok_file = big_tok_dir
    os.makedirs(tmp_path / "piqa")
    (tmp_path / "piqa" / "validation.jsonl").write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}))
    with pytest.raises(SystemExit) as e:
        zeroshot.main(["--checkpoint", out, "--tasks", "piqa", "--data-dir", str(tmp_path)])
    assert str(e.value) == _expected("eval", out, tok_file)


def test_perplexity_refuses_shards_beyond_the_model(converted, shards, tmp_path):
    from hope_megatron.eval import perplexity

    with pytest.raises(SystemExit) as e:
        perplexity.main(["--checkpoint", converted, "--data-path", shards[BIG], "--output", str(tmp_path / "p.json")])
    assert str(e.value).startswith(f"perplexity: {shards[BIG]}.bin holds token id ")
    assert str(e.value).endswith(f"but the model's vocabulary is {SMALL}; it was made with another tokenizer: re-run "
                                 "tools/preprocess_data.py with the checkpoint's.")
