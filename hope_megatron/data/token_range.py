"""Do the token ids of an indexed dataset fit a tokenizer? Checked before a model is built.

Shards written with a larger tokenizer than the one a run trains with die at the first forward with
`IndexError: index out of range in self`, or, when the ids land in the embedding's padding rows, train silently on
untrained rows. `max_token_id(prefix)` reads the whole `.bin` (memory-mapped, numpy max) when it is at most
`FULL_SCAN_BYTES`, else `SAMPLE_BLOCKS` evenly spaced blocks (a tokenizer mismatch shows in every block); the training
loop also holds every batch to the vocabulary (training/data.py), so a rare stray id past the sample is still caught
with a sentence. The `.idx` header gives the dtype (megatron's `_INDEX_HEADER` + version + dtype code).
"""

from __future__ import annotations

import os
import struct

import numpy as np

FULL_SCAN_BYTES = 512 * 2**20
SAMPLE_BLOCKS, BLOCK_BYTES = 64, 4 * 2**20
_HEADER = b"MMIDIDX\x00\x00"
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}


class DatasetFileError(ValueError):
    """A dataset file that cannot be used, with one sentence naming it."""


def index_dtype(prefix: str):
    """The token dtype recorded in PREFIX.idx (refuses a file that is not a megatron index)."""
    path = prefix + ".idx"
    with open(path, "rb") as f:
        head = f.read(len(_HEADER) + 9)
    if len(head) < len(_HEADER) + 9 or not head.startswith(_HEADER):
        raise DatasetFileError(f"{path} is not a megatron indexed-dataset index (empty, truncated or another format); "
                               f"re-run tools/preprocess_data.py.")
    code = struct.unpack("<B", head[len(_HEADER) + 8:])[0]
    if code not in _DTYPES:
        raise DatasetFileError(f"{path} records an unknown dtype code {code}; re-run tools/preprocess_data.py.")
    return _DTYPES[code]


def max_token_id(prefix: str):
    """(largest id found, whether the whole file was read), or (None, True) for an empty .bin."""
    dtype = np.dtype(index_dtype(prefix))
    path = prefix + ".bin"
    n = os.path.getsize(path) // dtype.itemsize
    if n == 0:
        return None, True
    data = np.memmap(path, dtype=dtype, mode="r", shape=(n,))
    if n * dtype.itemsize <= FULL_SCAN_BYTES:
        return int(data.max()), True
    block = BLOCK_BYTES // dtype.itemsize
    starts = np.linspace(0, n - block, SAMPLE_BLOCKS).astype(np.int64)
    return int(max(int(data[s:s + block].max()) for s in starts)), False


def check_prefix(prefix: str, vocab_size: int, tokenizer_desc: str) -> None:
    """Refuse a dataset holding an id >= vocab_size (the tokenizer's real size, not the padded one)."""
    top, whole = max_token_id(prefix)
    if top is not None and top >= vocab_size:
        where = "" if whole else " (in a sample of it)"
        raise DatasetFileError(
            f"{prefix}.bin holds token id {top}{where} but the tokenizer ({tokenizer_desc}) has {vocab_size} ids "
            f"(0..{vocab_size - 1}); these shards were made with a larger tokenizer: train with that one, or re-run "
            f"tools/preprocess_data.py with this one.")
