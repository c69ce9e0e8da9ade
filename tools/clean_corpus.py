#!/usr/bin/env python
"""Clean a corpus into jsonl: Unicode NFKC, whitespace, length bounds, a script filter, exact and near-duplicate removal.

  python tools/clean_corpus.py --input 'data/demo/*.jsonl' --output data/clean/demo.jsonl

Writes OUTPUT (jsonl; other jsonl fields are kept) and OUTPUT.report.json: counts per removal reason with the
first examples (file:line), characters in and out. Documents keep their input order; the first copy of a
duplicate wins. Near duplicates: MinHash over word 5-shingles (64 hashes, 16 LSH bands), removed when the
estimated Jaccard similarity reaches --near-dup-threshold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import unicodedata
from collections import Counter, defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hope_megatron.data.corpus_files import CorpusError, expand_inputs, iter_texts  # noqa: E402
from hope_megatron.data.document_encoder import TEXT_UNITS  # noqa: E402
from hope_megatron.data.output_paths import check_file, remove_stale_temporaries  # noqa: E402

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+")
NUM_PERM, BANDS = 64, 16
_MERSENNE = (1 << 61) - 1


def normalise(text: str, nfkc: bool) -> str:
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING.sub("\n", text)
    return _BLANKS.sub("\n\n", text).strip()


def latin_ratio(text: str) -> float:
    """Share of alphabetic characters that are Latin script (1.0 for text without letters)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    latin = sum(1 for c in letters if c < "\u0250" or "LATIN" in unicodedata.name(c, ""))
    return latin / len(letters)


class NearDupIndex:
    """MinHash + LSH; `seen(text)` is True when an earlier document is estimated similar enough."""

    def __init__(self, threshold: float, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _MERSENNE, NUM_PERM, dtype=np.uint64)
        self.b = rng.integers(0, _MERSENNE, NUM_PERM, dtype=np.uint64)
        self.threshold = threshold
        self.buckets = defaultdict(list)
        self.signatures = []

    def signature(self, text: str):
        words = _WORD.findall(text.lower())
        shingles = {" ".join(words[i:i + 5]) for i in range(max(1, len(words) - 4))}
        hashes = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=7).digest(), "little")
                           for s in shingles], dtype=np.uint64)
        # (a*x + b) mod 2^61-1 with 56-bit x: uint64 wrap-around keeps it a fixed, well-mixed hash family
        return ((hashes[:, None] * self.a[None, :] + self.b[None, :]) % np.uint64(_MERSENNE)).min(axis=0)

    def seen(self, text: str) -> bool:
        sig = self.signature(text)
        rows = NUM_PERM // BANDS
        keys = [sig[i * rows:(i + 1) * rows].tobytes() for i in range(BANDS)]
        candidates = {j for k in keys for j in self.buckets.get(k, ())}
        if any(np.mean(self.signatures[j] == sig) >= self.threshold for j in candidates):
            return True
        idx = len(self.signatures)
        self.signatures.append(sig)
        for k in keys:
            self.buckets[k].append(idx)
        return False


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True)
    p.add_argument("--input-format", choices=("auto", "jsonl", "text"), default="auto")
    p.add_argument("--text-unit", choices=TEXT_UNITS, default="file")
    p.add_argument("--json-key", default="text", help="the field to clean (other jsonl fields are copied)")
    p.add_argument("--output", required=True, help="output jsonl")
    p.add_argument("--report", default=None, help="default: OUTPUT.report.json")
    p.add_argument("--no-nfkc", dest="nfkc", action="store_false")
    p.add_argument("--min-chars", type=int, default=1)
    p.add_argument("--max-chars", type=int, default=None)
    p.add_argument("--min-latin-ratio", type=float, default=0.8, help="0 disables the script filter")
    p.add_argument("--no-dedup", dest="dedup", action="store_false")
    p.add_argument("--near-dup-threshold", type=float, default=0.8, help="estimated Jaccard; 0 disables")
    p.add_argument("--skip-bad-lines", action="store_true")
    return p.parse_args(argv)


def check_args(args):
    if args.min_chars < 0 or (args.max_chars is not None and args.max_chars < args.min_chars):
        raise CorpusError("--min-chars must be >= 0 and --max-chars >= --min-chars.")
    if not 0 <= args.min_latin_ratio <= 1 or not 0 <= args.near_dup_threshold <= 1:
        raise CorpusError("--min-latin-ratio and --near-dup-threshold must be in [0, 1].")
    paths, formats = expand_inputs(args.input, args.input_format)
    if os.path.abspath(args.output) in {os.path.abspath(p) for p in paths}:
        raise CorpusError(f"--output {args.output} is also an input; write elsewhere.")
    try:  # before reading anything
        check_file("--output", args.output, args.output)
        check_file("--report", args.report or args.output + ".report.json", args.report or args.output + ".report.json")
    except ValueError as err:
        raise CorpusError(str(err)) from err
    return paths, formats


def main(argv=None) -> int:
    args = get_args(argv)
    try:
        paths, formats = check_args(args)
        report_path = args.report or args.output + ".report.json"
        removed, examples, bad = Counter(), defaultdict(list), Counter()
        exact, near = set(), NearDupIndex(args.near_dup_threshold) if args.near_dup_threshold > 0 else None
        chars_in = chars_out = kept = 0
        os.makedirs(os.path.dirname(os.path.abspath(args.output)) or ".", exist_ok=True)
        remove_stale_temporaries(args.output)
        tmp = f"{args.output}.tmp-{os.getpid()}"
        docs = iter_texts(paths, formats, (args.json_key,), args.text_unit, args.skip_bad_lines, bad, with_object=True)
        with open(tmp, "w", encoding="utf-8") as out:
            for path, line, _, raw, obj in docs:
                extra = {k: v for k, v in (obj or {}).items() if k != args.json_key}
                chars_in += len(raw)
                text = normalise(raw, args.nfkc)
                reason = None
                if len(text) < max(args.min_chars, 1):
                    reason = "empty" if not text else "too_short"
                elif args.max_chars is not None and len(text) > args.max_chars:
                    reason = "too_long"
                elif args.min_latin_ratio > 0 and latin_ratio(text) < args.min_latin_ratio:
                    reason = "non_latin_script"
                elif args.dedup:
                    digest = hashlib.sha1(" ".join(text.lower().split()).encode()).digest()
                    if digest in exact:
                        reason = "exact_duplicate"
                    elif near is not None and near.seen(text):
                        reason = "near_duplicate"
                    exact.add(digest)
                if reason:
                    removed[reason] += 1
                    if len(examples[reason]) < 5:
                        examples[reason].append(f"{path}:{line}")
                    continue
                out.write(json.dumps({**extra, args.json_key: text}, ensure_ascii=False) + "\n")
                kept += 1
                chars_out += len(text)
        if kept == 0:
            gone = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in sorted(removed.items())) or "no document read"
            raise CorpusError(f"no document of {', '.join(paths)} is left ({gone}); nothing written — loosen the "
                              f"filters or check --json-key.")
        os.replace(tmp, args.output)
    except CorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if "tmp" in locals() and os.path.exists(tmp):
            os.remove(tmp)
    report = {"inputs": paths, "output": args.output, "kept": kept, "removed": dict(removed),
              "examples": dict(examples), "bad_lines_skipped": dict(bad), "chars_in": chars_in, "chars_out": chars_out,
              "settings": {k: v for k, v in vars(args).items() if k not in ("input", "output", "report")}}
    with open(report_path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    gone = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in sorted(removed.items())) or "nothing"
    print(f"[clean] kept {kept} documents ({chars_out / 1e6:.2f} of {chars_in / 1e6:.2f} M chars); removed {gone}; "
          f"report {report_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
