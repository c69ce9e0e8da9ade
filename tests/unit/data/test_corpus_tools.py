"""tools/train_tokenizer.py and tools/clean_corpus.py on small local inputs."""

from __future__ import annotations

import json
import random

import sentencepiece as spm

from .conftest import FIXTURE_TEXT, load_tool, write_jsonl


def test_train_tokenizer_writes_model_vocab_and_eod_sidecar(tmp_path):
    tool = load_tool("train_tokenizer")
    rows = [{"text": p, "meta": 1} for p in open(FIXTURE_TEXT, encoding="utf-8").read().split("\n\n") if p.strip()]
    src = write_jsonl(tmp_path / "h.jsonl", rows)
    prefix = str(tmp_path / "bpe")
    assert tool.main(["--input", src, "--model-prefix", prefix, "--vocab-size", "700", "--model-type", "bpe",
                      "--num-threads", "1"]) == 0
    meta = json.load(open(prefix + ".json"))
    assert (meta["eod_id"], meta["pad_id"], meta["vocab_size"], meta["model_type"]) == (2, 3, 700, "bpe")
    assert meta["sampled_chunks"] == len(rows)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    assert sp.id_to_piece(2) == "</s>" and sp.piece_to_id("\n") > 3
    assert len(open(prefix + ".vocab", encoding="utf-8").read().splitlines()) == 700
    text = "Ghost of Hamlet's Father — 🙂"  # the emoji is unseen: byte fallback keeps it lossless
    assert sp.decode(sp.encode(text)) == text


def test_train_tokenizer_samples_large_inputs_deterministically(tmp_path):
    tool = load_tool("train_tokenizer")
    # 300 copies of the excerpt's paragraphs (~2.7 MB) sampled down to ~0.5 MB
    paragraphs = [p for p in open(FIXTURE_TEXT, encoding="utf-8").read().split("\n\n") if p.strip()]
    src = write_jsonl(tmp_path / "big.jsonl", [{"text": p} for _ in range(300) for p in paragraphs])
    metas = []
    for run in ("a", "b"):
        assert tool.main(["--input", src, "--model-prefix", str(tmp_path / run), "--vocab-size", "600",
                          "--max-sample-mb", "0.5", "--num-threads", "1"]) == 0
        metas.append(json.load(open(tmp_path / f"{run}.json")))
    assert metas[0]["sampled_chunks"] == metas[1]["sampled_chunks"]
    assert 0.35e6 < metas[0]["sampled_chars"] < 0.65e6
    assert metas[0]["model_sha256"] == metas[1]["model_sha256"]


def test_clean_corpus_removes_and_reports(tmp_path):
    tool = load_tool("clean_corpus")
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefgh") for _ in range(5)) for _ in range(300)]
    base = [rng.choice(words) for _ in range(400)]
    near = list(base)
    near[100] = "zzzzz"  # one word of 400 changed: Jaccard of 5-shingles ~0.98
    rows = [
        {"text": "Hello   world.\r\nSecond line   \n\n\n\nThird", "id": 1},
        {"text": "hello world. second line third", "id": 2},  # exact duplicate after case/space folding
        {"text": "", "id": 3},
        {"text": "Привет мир, это русский текст", "id": 4},
        {"text": "x" * 50, "id": 5},
        {"text": "ﬁne ＡＢＣ", "id": 6},  # NFKC: ligature and full-width letters
        {"text": " ".join(base), "id": 7},
        {"text": " ".join(near), "id": 8},
        {"text": " ".join(rng.choice(words) for _ in range(400)), "id": 9},
    ]
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    out = str(tmp_path / "clean.jsonl")
    assert tool.main(["--input", src, "--output", out, "--max-chars", "3000", "--min-chars", "5"]) == 0
    kept = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert [r["id"] for r in kept] == [1, 5, 6, 7, 9]
    assert kept[0]["text"] == "Hello   world.\nSecond line\n\nThird" and kept[2]["text"] == "fine ABC"
    report = json.load(open(out + ".report.json"))
    assert report["removed"] == {"exact_duplicate": 1, "empty": 1, "non_latin_script": 1, "near_duplicate": 1}
    assert report["examples"]["near_duplicate"] == [f"{src}:8"]
    assert tool.main(["--input", src, "--output", out, "--max-chars", "40"]) == 0
    assert json.load(open(out + ".report.json"))["removed"]["too_long"] == 4
