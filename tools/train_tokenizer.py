#!/usr/bin/env python
"""Train a SentencePiece tokenizer (unigram by default, or BPE) on jsonl / plain-text corpora.

  python tools/train_tokenizer.py --input 'data/demo/*.jsonl' --model-prefix data/tok/demo8k --vocab-size 8000

Writes P.model, P.vocab and P.json (eod_id, pad_id, vocab size, sources, sample size, training time).
Ids: 0 <unk>, 1 <s>, 2 </s> = end of document (EOD), 3 <pad>. Byte fallback is on, normalisation is NFKC without
whitespace collapsing and "\\n" is a piece, so code and line breaks survive a round trip.
Large inputs are sampled (--max-sample-mb) deterministically (--seed) at the document-chunk level.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hope_megatron.data.corpus_files import CorpusError, expand_inputs, iter_texts  # noqa: E402
from hope_megatron.data.document_encoder import TEXT_UNITS  # noqa: E402
from hope_megatron.data.output_paths import check_file, enospc_message, remove_stale_temporaries  # noqa: E402

SPECIAL = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}
EOD_ID = SPECIAL["eos_id"]
SUFFIXES = (".vocab", ".json", ".model")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="files or globs (jsonl or plain text)")
    p.add_argument("--input-format", choices=("auto", "jsonl", "text"), default="auto")
    p.add_argument("--text-unit", choices=TEXT_UNITS, default="file")
    p.add_argument("--json-keys", nargs="+", default=["text"])
    p.add_argument("--model-prefix", required=True, help="writes PREFIX.model, PREFIX.vocab, PREFIX.json")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--no-byte-fallback", dest="byte_fallback", action="store_false")
    p.add_argument("--max-sample-mb", type=float, default=200.0, help="sample the input down to about this much text")
    p.add_argument("--chunk-chars", type=int, default=8192, help="documents are cut at line breaks into chunks this long")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--num-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip-bad-lines", action="store_true")
    return p.parse_args(argv)


def check_args(args):
    if args.vocab_size < 16:
        raise CorpusError(f"--vocab-size {args.vocab_size} is too small; use at least 16 (e.g. 8000).")
    if not 0.9 <= args.character_coverage <= 1.0:
        raise CorpusError("--character-coverage must be in [0.9, 1.0].")
    if args.max_sample_mb <= 0 or args.chunk_chars < 64 or args.num_threads < 1:
        raise CorpusError("--max-sample-mb must be > 0, --chunk-chars >= 64 and --num-threads >= 1.")
    out_dir = os.path.dirname(os.path.abspath(args.model_prefix))
    for suffix in SUFFIXES:  # before reading or training anything (OutputPathError is a CorpusError's sibling)
        try:
            check_file("--model-prefix", args.model_prefix, args.model_prefix + suffix)
        except ValueError as err:
            raise CorpusError(str(err)) from err
    paths, formats = expand_inputs(args.input, args.input_format)
    if "text" in formats and len(args.json_keys) != 1:
        raise CorpusError("plain-text inputs have one field; pass a single --json-keys name.")
    return paths, formats, out_dir


def chunks_of(text: str, limit: int):
    """Cut text at line breaks into pieces of at most `limit` chars (longer lines are cut hard)."""
    buf, size = [], 0
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            yield line[:limit]
            line = line[limit:]
        if size + len(line) > limit and buf:
            yield "".join(buf)
            buf, size = [], 0
        buf.append(line)
        size += len(line)
    if buf:
        yield "".join(buf)


def sample_chunks(args, paths, formats, bad):
    total = sum(os.path.getsize(p) for p in paths)
    keep = min(1.0, args.max_sample_mb * 1e6 / max(total, 1))
    rng = random.Random(args.seed)
    sample, chars = [], 0
    for _, _, _, text in iter_texts(paths, formats, tuple(args.json_keys), args.text_unit, args.skip_bad_lines, bad):
        for chunk in chunks_of(text, args.chunk_chars):
            if chunk.strip() and (keep >= 1.0 or rng.random() < keep):
                sample.append(chunk)
                chars += len(chunk)
    if not sample:
        raise CorpusError(f"{', '.join(paths)} hold no text to train on (every document is empty or whitespace); "
                          f"check --input and --json-keys.")
    return sample, chars, total


def train(args, sample):
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample), model_writer=model, vocab_size=args.vocab_size, model_type=args.model_type,
        character_coverage=args.character_coverage, byte_fallback=args.byte_fallback,
        normalization_rule_name="nfkc", remove_extra_whitespaces=False, user_defined_symbols=["\n"],
        allow_whitespace_only_pieces=True, split_digits=True, max_sentence_length=args.chunk_chars * 4,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=args.num_threads, seed_sentencepiece_size=1000000,
        hard_vocab_limit=True, minloglevel=2, **SPECIAL,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>",
    )
    return model.getvalue()


def main(argv=None) -> int:
    args = get_args(argv)
    try:
        paths, formats, out_dir = check_args(args)
        start = time.monotonic()
        bad = Counter()
        sample, chars, total = sample_chunks(args, paths, formats, bad)
        read_s = time.monotonic() - start
        print(f"[train_tokenizer] {len(sample):,} chunks, {chars / 1e6:.2f} M chars sampled from {total / 1e6:.2f} MB "
              f"in {read_s:.1f} s", file=sys.stderr, flush=True)
        cpu0 = time.process_time()
        proto = train(args, sample)
        train_cpu = time.process_time() - cpu0  # all SentencePiece threads: a load-independent cost
    except CorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # sentencepiece reports e.g. a vocabulary too large for the sample
        print(f"error: SentencePiece training failed: {err}. With byte fallback --vocab-size must exceed 256 + the "
              "distinct characters, and stay below what the text supports.", file=sys.stderr)
        return 2
    train_s = time.monotonic() - start - read_s
    os.makedirs(out_dir, exist_ok=True)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=proto)
    # one "piece<TAB>score" line per id; the "\n" piece is written escaped so the file stays one line per id
    escape = str.maketrans({"\n": "\\n", "\t": "\\t", "\\": "\\\\"})
    vocab_lines = [f"{sp.id_to_piece(i).translate(escape)}\t{sp.get_score(i)}\n" for i in range(sp.get_piece_size())]
    meta = {
        "tokenizer_type": "SentencePieceTokenizer", "model_type": args.model_type, "vocab_size": sp.get_piece_size(),
        "eod_id": EOD_ID, "pad_id": SPECIAL["pad_id"], "unk_id": SPECIAL["unk_id"], "bos_id": SPECIAL["bos_id"],
        "byte_fallback": args.byte_fallback, "model_sha256": hashlib.sha256(proto).hexdigest(),
        "sources": paths, "json_keys": args.json_keys, "input_bytes": total, "sampled_chars": chars,
        "sampled_chunks": len(sample), "seed": args.seed, "train_seconds": round(train_s, 2),
        "train_cpu_seconds": round(train_cpu, 2),
        "skipped_bad_lines": dict(bad),
    }
    # Each file is written to a temporary name and renamed, so a crash never leaves a half-written model.
    for suffix, data in ((".vocab", "".join(vocab_lines).encode()), (".json", json.dumps(meta, indent=2).encode()),
                         (".model", proto)):
        remove_stale_temporaries(args.model_prefix + suffix)
        tmp = f"{args.model_prefix}{suffix}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, args.model_prefix + suffix)
        except OSError as err:
            if os.path.exists(tmp):
                os.remove(tmp)
            print(f"error: {enospc_message(tmp, err) or err}; {args.model_prefix}{suffix} was not written.",
                  file=sys.stderr)
            return 4
    print(f"[train_tokenizer] {args.model_type} vocab {sp.get_piece_size()} trained in {train_s:.1f} s wall, "
          f"{train_cpu:.1f} s CPU ({args.num_threads} threads) -> {args.model_prefix}.model (EOD id {EOD_ID})", file=sys.stderr)
    if bad:
        print(f"[train_tokenizer] skipped bad lines: {dict(bad)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
