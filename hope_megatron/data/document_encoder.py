"""Reading corpus files into documents and encoding them: the per-worker half of tools/preprocess_data.py.

A record is (file_index, line_number, raw_bytes); `encode` turns it into an Encoded result that is either
a dict key -> token pieces (None for an empty text) or one bad-input reason with a message. Workers are
initialised once per process (`init_worker`), as in Megatron-LM's pool-initialised encoder.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass

import numpy as np

BAD_REASONS = ("invalid_utf8", "malformed_json", "missing_key", "not_a_string", "untokenizable")
TEXT_UNITS = ("file", "paragraph", "line")


@dataclass(frozen=True)
class EncoderSettings:
    tokenizer_args: dict
    json_keys: tuple
    formats: tuple  # per input file: "jsonl" | "text"
    split_sentences: bool = False
    keep_newlines: bool = False
    lang: str = "english"
    nltk_data: str | None = None
    append_eod: bool = False


@dataclass
class Encoded:
    file_index: int
    line: int
    nbytes: int
    pieces: dict | None = None  # key -> list[np.ndarray] or None (empty text)
    reason: str | None = None  # one of BAD_REASONS, or "blank_line"
    message: str = ""


def open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def iter_records(paths, formats, text_unit: str):
    """Yield (file_index, line_number, raw_bytes): a jsonl line, or a text document of `text_unit`."""
    for fi, (path, fmt) in enumerate(zip(paths, formats)):
        with open_binary(path) as f:
            if fmt == "jsonl" or text_unit == "line":
                for ln, raw in enumerate(f, start=1):
                    yield fi, ln, raw
            elif text_unit == "file":
                yield fi, 1, f.read()
            else:  # paragraph: blank-line separated blocks
                block, start = [], 1
                for ln, raw in enumerate(f, start=1):
                    if raw.strip():
                        if not block:
                            start = ln
                        block.append(raw)
                    elif block:
                        yield fi, start, b"".join(block)
                        block = []
                if block:
                    yield fi, start, b"".join(block)


_WORKER: dict = {}


def init_worker(settings: EncoderSettings) -> None:
    from hope_megatron.data.tokenizers import build_tokenizer

    _WORKER["settings"] = settings
    _WORKER["tokenizer"] = build_tokenizer(**settings.tokenizer_args)
    _WORKER["splitter"] = None
    if settings.split_sentences:
        from hope_megatron.data.sentences import SentenceSplitter

        _WORKER["splitter"] = SentenceSplitter(settings.lang, settings.keep_newlines, settings.nltk_data, warn=False)


def _snippet(text: str, limit: int = 80) -> str:
    text = text.rstrip("\r\n")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def encode(record) -> Encoded:
    fi, line, raw = record
    settings: EncoderSettings = _WORKER["settings"]
    out = Encoded(fi, line, len(raw))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        out.reason, out.message = "invalid_utf8", f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})"
        return out
    if settings.formats[fi] == "jsonl":
        if not text.strip():
            out.reason, out.message = "blank_line", "blank line"
            return out
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            out.reason, out.message = "malformed_json", f"malformed JSON ({err.msg} at column {err.colno}): {_snippet(text)}"
            return out
        if not isinstance(obj, dict):
            out.reason, out.message = "malformed_json", f"expected a JSON object, found {type(obj).__name__}: {_snippet(text)}"
            return out
        texts = {}
        for key in settings.json_keys:
            if key not in obj:
                found = ", ".join(sorted(obj)[:10]) or "none"
                out.reason, out.message = "missing_key", f"key {key!r} missing (found keys: {found})"
                return out
            if not isinstance(obj[key], str):
                out.reason = "not_a_string"
                out.message = f"key {key!r} holds a {type(obj[key]).__name__}, expected a string"
                return out
            texts[key] = obj[key]
    else:
        texts = {settings.json_keys[0]: text}
    try:
        out.pieces = {key: _tokenize(value, settings) for key, value in texts.items()}
    except ValueError as err:  # e.g. NullTokenizer given words instead of ids
        out.reason, out.message = "untokenizable", f"the tokenizer rejected the text: {err}"
    return out


def _tokenize(text: str, settings: EncoderSettings):
    if not text.strip():
        return None
    tok = _WORKER["tokenizer"]
    splitter = _WORKER["splitter"]
    sentences = splitter(text) if splitter is not None else [text]
    pieces = [ids for ids in (tok.tokenize(s) for s in sentences) if len(ids) > 0]
    if not pieces:
        return None
    if settings.append_eod:
        pieces[-1] = list(pieces[-1]) + [tok.eod]
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.int32
    return [np.asarray(p, dtype=dtype) for p in pieces]
