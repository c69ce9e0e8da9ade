"""Tokenizers (GPT-2 BPE on a hand-made vocabulary, Null, SentencePiece) and build_gpt_datasets over our outputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from hope_megatron.data import build_gpt_datasets, build_tokenizer, parse_blend
from hope_megatron.data.tokenizers import _bytes_to_unicode

from .conftest import write_jsonl


def tiny_gpt2_files(tmp_path):
    """256 byte tokens + merges "h e", "l l", "he ll", "Ġ w" + <|endoftext|>: the GPT-2 file formats in miniature."""
    table = _bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(table[b] for b in range(256))}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "encoder.json").write_text(json.dumps(vocab))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return str(tmp_path / "encoder.json"), str(tmp_path / "vocab.bpe"), vocab


def test_gpt2_bpe_applies_merges_by_rank_and_round_trips(tmp_path):
    vocab_file, merge_file, vocab = tiny_gpt2_files(tmp_path)
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab_file, merge_file=merge_file)
    ids = tok.tokenize("hello world é")
    assert ids == [vocab["hell"], vocab["o"], vocab["Ġw"], vocab["o"], vocab["r"], vocab["l"], vocab["d"],
                   vocab["Ġ"], vocab["Ã"], vocab["©"]]
    assert tok.detokenize(ids) == "hello world é"
    assert (tok.vocab_size, tok.eod, tok.pad) == (261, 260, -1)


def test_null_and_sentencepiece_tokenizers(sp_model, tmp_path):
    null = build_tokenizer("NullTokenizer", vocab_size=50)
    assert (null.tokenize("3 4 49"), null.vocab_size, null.eod, null.detokenize([1, 2])) == ([3, 4, 49], 51, 50, "1 2")
    with pytest.raises(ValueError, match="outside"):
        null.tokenize("50")
    sp = build_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model)
    assert (sp.vocab_size, sp.eod, sp.pad) == (600, 2, 3)
    code = "def f(x):\n    return  x\t+ 1\n"
    assert sp.detokenize(sp.tokenize(code)) == code  # newlines, indentation and tabs survive
    with pytest.raises(ValueError, match="needs --vocab-file"):
        build_tokenizer("GPT2BPETokenizer")


def test_parse_blend_forms(tmp_path):
    for name in ("a", "b"):
        for ext in (".bin", ".idx"):
            (tmp_path / (name + ext)).write_bytes(b"")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert parse_blend([a]) == ([a], None)
    assert parse_blend([a, b]) == ([a, b], None)
    assert parse_blend([f"0.3 {a} 0.7 {b}"]) == ([a, b], [0.3, 0.7])
    assert parse_blend(["1", a, "3", b]) == ([a, b], [1.0, 3.0])
    with pytest.raises(ValueError, match="lacks"):
        parse_blend([str(tmp_path / "c")])


def _two_prefixes(preprocess, tmp_path):
    """Dataset A holds ids 1..9, dataset B ids 11..19 (NullTokenizer, vocab 20, EOD 20)."""
    prefixes = []
    for name, base in (("A", 1), ("B", 11)):
        rows = [{"text": " ".join(str(base + (i + j) % 9) for j in range(7 + i % 5))} for i in range(60)]
        src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        prefix = str(tmp_path / name)
        assert preprocess.main(["--input", src, "--output-prefix", prefix, "--tokenizer-type", "NullTokenizer",
                                "--vocab-size", "20", "--append-eod"]) == 0
        prefixes.append(prefix + "_text_document")
    return prefixes


def test_blended_builder_over_two_preprocessed_files(preprocess, tmp_path):
    a, b = _two_prefixes(preprocess, tmp_path)
    tok = build_tokenizer("NullTokenizer", vocab_size=20)
    train, valid, test = build_gpt_datasets([f"0.25 {a} 0.75 {b}"], "90,5,5", seq_length=16, seed=7,
                                            train_valid_test_num_samples=[40, 4, 4], tokenizer=tok)
    assert len(train) == 40 and len(valid) == 4 and len(test) == 4
    from_b = 0
    for i in range(len(train)):
        sample = train[i]
        tokens = sample["tokens"].numpy()
        assert tokens.shape == (16,) and np.array_equal(sample["labels"].numpy()[:-1], tokens[1:])
        real = tokens[tokens != tok.eod]
        assert real.min() >= 1 and real.max() <= 19
        in_b = bool((real >= 11).all())
        assert in_b or bool((real <= 9).all())  # a sample never mixes the two sources
        from_b += in_b
    assert from_b == 30  # 0.75 of 40: megatron's greedy blend is exact


def test_mock_datasets_need_no_files():
    tok = build_tokenizer("NullTokenizer", vocab_size=100)
    train, valid, test = build_gpt_datasets(None, "1,1,1", 8, 1, [5, 2, 2], tok, mock=True)
    assert min(len(train), len(valid), len(test)) >= 5 - 3  # megatron's mock data covers at least the request
    tokens = train[0]["tokens"]
    assert tokens.shape == (8,) and 0 <= int(tokens.min()) and int(tokens.max()) <= tok.eod


def test_blend_with_cache_dir_under_a_process_group(preprocess, tmp_path):
    import torch.distributed as dist

    a, b = _two_prefixes(preprocess, tmp_path)
    tok = build_tokenizer("NullTokenizer", vocab_size=20)
    with pytest.raises(ValueError, match="needs torch.distributed initialised"):
        build_gpt_datasets([a, b], "90,5,5", 16, 7, [20, 2, 2], tok, cache_dir=str(tmp_path / "cache"))
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        train, _, _ = build_gpt_datasets([a, b], "90,5,5", 16, 7, [20, 2, 2], tok, cache_dir=str(tmp_path / "cache"))
        first = train[3]["tokens"].tolist()
        again, _, _ = build_gpt_datasets([a, b], "90,5,5", 16, 7, [20, 2, 2], tok, cache_dir=str(tmp_path / "cache"))
    finally:
        dist.destroy_process_group()
    assert again[3]["tokens"].tolist() == first
    assert any(f.endswith("shuffle_index.npy") for f in os.listdir(tmp_path / "cache"))


def test_split_without_documents_is_refused_not_looped(preprocess, tmp_path):
    """60 documents and "969,30,1": the test split rounds to 0 documents, which megatron would loop on forever."""
    a, _ = _two_prefixes(preprocess, tmp_path)
    tok = build_tokenizer("NullTokenizer", vocab_size=20)
    with pytest.raises(ValueError, match=r"gives the test split no document of .*\(60 documents\)"):
        build_gpt_datasets([a], "969,30,1", seq_length=16, seed=7, train_valid_test_num_samples=[40, 4, 4], tokenizer=tok)
    with pytest.raises(ValueError, match="cannot build an empty split"):  # megatron builds it even for 0 samples
        build_gpt_datasets([a], "969,30,1", seq_length=16, seed=7, train_valid_test_num_samples=[40, 4, 0], tokenizer=tok)
    train, valid, test = build_gpt_datasets([a], "98,2,0", seq_length=16, seed=7,
                                            train_valid_test_num_samples=[40, 4, 0], tokenizer=tok)
    assert len(train) >= 40 and len(valid) >= 4 and test is None  # megatron rounds up to whole epochs
