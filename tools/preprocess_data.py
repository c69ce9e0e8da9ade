#!/usr/bin/env python
"""Tokenize jsonl / plain-text corpora into megatron-core indexed datasets (.bin/.idx).

Megatron-LM's flags, plus: several --input files or globs, every --json-keys key written and finalised,
all arguments and output paths checked before any work, flushed progress, bad input reported as file:line,
atomic outputs (temporary files of killed runs are removed once their process is gone). Differences from
Megatron-LM: empty and whitespace-only documents are skipped and counted in the summary (Megatron writes them as
0-token documents); an input without any document is refused.

  python tools/preprocess_data.py --input 'data/demo/*.jsonl' --output-prefix data/tok/demo \
      --tokenizer-type SentencePieceTokenizer --tokenizer-model data/tok/demo8k.model --append-eod --workers 2

Exit codes: 0 done, 2 bad arguments or output path, 3 bad input (malformed JSON, missing key, invalid UTF-8, no
document), 4 disk full while writing, 130 interrupted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import warnings
from collections import Counter

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hope_megatron.data import document_encoder as enc  # noqa: E402
from hope_megatron.data.corpus_files import CorpusError, expand_inputs  # noqa: E402
from hope_megatron.data.indexed import AtomicIndexedWriter, output_prefix, token_dtype  # noqa: E402
from hope_megatron.data.output_paths import (OutputPathError, check_file, enospc_message,  # noqa: E402
                                             remove_stale_temporaries)
from hope_megatron.data.tokenizers import TOKENIZER_TYPES, build_tokenizer  # noqa: E402

EXIT_ARGS, EXIT_BAD_INPUT, EXIT_DISK, EXIT_INTERRUPTED = 2, 3, 4, 130


class ArgError(Exception):
    """A bad flag or file argument (exit code 2)."""


class BadInputError(Exception):
    """A bad input record (exit code 3)."""


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("input")
    g.add_argument("--input", nargs="+", required=True, help="files or globs (jsonl, or plain text; .gz allowed)")
    g.add_argument("--input-format", choices=("auto", "jsonl", "text"), default="auto",
                   help="auto: by suffix (.jsonl/.json -> jsonl, .txt/.text/.md -> text)")
    g.add_argument("--text-unit", choices=enc.TEXT_UNITS, default="file",
                   help="plain text: one document per file, per blank-line paragraph, or per line")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys to extract; one output pair per key")
    g.add_argument("--split-sentences", action="store_true", help="split documents into sentences (punkt_tab)")
    g.add_argument("--keep-newlines", action="store_true", help="keep newlines between sentences when splitting")
    g.add_argument("--lang", default="english", help="punkt_tab language for --split-sentences")
    g.add_argument("--nltk-data", default=None, help="NLTK data root holding tokenizers/punkt_tab/<lang>/")
    g.add_argument("--skip-bad-lines", action="store_true",
                   help="count and report malformed JSON, missing keys and invalid UTF-8 instead of stopping")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, help=f"one of {', '.join(TOKENIZER_TYPES)} (Megatron-LM's "
                   "others, e.g. HuggingFaceTokenizer and TikTokenizer, are refused with what to use instead)")
    g.add_argument("--tokenizer-model", default=None, help="SentencePiece .model")
    g.add_argument("--vocab-file", default=None, help="GPT-2 encoder.json")
    g.add_argument("--merge-file", default=None, help="GPT-2 vocab.bpe")
    g.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer: largest id + 1")
    g.add_argument("--append-eod", action="store_true", help="append the end-of-document id to every document")
    g = p.add_argument_group("output")
    g.add_argument("--output-prefix", required=True, help="writes PREFIX_{key}_{document|sentence}.bin/.idx")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes (output is identical for any count)")
    g.add_argument("--chunk-size", type=int, default=64, help="records per task sent to a worker")
    g.add_argument("--log-interval", type=int, default=None, help="documents between progress lines (Megatron-LM's "
                   "meaning); default: a line every --log-seconds")
    g.add_argument("--log-seconds", type=float, default=5.0, help="seconds between progress lines when --log-interval "
                   "is not given")
    g.add_argument("--partitions", type=int, default=1, help="Megatron-LM compatibility; must be 1 (give several --input)")
    g.add_argument("--keep-sequential-samples", action="store_true", help="Megatron-LM compatibility; order is always kept")
    return p.parse_args(argv)


def check_args(args) -> dict:
    """Every check that can fail, before any output is touched. Returns the resolved plan."""
    try:
        paths, formats = expand_inputs(args.input, args.input_format)
    except CorpusError as err:
        raise ArgError(str(err)) from err
    if len(set(args.json_keys)) != len(args.json_keys) or any(not k or "/" in k for k in args.json_keys):
        raise ArgError(f"--json-keys {args.json_keys} must be distinct non-empty names without '/'.")
    if "text" in formats and len(args.json_keys) != 1:
        raise ArgError("plain-text inputs have one field; pass a single --json-keys name (it names the output).")
    if args.keep_newlines and not args.split_sentences:
        raise ArgError("--keep-newlines only applies with --split-sentences.")
    if args.workers < 1 or args.chunk_size < 1 or (args.log_interval is not None and args.log_interval < 1) or \
            args.log_seconds <= 0:
        raise ArgError("--workers, --chunk-size and --log-interval (documents) must be >= 1 and --log-seconds > 0.")
    if args.partitions != 1:
        raise ArgError("--partitions is not needed here: pass the pieces as several --input files (in order).")
    out_dir = os.path.dirname(os.path.abspath(args.output_prefix))
    try:
        for key in args.json_keys:
            for ext in (".bin", ".idx"):
                check_file("--output-prefix", args.output_prefix,
                           output_prefix(args.output_prefix, key, args.split_sentences) + ext)
    except OutputPathError as err:
        raise ArgError(str(err)) from err
    tok_args = dict(tokenizer_type=args.tokenizer_type, tokenizer_model=args.tokenizer_model,
                    vocab_file=args.vocab_file, merge_file=args.merge_file, vocab_size=args.vocab_size)
    try:
        tokenizer = build_tokenizer(**tok_args)
    except (ValueError, OSError, RuntimeError) as err:
        raise ArgError(f"tokenizer: {err}") from err
    if args.split_sentences:
        from hope_megatron.data.sentences import SentenceSplitter

        splitter = SentenceSplitter(args.lang, args.keep_newlines, args.nltk_data, warn=True)
        print(f"[preprocess] sentence splitter: {'punkt_tab from ' + splitter.root if splitter.trained else 'naive'}",
              file=sys.stderr, flush=True)
    settings = enc.EncoderSettings(tok_args, tuple(args.json_keys), tuple(formats), args.split_sentences,
                                   args.keep_newlines, args.lang, args.nltk_data, args.append_eod)
    sizes = [os.path.getsize(p) for p in paths]
    total = None if any(p.endswith(".gz") for p in paths) else sum(sizes)
    return dict(paths=paths, formats=formats, tokenizer=tokenizer, settings=settings, total_bytes=total, out_dir=out_dir)


class Progress:
    """A line every `every_docs` records (Megatron-LM's --log-interval) or, without it, every `seconds`."""

    def __init__(self, total_bytes, seconds, every_docs=None):
        self.total, self.interval, self.every_docs = total_bytes, seconds, every_docs
        self.start = self.last = time.monotonic()
        self.docs = self.bytes = 0

    def update(self, nbytes):
        self.docs += 1
        self.bytes += nbytes
        now = time.monotonic()
        due = self.docs % self.every_docs == 0 if self.every_docs else now - self.last >= self.interval
        if due:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now):
        dt = max(now - self.start, 1e-9)
        mbs = self.bytes / dt / 1e6
        text = f"[preprocess] {self.docs:,} docs  {self.docs / dt:,.0f} docs/s  {mbs:.2f} MB/s"
        if self.total:
            frac = min(self.bytes / self.total, 1.0)
            eta = (self.total - self.bytes) / max(self.bytes / dt, 1e-9)
            text += f"  {100 * frac:.1f}% of {self.total / 1e6:.1f} MB  ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"
        return text


def run(args, plan) -> int:
    keys = list(args.json_keys)
    os.makedirs(plan["out_dir"], exist_ok=True)
    for key in keys:  # leftovers of killed runs on the same prefix (only when their process is gone)
        final = output_prefix(args.output_prefix, key, args.split_sentences)
        for stale in remove_stale_temporaries(final + ".bin") + remove_stale_temporaries(final + ".idx"):
            print(f"[preprocess] removed {stale}, left by a killed run (process {stale.rsplit('-', 1)[1]} is gone)",
                  file=sys.stderr, flush=True)
    vocab = plan["tokenizer"].vocab_size
    writers = {k: AtomicIndexedWriter(output_prefix(args.output_prefix, k, args.split_sentences), vocab) for k in keys}
    skipped, pool = Counter(), None
    progress = Progress(plan["total_bytes"], args.log_seconds, args.log_interval)
    records = enc.iter_records(plan["paths"], plan["formats"], args.text_unit)
    try:
        if args.workers == 1:
            enc.init_worker(plan["settings"])
            results = map(enc.encode, records)
        else:
            pool = multiprocessing.Pool(args.workers, enc.init_worker, (plan["settings"],))
            results = pool.imap(enc.encode, records, args.chunk_size)  # ordered: output independent of --workers
        for res in results:
            progress.update(res.nbytes)
            if res.reason is not None:
                where = f"{plan['paths'][res.file_index]}:{res.line}"
                if res.reason != "blank_line" and not args.skip_bad_lines:
                    raise BadInputError(f"{where}: {res.message}; fix the input or pass --skip-bad-lines.")
                skipped[res.reason] += 1
                if res.reason != "blank_line" and skipped[res.reason] <= 5:
                    print(f"warning: skipped {where}: {res.message}", file=sys.stderr, flush=True)
                continue
            for key, pieces in res.pieces.items():
                if pieces is None:
                    skipped[f"empty {key}"] += 1
                else:
                    writers[key].add_document(pieces)
        empty = [k for k, w in writers.items() if w.documents == 0]
        if empty:
            raise BadInputError(f"{', '.join(plan['paths'])} gave no document for --json-keys {' '.join(empty)} "
                                f"({progress.docs:,} records read); give a non-empty input.")
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    elapsed = time.monotonic() - progress.start
    print(progress.line(time.monotonic()), file=sys.stderr, flush=True)
    print(f"[preprocess] done in {elapsed:.1f} s: {progress.docs:,} records, {progress.bytes / 1e6:.2f} MB, "
          f"dtype {token_dtype(vocab).__name__}", file=sys.stderr)
    for key, w in writers.items():
        print(f"[preprocess]   {w.prefix}.bin/.idx: {w.documents:,} documents, {w.tokens:,} tokens", file=sys.stderr)
    reasons = ", ".join(f"{n:,} {_reason(r)}" for r, n in sorted(skipped.items())) or "none"
    print(f"[preprocess]   skipped: {reasons}", file=sys.stderr, flush=True)
    return 0


def _reason(r: str) -> str:
    if r.startswith("empty "):  # Megatron-LM writes these as 0-token documents; docs/data.md says why not here
        return f"empty or whitespace-only {r[6:]} (documents Megatron-LM would write with 0 tokens)"
    return r.replace("_", " ")


def main(argv=None) -> int:
    args = get_args(argv)
    try:
        plan = check_args(args)
    except ArgError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ARGS
    try:
        return run(args, plan)
    except BadInputError as err:
        print(f"error: {err} No output was written.", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: no output written (temporary files removed).", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        why = enospc_message(args.output_prefix, err)
        if why is None:
            raise
        print(f"error: {why}. No output was written (temporary files removed).", file=sys.stderr)
        return EXIT_DISK


if __name__ == "__main__":
    sys.exit(main())
