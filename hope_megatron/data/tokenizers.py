"""Thin tokenizers for preprocessing and megatron-core's GPTDataset.

Each tokenizer exposes ``vocab_size``, ``eod``, ``pad``, ``tokenize(text) -> list[int]``,
``detokenize(ids) -> str`` and ``unique_identifiers``: the duck type megatron's GPTDataset reads.
``pad`` is -1 (megatron's "no pad token" value) unless the vocabulary has a real pad piece that
encoding never produces, so GPTDataset never masks real tokens.

No model code and no torch import here: ``tools/`` uses this module in worker processes.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

TOKENIZER_TYPES = ("SentencePieceTokenizer", "GPT2BPETokenizer", "NullTokenizer")
NO_PAD = -1  # megatron.core.datasets.megatron_dataset._PAD_TOKEN_ID


def sidecar_path(model_path: str) -> str:
    """`P.model` -> `P.json`: the metadata tools/train_tokenizer.py writes (EOD id, sources)."""
    root, _ = os.path.splitext(model_path)
    return root + ".json"


class SentencePieceTokenizer:
    """A SentencePiece model; EOD is the id recorded in the sidecar json, else the model's eos id.

    Unlike Megatron-LM's SentencePieceTokenizer, no extra special pieces are appended to the
    vocabulary: the model trained by tools/train_tokenizer.py already owns its EOD piece.
    """

    def __init__(self, model_path: str):
        import sentencepiece

        self.model_path = model_path
        self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
        self.vocab_size = int(self._sp.get_piece_size())
        eod = self._sp.eos_id()
        meta_path = sidecar_path(model_path)
        if os.path.exists(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                eod = int(json.load(f).get("eod_id", eod))
        if not 0 <= eod < self.vocab_size:
            raise ValueError(
                f"SentencePiece model {model_path} has no end-of-document id (eos_id={eod}); "
                f"train it with tools/train_tokenizer.py or record eod_id in {meta_path}."
            )
        self.eod = eod
        pad = self._sp.pad_id()
        self.pad = pad if 0 <= pad < self.vocab_size and pad != eod else NO_PAD
        # megatron datasets hash this into their cache names (MegatronDataset.unique_identifiers)
        self.unique_identifiers = {"class": type(self).__name__, "model": os.path.abspath(model_path), "eod": eod}

    def tokenize(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def detokenize(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (printable bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class GPT2BPETokenizer:
    """Byte-level BPE over GPT-2's `encoder.json` + `vocab.bpe` (Megatron's --vocab-file/--merge-file)."""

    _PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    EOD_TOKEN = "<|endoftext|>"

    def __init__(self, vocab_file: str, merge_file: str):
        import regex

        with open(vocab_file, encoding="utf-8") as f:
            self.encoder: dict[str, int] = json.load(f)
        with open(merge_file, encoding="utf-8") as f:
            lines = [ln for ln in f.read().split("\n") if ln and not ln.startswith("#version")]
        self.ranks = {tuple(ln.split(" ")): i for i, ln in enumerate(lines)}
        if self.EOD_TOKEN not in self.encoder:
            raise ValueError(f"GPT-2 vocab file {vocab_file} has no {self.EOD_TOKEN!r} entry; pass GPT-2's encoder.json.")
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.byte_encoder = _bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.vocab_size = len(self.encoder)
        self.eod = self.encoder[self.EOD_TOKEN]
        self.pad = NO_PAD
        self._pat = regex.compile(self._PATTERN)
        self._cache: dict[str, list[str]] = {}
        self.unique_identifiers = {"class": type(self).__name__, "vocab_file": os.path.abspath(vocab_file),
                                   "merge_file": os.path.abspath(merge_file)}

    def _bpe(self, word: str) -> list[str]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            ranked = [p for p in pairs if p[0] is not None]
            if not ranked:
                break
            best = min(ranked)[0]
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best-ranked pair, left to right
                if i < len(parts) - 1 and self.ranks.get((parts[i], parts[i + 1])) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        if len(self._cache) < 100_000:
            self._cache[word] = parts
        return parts

    def tokenize(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._pat.findall(text):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(word))
        return ids

    def detokenize(self, ids) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


class NullTokenizer:
    """Text is already space-separated integer ids; EOD is `vocab_size` (as in Megatron-LM)."""

    def __init__(self, vocab_size: int):
        self.eod = int(vocab_size)
        self.vocab_size = int(vocab_size) + 1
        self.pad = NO_PAD
        self.unique_identifiers = {"class": type(self).__name__, "vocab_size": self.vocab_size}

    def tokenize(self, text: str) -> list[int]:
        ids = [int(t) for t in text.split()]
        for i in ids:
            if not 0 <= i < self.eod:
                raise ValueError(f"NullTokenizer id {i} is outside [0, {self.eod}); raise --vocab-size.")
        return ids

    def detokenize(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


# Megatron-LM tokenizer types that are not implemented here, and what to use instead (no hub, no tiktoken)
_NOT_HERE = {
    "HuggingFaceTokenizer": "no hub and no transformers here",
    "TikTokenizer": "tiktoken vocabularies are not read here",
    "GPTSentencePieceTokenizer": "SentencePieceTokenizer reads the same .model file",
    "Llama2Tokenizer": "SentencePieceTokenizer reads the same tokenizer.model (Megatron-LM's adds BOS; this one does not)",
}


def _hf_directory_hint(tokenizer_model) -> str:
    """The flags that read a local HuggingFace tokenizer directory's files with a supported type, when it has them."""
    if not tokenizer_model or not os.path.isdir(tokenizer_model):
        return ""
    d = tokenizer_model
    if os.path.isfile(os.path.join(d, "tokenizer.model")):
        return (f" {d} holds a SentencePiece model: --tokenizer-type SentencePieceTokenizer --tokenizer-model "
                f"{os.path.join(d, 'tokenizer.model')} (no BOS/EOS added, unlike transformers' default).")
    if os.path.isfile(os.path.join(d, "vocab.json")) and os.path.isfile(os.path.join(d, "merges.txt")):
        return (f" {d} holds GPT-2 style BPE files: --tokenizer-type GPT2BPETokenizer --vocab-file "
                f"{os.path.join(d, 'vocab.json')} --merge-file {os.path.join(d, 'merges.txt')}.")
    return ""


def check_tokenizer_args(tokenizer_type, tokenizer_model=None, vocab_file=None, merge_file=None, vocab_size=None) -> None:
    """Raise ValueError naming the missing or unreadable flag, without loading anything."""
    if tokenizer_type not in TOKENIZER_TYPES:
        why = f" ({_NOT_HERE[tokenizer_type]})" if tokenizer_type in _NOT_HERE else ""
        raise ValueError(f"--tokenizer-type {tokenizer_type} is not supported{why}; use one of "
                         f"{', '.join(TOKENIZER_TYPES)}.{_hf_directory_hint(tokenizer_model)}")
    needed = {
        "SentencePieceTokenizer": {"--tokenizer-model": tokenizer_model},
        "GPT2BPETokenizer": {"--vocab-file": vocab_file, "--merge-file": merge_file},
        "NullTokenizer": {},
    }[tokenizer_type]
    for flag, path in needed.items():
        if not path:
            raise ValueError(f"{tokenizer_type} needs {flag}.")
        if not os.path.isfile(path):
            raise ValueError(f"{flag} {path} does not exist or is not a file.")
    if tokenizer_type == "NullTokenizer" and (vocab_size is None or int(vocab_size) <= 0):
        raise ValueError("NullTokenizer needs a positive --vocab-size (the largest id + 1).")


def build_tokenizer(tokenizer_type: str, tokenizer_model=None, vocab_file=None, merge_file=None, vocab_size=None):
    """Build one of TOKENIZER_TYPES; the object works as GPTDatasetConfig.tokenizer."""
    check_tokenizer_args(tokenizer_type, tokenizer_model, vocab_file, merge_file, vocab_size)
    if tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(tokenizer_model)
    if tokenizer_type == "GPT2BPETokenizer":
        return GPT2BPETokenizer(vocab_file, merge_file)
    return NullTokenizer(vocab_size)
