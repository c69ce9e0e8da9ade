"""Peak memory while one passkey prompt of each length is read, in a fresh process: hope_megatron.eval.niah's probe
(`peak_alloc_bytes` on `run_trial`: glibc's in-use heap read after every aten op) costs a walk of malloc's free lists
per op, which after a training run in the same process is slow enough to dominate the grid (minutes per 64k prompt);
a fresh heap holds only the model. job.py runs it once per variant, on the first seed.

    python benchmarks/evidence/memory_probe.py CONVERTED_DIR SEGMENT SEED ATTENTION_MAX LENGTH [LENGTH ...]

Prints one JSON line {length: peak bytes} (lengths a full-attention model does not run are left out).
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def main(argv) -> dict:
    import numpy as np
    import torch

    from benchmarks.evidence import tasks
    from hope_megatron.eval import niah
    from hope_megatron.inference import load_model, read_config

    torch.set_num_threads(1)  # mallinfo2 counts the main arena only
    path, segment, seed, attention_max = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    model, cfg = load_model(path), read_config(path)
    spec = tasks.PasskeySpec()
    full_attention = any(c == "A" for c in cfg["layer_letters"])
    warm = torch.tensor([spec.haystack() * 4], dtype=torch.long)
    niah.peak_alloc_bytes(lambda: niah.run_trial(model, warm, [0], segment))  # first-call allocations
    out = {}
    for length in (int(x) for x in argv[4:]):
        if full_attention and length > attention_max:
            continue
        rng = np.random.default_rng([seed, length, 0])
        ids, answer = tasks.passkey_prompt(rng, spec, length, 0.5)
        prompt = torch.tensor([ids], dtype=torch.long)
        _, out[length] = niah.peak_alloc_bytes(lambda: niah.run_trial(model, prompt, answer, segment))
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
