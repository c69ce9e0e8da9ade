"""Input files for the data tools: glob expansion, format detection, and a simple document reader."""

from __future__ import annotations

import glob
import json
import os

from hope_megatron.data.document_encoder import iter_records

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
TEXT_SUFFIXES = (".txt", ".text", ".md", ".txt.gz")


class CorpusError(ValueError):
    """Bad input or arguments, with a message that names the file/line or flag at fault."""


def expand_inputs(patterns, input_format: str = "auto"):
    """Files for --input patterns (globs sorted, duplicates dropped) and their formats ("jsonl"|"text")."""
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise CorpusError(f"--input {pattern} matches no file; check the path or quote the glob.")
        paths.extend(m for m in matches if m not in paths)
    formats = []
    for path in paths:
        if input_format != "auto":
            formats.append(input_format)
        elif path.endswith(JSONL_SUFFIXES):
            formats.append("jsonl")
        elif path.endswith(TEXT_SUFFIXES):
            formats.append("text")
        else:
            raise CorpusError(f"cannot tell whether {path} is jsonl or text from its suffix; pass --input-format.")
        if not os.access(path, os.R_OK):
            raise CorpusError(f"--input {path} is not readable.")
        if os.path.getsize(path) == 0:
            raise CorpusError(f"--input {path} is empty (0 bytes); remove it from --input or fill it.")
    return paths, formats


def iter_texts(paths, formats, json_keys=("text",), text_unit: str = "file", skip_bad: bool = False, bad=None,
               with_object: bool = False):
    """Yield (path, line, key, text) for every key of every document, plus the parsed jsonl object (None for
    text) with_object; bad lines raise CorpusError (or, with skip_bad, are counted in `bad` by reason)."""
    for fi, line, raw in iter_records(paths, formats, text_unit):
        where = f"{paths[fi]}:{line}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if skip_bad:
                bad["invalid_utf8"] += 1
                continue
            raise CorpusError(f"{where}: invalid UTF-8 at offset {err.start}; fix the file or pass --skip-bad-lines.")
        if formats[fi] == "text":
            yield (paths[fi], line, json_keys[0], text) + ((None,) if with_object else ())
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, found {type(obj).__name__}")
            values = [(k, obj[k]) for k in json_keys]
            if not all(isinstance(v, str) for _, v in values):
                raise ValueError(f"keys {list(json_keys)} must hold strings")
        except (ValueError, KeyError) as err:
            reason = "missing_key" if isinstance(err, KeyError) else "malformed_json"
            if skip_bad:
                bad[reason] += 1
                continue
            detail = f"key {err} missing" if isinstance(err, KeyError) else str(err)
            raise CorpusError(f"{where}: {detail}; fix the file or pass --skip-bad-lines.") from err
        for key, value in values:
            yield (paths[fi], line, key, value) + ((obj,) if with_object else ())
