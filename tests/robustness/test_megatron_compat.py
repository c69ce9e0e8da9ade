"""Item 10: tools/preprocess_data.py against Megatron-LM core_v0.16.1's: --split-sentences --keep-newlines splits as
Megatron's (its period-context regex, 1,000,000-character pieces), NLTK_DATA is honoured, empty documents are skipped
and said so, --log-interval counts documents as in Megatron, and Megatron-only tokenizer types are refused with what
to use instead."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from hope_megatron.data.tokenizers import build_tokenizer
from tests.robustness.conftest import REPO, load_tool
from tests.unit.data.test_preprocess_data import read_docs

TEXT = "He cried out !! Then he left.\nShe stayed ?! No.\n"
# Megatron-LM's splitter keeps a run of sentence ends after a space together ("!! ", "?! "); the regex without its
# leading \S* cut them into "!" + "! " (8,000 more sentences on 8 MB of real text in the audit)
MEGATRON_SENTENCES = ["He cried out !! ", "Then he left.\n", "She stayed ?! ", "No."]


def test_keep_newlines_splits_as_megatron():
    from hope_megatron.data.sentences import SentenceSplitter

    assert SentenceSplitter("english", keep_newlines=True)(TEXT) == MEGATRON_SENTENCES


def test_preprocess_keep_newlines_end_to_end(toks, tmp_path):
    src = tmp_path / "s.jsonl"
    src.write_text(json.dumps({"text": TEXT}) + "\n")
    prefix = str(tmp_path / "s")
    assert load_tool("preprocess_data").main(["--input", str(src), "--output-prefix", prefix, "--split-sentences",
                                              "--keep-newlines", "--tokenizer-type", "SentencePieceTokenizer",
                                              "--tokenizer-model", toks[400]]) == 0
    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model=toks[400])
    assert read_docs(prefix + "_text_sentence")[0] == [[tok.tokenize(s) for s in MEGATRON_SENTENCES]]


def test_texts_are_split_in_megatron_pieces_of_a_million_characters():
    from hope_megatron.data import sentences

    splitter = sentences.SentenceSplitter("english")
    text = "word " * 200_001  # 1,000,005 characters, no sentence end: two pieces, cut where Megatron cuts
    pieces = splitter(text)
    assert [len(p) for p in pieces] == [999_999, 4] and sentences.MAX_CHARS == 1_000_000


def test_nltk_data_is_honoured(tmp_path, monkeypatch):
    from hope_megatron.data.sentences import find_punkt_root, punkt_roots

    root = tmp_path / "nltk"
    shutil.copytree(os.path.join(REPO, "third_party", "punkt_tab", "tokenizers"), root / "tokenizers")
    monkeypatch.delenv("HOPE_NLTK_DATA", raising=False)
    monkeypatch.setenv("NLTK_DATA", os.pathsep.join([str(tmp_path / "nowhere"), str(root)]))
    assert find_punkt_root("english") == str(root)
    assert punkt_roots("X")[:3] == [os.path.abspath("X"), str(tmp_path / "nowhere"), str(root)]  # --nltk-data first


def test_log_interval_counts_documents_as_in_megatron(tmp_path, capsys):
    src = tmp_path / "l.jsonl"
    src.write_text("".join(json.dumps({"text": str(i)}) + "\n" for i in range(5)))
    argv = ["--input", str(src), "--output-prefix", str(tmp_path / "l"), "--tokenizer-type", "NullTokenizer",
            "--vocab-size", "10", "--log-interval", "2", "--log-seconds", "1000"]
    assert load_tool("preprocess_data").main(argv) == 0
    lines = [ln.split()[1] for ln in capsys.readouterr().err.splitlines() if ln.startswith("[preprocess]") and " docs " in ln]
    assert lines[:2] == ["2", "4"]  # a line every 2 documents, then the final one
    with pytest.raises(SystemExit):  # seconds as a float: argparse refuses it (int), one usage line
        load_tool("preprocess_data").main(argv[:-4] + ["--log-interval", "0.5"])
    assert "argument --log-interval: invalid int value: '0.5'" in capsys.readouterr().err


def test_megatron_only_tokenizer_types_are_refused_with_what_to_use(tmp_path, capsys, toks):
    hf = tmp_path / "hf_llama"
    hf.mkdir()
    shutil.copy(toks[400], hf / "tokenizer.model")
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps({"text": "a"}) + "\n")
    base = ["--input", str(src), "--output-prefix", str(tmp_path / "o")]
    pre = load_tool("preprocess_data")
    assert pre.main(base + ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(hf)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: tokenizer: --tokenizer-type HuggingFaceTokenizer is not supported (no hub and no transformers here); "
        f"use one of SentencePieceTokenizer, GPT2BPETokenizer, NullTokenizer. {hf} holds a SentencePiece model: "
        f"--tokenizer-type SentencePieceTokenizer --tokenizer-model {hf}/tokenizer.model (no BOS/EOS added, unlike "
        f"transformers' default).")
    assert pre.main(base + ["--tokenizer-type", "TikTokenizer", "--tokenizer-model", "x.json"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: tokenizer: --tokenizer-type TikTokenizer is not supported (tiktoken vocabularies are not read here); "
        "use one of SentencePieceTokenizer, GPT2BPETokenizer, NullTokenizer.")
    assert not os.path.exists(tmp_path / "o_text_document.bin")
