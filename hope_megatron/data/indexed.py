"""Atomic writers for megatron-core indexed datasets (`PREFIX.bin` + `PREFIX.idx`).

megatron-core's IndexedDatasetBuilder writes the bytes; this module only picks the dtype and makes the
pair appear atomically: both files are written under temporary names (`.tmp-<pid>`, flock-held while writing) and
renamed when complete, the `.idx` last, so an interrupted run never leaves a valid-looking truncated pair.
"""

from __future__ import annotations

import os

import numpy as np

from hope_megatron.data.output_paths import lock_while_writing

UINT16_MAX_VOCAB = 65536  # ids 0..65535 fit uint16 (GPTDataset uses the same bound)


def token_dtype(vocab_size: int):
    """uint16 when every id fits, else int32 (as megatron's GPTDatasetConfig.token_dtype_code)."""
    return np.uint16 if int(vocab_size) <= UINT16_MAX_VOCAB else np.int32


def output_prefix(prefix: str, key: str, split_sentences: bool) -> str:
    """Megatron-LM's naming: `PREFIX_{key}_document` (or `_sentence` with --split-sentences)."""
    return f"{prefix}_{key}_{'sentence' if split_sentences else 'document'}"


class AtomicIndexedWriter:
    """One output pair. add_document(list of token arrays), then commit(); abort() on failure."""

    def __init__(self, prefix: str, vocab_size: int):
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.prefix = prefix
        self.dtype = token_dtype(vocab_size)
        tag = f".tmp-{os.getpid()}"
        self.tmp_bin, self.tmp_idx = prefix + ".bin" + tag, prefix + ".idx" + tag
        self._builder = IndexedDatasetBuilder(self.tmp_bin, dtype=self.dtype)
        # an flock for the writer's lifetime: output_paths.remove_stale_temporaries never takes a live run's files
        self._lock = lock_while_writing(self.tmp_bin)
        self.documents = 0
        self.tokens = 0
        self._open = True

    def add_document(self, pieces) -> None:
        """pieces: token sequences of one document (one per sentence, or a single one)."""
        arrays = [np.asarray(ids, dtype=self.dtype) for ids in pieces]
        flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=self.dtype)
        self._builder.add_document(flat, [int(a.size) for a in arrays])
        self.tokens += int(flat.size)
        self.documents += 1

    def commit(self) -> None:
        self._builder.finalize(self.tmp_idx)
        self._open = False
        final_bin, final_idx = self.prefix + ".bin", self.prefix + ".idx"
        if os.path.exists(final_idx):
            os.remove(final_idx)  # no moment where a new .bin sits beside an old .idx
        os.replace(self.tmp_bin, final_bin)
        os.replace(self.tmp_idx, final_idx)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def abort(self) -> None:
        if self._open:
            try:
                self._builder.data_file.close()
            except Exception:  # noqa: BLE001 - best effort cleanup before removing the files
                pass
            self._open = False
        for path in (self.tmp_bin, self.tmp_idx):
            if os.path.exists(path):
                os.remove(path)
        self._unlock()
