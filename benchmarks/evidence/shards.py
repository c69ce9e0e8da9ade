"""Training data of the grid as megatron .bin/.idx shards, written by the same writer tools/preprocess_data.py uses
(hope_megatron.data.indexed.AtomicIndexedWriter over megatron-core's IndexedDatasetBuilder). One folder per seed; every
variant of a seed trains on the same shards, so the token budget and the token stream are the same for all of them.
Each task's documents are exactly its training sequence length (see tasks.py)."""

from __future__ import annotations

import os
from typing import Dict

import numpy as np

from benchmarks.evidence import tasks
from benchmarks.evidence.grid import Grid

MQAR_SPEC_SEED, PASSKEY_SEED, CLASSES_SEED = 11, 13, 17


def mqar_spec(grid: Grid) -> tasks.MQARSpec:
    return tasks.MQARSpec(keys=grid.mqar_kv, values=grid.mqar_kv)


def _write(prefix: str, docs, vocab: int) -> str:
    from hope_megatron.data.indexed import AtomicIndexedWriter

    w = AtomicIndexedWriter(prefix, vocab + 1)  # NullTokenizer: ids 0..vocab-1, EOD = vocab
    try:
        for d in docs:
            w.add_document([d])
        w.commit()
    except BaseException:
        w.abort()
        raise
    return prefix


def write_seed(grid: Grid, seed: int, root: str) -> Dict[str, object]:
    """Shards of one seed under root/seed{seed}/; returns {task: prefix or [prefix per continual task]}."""
    out = os.path.join(root, f"seed{seed}")
    os.makedirs(out, exist_ok=True)
    slack = 4
    m, p, c = grid.mqar, grid.passkey, grid.classes
    rng = np.random.default_rng([seed, MQAR_SPEC_SEED])
    spec = mqar_spec(grid)
    mqar = _write(os.path.join(out, "mqar"), tasks.mqar_documents(rng, spec, m.seq, grid.mqar_train_pairs,
                                                                   m.iters * m.batch + slack), spec.vocab)
    rng = np.random.default_rng([seed, PASSKEY_SEED])
    pspec = tasks.PasskeySpec()
    passkey = _write(os.path.join(out, "passkey"),
                     tasks.passkey_documents(rng, pspec, p.seq, p.iters * p.batch + slack), pspec.vocab)
    universe = classes_universe(grid, seed)
    rng = np.random.default_rng([seed, CLASSES_SEED])
    classes = []
    for t in range(grid.classes_tasks):
        # training resumes across tasks, so task t is read from sample t*iters*batch on: it holds that many more
        n = (t + 1) * c.iters * c.batch + slack
        classes.append(_write(os.path.join(out, f"classes_task{t}"), universe.documents(rng, t, c.seq, n),
                              universe.spec.vocab))
    return {"mqar": mqar, "passkey": passkey, "classes": classes}


def classes_universe(grid: Grid, seed: int) -> tasks.PermutedClasses:
    return tasks.PermutedClasses(tasks.ClassesSpec(), grid.classes_tasks, seed)
