"""The three synthetic tasks of the evidence grid as token ids (numpy and the NIAH prompt builder only, no model).

Every task has its own NullTokenizer vocabulary (ids 0..VOCAB-1, EOD = VOCAB) and writes documents of exactly the
training sequence length, so megatron's GPTDataset windows (seq_length + 1 tokens, consecutive windows sharing one
token) line up with the documents: a training sample is one whole document plus the first token of the next one.

1. MQAR (Zoology's multi-query associative recall, Arora et al. 2023): N key-value pairs `k1 v1 ... kN vN`, then
   N queries `kj vj` (every key once, shuffled; `mqar_instance` can spread them over GAP tokens as Zoology does,
   the grid packs them without gaps: see `mqar_stream`). Scored: the prediction at each query key must be its value.
2. Passkey retrieval (Mohtashami & Jaggi 2023): a repeated filler sentence, the needle `PK d1..d5 END` at a depth,
   more filler, then `Q PK`; the answer is the five digits. Prompts are built by hope_megatron.eval.niah.build_prompt,
   the same function the NIAH evaluation uses.
3. Permuted classes (the seed plan's continual stress test): C classes, each a prototype of M feature tokens; an
   example is its class's prototype with tokens replaced at random (noise), mapped through the task's permutation of
   the feature vocabulary (task t = permuted inputs, as in permuted MNIST), then `SEP label`. Tasks share the labels
   and the prototypes, so one model can hold all of them; what differs is which tokens carry the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from hope_megatron.eval.niah import build_prompt


# ------------------------------------------------------------------------------------------------------------- MQAR
@dataclass(frozen=True)
class MQARSpec:
    keys: int = 64            # key ids 1..keys
    values: int = 64          # value ids keys+1..keys+values
    GAP: int = 0

    @property
    def vocab(self) -> int:
        return 1 + self.keys + self.values


def mqar_instance(rng: np.random.Generator, spec: MQARSpec, length: int, pairs: int) -> Tuple[List[int], List[int]]:
    """(ids of exactly `length` tokens, positions whose next token is a queried value). Keys are distinct."""
    if pairs > spec.keys:
        raise ValueError(f"MQAR pairs={pairs} exceeds the {spec.keys} distinct keys.")
    if 4 * pairs > length:
        raise ValueError(f"MQAR length={length} cannot hold {pairs} pairs and {pairs} queries (needs {4 * pairs}).")
    keys = rng.choice(spec.keys, size=pairs, replace=False) + 1
    vals = rng.integers(0, spec.values, size=pairs) + 1 + spec.keys
    ids = np.full(length, spec.GAP, dtype=np.int64)
    ids[0:2 * pairs:2], ids[1:2 * pairs:2] = keys, vals
    slots = (length - 2 * pairs) // 2
    chosen = np.sort(rng.choice(slots, size=pairs, replace=False))
    order = rng.permutation(pairs)
    pos = 2 * pairs + 2 * chosen
    ids[pos], ids[pos + 1] = keys[order], vals[order]
    return ids.tolist(), pos.tolist()


def mqar_stream(rng: np.random.Generator, spec: MQARSpec, length: int, pair_choices) -> Tuple[List[int], List[int]]:
    """`length` ids of consecutive instances without gaps (each `k1 v1 .. kN vN` then its N queries, N drawn from
    pair_choices per instance), GAP-padded at the end when the next instance does not fit; and the query positions.
    Later instances reuse keys with new values, so a model must read the latest binding."""
    ids: List[int] = []
    queries: List[int] = []
    while True:
        n = int(rng.choice(pair_choices))
        if len(ids) + 4 * n > length:
            break
        inst, pos = mqar_instance(rng, spec, 4 * n, n)
        queries += [len(ids) + p for p in pos]
        ids += inst
    return ids + [spec.GAP] * (length - len(ids)), queries


def mqar_documents(rng: np.random.Generator, spec: MQARSpec, length: int, pair_choices, n: int) -> List[List[int]]:
    return [mqar_stream(rng, spec, length, pair_choices)[0] for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------- passkey
@dataclass(frozen=True)
class PasskeySpec:
    """As in eval.niah's passkey wording ("The pass key is 12345 ..." then "... The pass key is"), the question ends
    with the needle's own marker PK, so the answer is what followed that marker."""
    digits: int = 5
    filler_len: int = 12      # one filler "sentence" = ids FILLER0 .. FILLER0 + filler_len - 1, repeated
    DIGIT0: int = 0           # ten digit ids DIGIT0 .. DIGIT0 + 9
    PK: int = 10
    Q: int = 11
    END: int = 12
    FILLER0: int = 13

    @property
    def vocab(self) -> int:
        return self.FILLER0 + self.filler_len

    def haystack(self) -> List[int]:
        return list(range(self.FILLER0, self.FILLER0 + self.filler_len))


def passkey_prompt(rng: np.random.Generator, spec: PasskeySpec, length: int, depth: float
                   ) -> Tuple[List[int], List[int]]:
    """(prompt of exactly `length` ids ending with `Q PK`, answer ids): the needle `PK d1..d5 END` after a `depth`
    fraction of the filler (eval.niah.build_prompt, haystack cycled from a random offset). Digits are distinct."""
    digits = (rng.choice(10, size=spec.digits, replace=False) + spec.DIGIT0).tolist()
    needle = [spec.PK] + digits + [spec.END]
    hay = spec.haystack()
    ids, _ = build_prompt(hay, needle, [spec.Q, spec.PK], length, depth, offset=int(rng.integers(len(hay))))
    return ids, digits


def passkey_documents(rng: np.random.Generator, spec: PasskeySpec, length: int, n: int) -> List[List[int]]:
    """Training documents of `length` ids: a prompt of length - digits, then the answer."""
    docs = []
    for _ in range(n):
        prompt, answer = passkey_prompt(rng, spec, length - spec.digits, float(rng.random()))
        docs.append(prompt + answer)
    return docs


# -------------------------------------------------------------------------------------------------- permuted classes
@dataclass(frozen=True)
class ClassesSpec:
    features: int = 48        # feature ids 0..features-1
    classes: int = 8          # labels features+1 .. features+classes
    proto_len: int = 6        # feature tokens per example
    noise: float = 0.2        # chance each prototype token is replaced by a uniform random feature

    @property
    def SEP(self) -> int:
        return self.features

    @property
    def vocab(self) -> int:
        return self.features + 1 + self.classes

    @property
    def example_len(self) -> int:
        return self.proto_len + 2


class PermutedClasses:
    """One universe of prototypes (drawn from `seed`) and `tasks` permutations of the feature vocabulary (task 0 is
    the identity). Documents are concatenated examples of one task; the label follows SEP."""

    def __init__(self, spec: ClassesSpec, tasks: int, seed: int):
        self.spec = spec
        rng = np.random.default_rng(seed)
        self.protos = np.stack([rng.choice(spec.features, size=spec.proto_len, replace=False)
                                for _ in range(spec.classes)])
        self.perms = [np.arange(spec.features)] + [rng.permutation(spec.features) for _ in range(tasks - 1)]

    def examples(self, rng: np.random.Generator, task: int, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """([n, example_len] ids, [n] class indices)."""
        s = self.spec
        y = rng.integers(0, s.classes, size=n)
        x = self.protos[y].copy()
        noisy = rng.random(x.shape) < s.noise
        x[noisy] = rng.integers(0, s.features, size=int(noisy.sum()))
        x = self.perms[task][x]
        ids = np.concatenate([x, np.full((n, 1), s.SEP), (y + s.features + 1)[:, None]], axis=1)
        return ids, y

    def documents(self, rng: np.random.Generator, task: int, length: int, n: int) -> List[List[int]]:
        """n documents of exactly `length` ids: whole examples, the remainder padded with SEP-free feature noise."""
        per = length // self.spec.example_len
        docs = []
        for _ in range(n):
            ids, _ = self.examples(rng, task, per)
            flat = ids.reshape(-1).tolist()
            flat += rng.integers(0, self.spec.features, size=length - len(flat)).tolist()
            docs.append(flat)
        return docs
