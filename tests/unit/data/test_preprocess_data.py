"""tools/preprocess_data.py: outputs read back through megatron-core, keys, workers, bad input, sentences."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from hope_megatron.data.tokenizers import build_tokenizer

from .conftest import write_jsonl

DOCS = [
    "To be, or not to be, that is the question.",
    "Whether 'tis nobler in the mind to suffer\nThe slings and arrows of outrageous fortune,",
    "Ünïcödé — and tabs\tand  double spaces.",
    "Or to take arms against a sea of troubles,",
]


def read_docs(prefix):
    """Every document of an indexed dataset as a list of its sequences (lists of ints), and the dtype."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    docs = []
    bounds = ds.document_indices
    for d in range(len(bounds) - 1):
        docs.append([ds[i].tolist() for i in range(bounds[d], bounds[d + 1])])
    return docs, ds.index.dtype


def sp_args(model):
    return ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model]


def test_documents_round_trip_with_eod_and_summary(preprocess, sp_model, tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": d} for d in DOCS[:2]] + ["", {"text": "  "}, {"text": DOCS[2]}])
    txt = tmp_path / "b.txt"
    txt.write_text(DOCS[3], encoding="utf-8")
    prefix = str(tmp_path / "out" / "c")
    code = preprocess.main(["--input", src, str(txt), "--output-prefix", prefix, "--append-eod", *sp_args(sp_model)])
    assert code == 0
    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model)
    docs, dtype = read_docs(prefix + "_text_document")
    assert dtype == np.uint16
    assert docs == [[tok.tokenize(d) + [tok.eod]] for d in (DOCS[0], DOCS[1], DOCS[2], DOCS[3])]
    assert tok.eod == 2 and tok.detokenize(docs[1][0][:-1]) == DOCS[1]
    err = capsys.readouterr().err
    assert "4 documents" in err and "1 blank line" in err and "1 empty or whitespace-only text" in err
    assert not glob.glob(prefix + "*.tmp-*")


def test_every_json_key_is_finalised(preprocess, tmp_path):
    src = write_jsonl(tmp_path / "k.jsonl", [{"text": "1 2 3", "title": "7"}, {"text": "4", "title": "8 9"}])
    prefix = str(tmp_path / "k")
    args = ["--input", src, "--output-prefix", prefix, "--json-keys", "text", "title", "--tokenizer-type",
            "NullTokenizer", "--vocab-size", "10", "--append-eod"]
    assert preprocess.main(args) == 0
    assert read_docs(prefix + "_text_document")[0] == [[[1, 2, 3, 10]], [[4, 10]]]
    assert read_docs(prefix + "_title_document")[0] == [[[7, 10]], [[8, 9, 10]]]


def test_workers_1_and_2_are_byte_identical(preprocess, sp_model, tmp_path):
    rows = [{"text": f"{DOCS[i % 4]} number {i}."} for i in range(120)]
    src = write_jsonl(tmp_path / "w.jsonl", rows)
    outs = []
    for workers in (1, 2):
        prefix = str(tmp_path / f"w{workers}")
        assert preprocess.main(["--input", src, "--output-prefix", prefix, "--workers", str(workers), "--chunk-size",
                                "3", "--append-eod", *sp_args(sp_model)]) == 0
        outs.append([open(f"{prefix}_text_document{ext}", "rb").read() for ext in (".bin", ".idx")])
    assert outs[0] == outs[1]
    assert len(read_docs(str(tmp_path / "w2") + "_text_document")[0]) == 120


BAD = {
    "malformed_json": (b'{"text": "ok"}\n{"text": "a" "b"}\n', ":2: malformed JSON"),
    "missing_key": (b'{"text": "ok"}\n{"body": "x"}\n', ":2: key 'text' missing (found keys: body)"),
    "invalid_utf8": (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', ":2: invalid UTF-8 (byte 0xe9 at offset 13)"),
    "not_a_string": (b'{"text": ["a"]}\n{"text": "ok"}\n', ":1: key 'text' holds a list, expected a string"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_stops_with_file_line_and_leaves_no_output(preprocess, sp_model, tmp_path, capsys, case):
    data, message = BAD[case]
    src = tmp_path / "bad.jsonl"
    src.write_bytes(data)
    prefix = str(tmp_path / "bad")
    assert preprocess.main(["--input", str(src), "--output-prefix", prefix, *sp_args(sp_model)]) == 3
    assert f"{src}{message}" in capsys.readouterr().err
    assert glob.glob(prefix + "_*") == []
    # the same file with --skip-bad-lines: counted, reported, and the good lines written
    assert preprocess.main(["--input", str(src), "--output-prefix", prefix, "--skip-bad-lines", *sp_args(sp_model)]) == 0
    assert f"1 {case.replace('_', ' ')}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--input", "MISSING*.jsonl"], "matches no file"),
    (["--input", "IN", "--tokenizer-model", "nope.model"], "--tokenizer-model nope.model does not exist"),
    (["--input", "IN", "--partitions", "2"], "--partitions is not needed"),
    (["--input", "IN", "--keep-newlines"], "--keep-newlines only applies with --split-sentences"),
    (["--input", "IN", "--json-keys", "a", "a"], "must be distinct"),
])
def test_arguments_are_checked_before_any_output(preprocess, sp_model, tmp_path, capsys, argv, message):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    argv = [src if a == "IN" else str(tmp_path / a) if a.startswith("MISSING") else a for a in argv]
    if "--tokenizer-model" not in argv:
        argv += ["--tokenizer-model", sp_model]
    prefix = str(tmp_path / "sub" / "p")
    assert preprocess.main([*argv, "--output-prefix", prefix, "--tokenizer-type", "SentencePieceTokenizer"]) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "sub")


def test_split_sentences_uses_punkt_tab(preprocess, sp_model, tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"text": "Dr. Smith arrived. He sat."}])
    prefix = str(tmp_path / "s")
    assert preprocess.main(["--input", src, "--output-prefix", prefix, "--split-sentences", "--append-eod",
                            *sp_args(sp_model)]) == 0
    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model)
    docs, _ = read_docs(prefix + "_text_sentence")
    assert docs == [[tok.tokenize("Dr. Smith arrived."), tok.tokenize("He sat.") + [tok.eod]]]


def test_large_vocabulary_uses_int32(preprocess, tmp_path):
    src = write_jsonl(tmp_path / "n.jsonl", [{"text": "65535 65536 69999"}])
    prefix = str(tmp_path / "n")
    assert preprocess.main(["--input", src, "--output-prefix", prefix, "--tokenizer-type", "NullTokenizer",
                            "--vocab-size", "70000"]) == 0
    docs, dtype = read_docs(prefix + "_text_document")
    assert dtype == np.int32 and docs == [[[65535, 65536, 69999]]]


def test_interrupted_run_leaves_no_pair(preprocess, tmp_path, monkeypatch, capsys):
    from hope_megatron.data import document_encoder as enc

    src = write_jsonl(tmp_path / "i.jsonl", [{"text": str(i)} for i in range(10)])
    real = enc.encode

    def interrupt_on_fifth(record):
        if record[1] == 5:
            raise KeyboardInterrupt
        return real(record)

    monkeypatch.setattr(enc, "encode", interrupt_on_fifth)
    prefix = str(tmp_path / "i")
    assert preprocess.main(["--input", src, "--output-prefix", prefix, "--tokenizer-type", "NullTokenizer",
                            "--vocab-size", "10"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["i.jsonl"]


def test_plain_text_paragraphs_gzip_and_keep_newlines(preprocess, sp_model, tmp_path):
    import gzip

    with gzip.open(tmp_path / "p.txt.gz", "wt", encoding="utf-8") as f:
        f.write("First para. Still first.\nSame para.\n\n\nSecond para.\n")
    prefix = str(tmp_path / "p")
    assert preprocess.main(["--input", str(tmp_path / "p.txt.gz"), "--text-unit", "paragraph", "--output-prefix", prefix,
                            "--split-sentences", "--keep-newlines", *sp_args(sp_model)]) == 0
    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model)
    docs, _ = read_docs(prefix + "_text_sentence")
    # newlines inside a paragraph stay with their sentence; Punkt trims the whitespace ending the text
    assert docs == [[tok.tokenize(s) for s in ("First para. ", "Still first.\n", "Same para.")],
                    [tok.tokenize("Second para.")]]
