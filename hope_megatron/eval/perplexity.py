"""Loss and perplexity of a converted checkpoint per dataset (issue 7 item 3).

    python -m hope_megatron.eval.perplexity --checkpoint OUT --data-path data/demo [--seq-length 512] [--max-samples 64]

--data-path takes (repeatable) a .jsonl file (`text` field), a .txt file, a megatron indexed-dataset PREFIX
(PREFIX.bin/.idx), or a directory of .jsonl files (the demo corpus: one result per domain). `--named-sets` adds the
long-document substitutes built from the demo corpus: "PG19-like" (its pre-1919 Gutenberg books: drama and poetry)
and "Wiki-like" (its Wikipedia articles). They are NOT PG19 or WikiText (not obtainable here, data_sources.md §6)
and are always reported under those names. Documents are taken from the end of each file (`--max-docs`), which is
held out only if training did not see them: say so when quoting numbers.

Evaluation: the documents are joined with the end-of-document token into one stream and cut into non-overlapping
windows of seq_length + 1 tokens (megatron's evaluation samples); loss = mean next-token NLL over every predicted
token, ppl = exp(loss). `--stream` instead reads each document whole with the carried state, `--stream-segment`
tokens at a time (the long-context regime of memory models). Prints one `NAME loss: L ppl: X tokens: N` line per set,
progress lines with an ETA while a set runs, and rewrites the JSON after every set (`"complete": false` until the end;
SIGTERM writes what is finished and exits 143). A PREFIX with PREFIX.bin/.idx is read as the indexed dataset even when a
directory PREFIX exists beside it (megatron's dataset cache creates one); a path that yields nothing to score is refused
before the model loads.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List

import torch

from hope_megatron.eval.common import default_output, load, read_texts, run_info
from hope_megatron.eval.progress import PartialJSON, Progress, Terminated, terminated_raises

NAMED_SETS = {"PG19-like": ("drama.jsonl", "poetry.jsonl"), "Wiki-like": ("encyclopedia.jsonl",)}


def is_prefix(path: str) -> bool:
    """An indexed-dataset PREFIX (PREFIX.bin + PREFIX.idx), whatever else is named PREFIX."""
    return os.path.isfile(path + ".idx") and os.path.isfile(path + ".bin")


def load_token_docs(path: str, tokenizer, max_docs: int) -> List[List[int]]:
    """Token lists of the last `max_docs` documents of a jsonl/txt file or an indexed-dataset prefix."""
    if is_prefix(path):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        ds = IndexedDataset(path)
        idx = ds.document_indices
        n_docs = len(idx) - 1
        docs = []
        for d in range(max(0, n_docs - max_docs), n_docs):
            docs.append([int(t) for s in range(idx[d], idx[d + 1]) for t in ds[s]])
        return docs
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--data-path {path} is neither a file nor an indexed-dataset prefix (PREFIX.bin/.idx); "
                                f"fetch the data first (tools/fetch_demo_corpus.py) or fix the path.")
    return [tokenizer.tokenize(t) for t in read_texts(path, limit=max_docs, from_end=True)]


def windows(docs: List[List[int]], eod: int, seq_length: int, max_samples: int) -> torch.Tensor:
    """Non-overlapping [n, seq_length + 1] samples of the EOD-joined stream."""
    stream: List[int] = []
    for d in docs:
        stream.extend(d)
        stream.append(eod)
    n = min(max(len(stream) - 1, 0) // seq_length, max_samples)
    if n == 0:
        raise ValueError(f"the data holds {len(stream)} tokens, fewer than one window of seq_length + 1 = "
                         f"{seq_length + 1}; lower --seq-length or give more documents.")
    return torch.tensor([stream[i * seq_length:(i + 1) * seq_length + 1] for i in range(n)], dtype=torch.long)


@torch.no_grad()
def window_nll(model, samples: torch.Tensor, batch_size: int, segment: int, progress=None) -> torch.Tensor:
    """Per-token NLL [n, seq_length] of every window (each window is its own sequence: state starts fresh)."""
    out = []
    for i in range(0, samples.shape[0], batch_size):
        out.append(model.token_nll(samples[i:i + batch_size], segment=segment))
        if progress is not None:
            progress.advance(out[-1].numel())
    return torch.cat(out, dim=0)


@torch.no_grad()
def stream_nll(model, docs: List[List[int]], segment: int, max_tokens: int, progress=None) -> torch.Tensor:
    """NLL of each whole document read with carried state (documents start fresh), at most max_tokens per document."""
    out = []
    for d in docs:
        if len(d) > 1:
            out.append(model.token_nll(torch.tensor([d[:max_tokens]]), segment=segment)[0])
            if progress is not None:
                progress.advance(out[-1].numel())
    return torch.cat(out)


def check_ids(path: str, docs: List[List[int]], vocab_size: int) -> None:
    """Ids an indexed dataset holds beyond the model's vocabulary would be an IndexError in the first forward."""
    top = max((max(d) for d in docs if d), default=-1)
    if top >= vocab_size:
        raise SystemExit(f"perplexity: {path}.bin holds token id {top} but the model's vocabulary is {vocab_size}; it "
                         f"was made with another tokenizer: re-run tools/preprocess_data.py with the checkpoint's.")


def evaluate_set(model, tokenizer, name: str, paths: List[str], args, label: str = "") -> Dict[str, object]:
    per_path = [load_token_docs(p, tokenizer, args.max_docs) for p in paths]
    for p, ds in zip(paths, per_path):
        if is_prefix(p):
            check_ids(p, ds, model.vocab_size)
    docs = [d for ds in per_path for d in ds]
    if args.stream:
        total = sum(min(len(d), args.max_tokens_per_doc) - 1 for d in docs if len(d) > 1)
        progress = Progress(total, "tokens", f"perplexity {label}{name}")
        nll = stream_nll(model, docs, args.stream_segment, args.max_tokens_per_doc, progress)
    else:  # a set of several files (PG19-like = drama + poetry) takes an equal share of its windows from each file
        share = -(-args.max_samples // len(per_path))
        samples = torch.cat([windows(ds, tokenizer.eod, args.seq_length, share) for ds in per_path])[:args.max_samples]
        progress = Progress(samples.shape[0] * args.seq_length, "tokens", f"perplexity {label}{name}")
        nll = window_nll(model, samples, args.batch_size, args.stream_segment, progress).reshape(-1)
    loss = float(nll.double().mean())
    return {"name": name, "paths": paths, "documents": len(docs), "tokens": int(nll.numel()), "loss": loss,
            "ppl": math.exp(min(loss, 700.0)), "mode": "stream" if args.stream else f"windows of {args.seq_length}"}


def dataset_sets(data_paths: List[str], named_sets: bool) -> Dict[str, List[str]]:
    """{name: [paths]}: a directory expands to one set per .jsonl file (per domain), plus the named substitutes; an
    indexed PREFIX wins over a directory of the same name (megatron's dataset cache creates PREFIX/ beside the pair).
    Refuses, before any model is loaded, a path that gives nothing to score."""
    sets: Dict[str, List[str]] = {}
    for p in data_paths:
        if is_prefix(p) or os.path.isfile(p):
            sets[os.path.basename(p).replace(".jsonl", "")] = [p]
        elif os.path.isdir(p):
            files = sorted(f for f in os.listdir(p) if f.endswith(".jsonl"))
            if not files:
                raise SystemExit(f"perplexity: --data-path {p} is a directory without .jsonl files and no {p}.bin/.idx "
                                 f"pair exists; pass .jsonl/.txt files, a directory of .jsonl files or an indexed "
                                 f"PREFIX (tools/preprocess_data.py output).")
            for f in files:
                sets[os.path.splitext(f)[0]] = [os.path.join(p, f)]
            if named_sets:
                for name, members in NAMED_SETS.items():
                    found = [os.path.join(p, m) for m in members if m in files]
                    if found:
                        sets[name] = found
        else:
            raise SystemExit(f"perplexity: --data-path {p} is neither a file, a directory nor an indexed-dataset prefix "
                             f"({p}.bin/.idx); fetch the data first (tools/fetch_demo_corpus.py) or fix the path.")
    return sets


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Perplexity of a converted HOPE checkpoint per dataset.")
    p.add_argument("--checkpoint", required=True, help="directory written by checkpoints_convert/convert_to_torch.py")
    p.add_argument("--data-path", nargs="+", required=True, help=".jsonl/.txt files, indexed PREFIXes or directories")
    p.add_argument("--seq-length", type=int, default=None, help="window length (default: the trained seq length)")
    p.add_argument("--max-samples", type=int, default=64, help="windows per set")
    p.add_argument("--max-docs", type=int, default=20, help="documents per file, taken from its end")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--named-sets", action="store_true", help="add the PG19-like and Wiki-like sets of a demo directory")
    p.add_argument("--stream", action="store_true", help="read whole documents with carried state")
    p.add_argument("--stream-segment", type=int, default=2048, help="tokens per streamed call")
    p.add_argument("--max-tokens-per-doc", type=int, default=65536)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=None, help="JSON path (default CHECKPOINT/eval/perplexity.json)")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    sets = dataset_sets(args.data_path, args.named_sets)  # before the model: a bad path costs nothing
    model, tokenizer, cfg = load(args.checkpoint, args.threads, tool="perplexity")
    args.seq_length = args.seq_length or int(cfg["seq_length"])
    results = []
    out = {"kind": "perplexity", "run": run_info(args.checkpoint), "seq_length": args.seq_length, "results": results}
    writer = PartialJSON(args.output or default_output(args.checkpoint, "perplexity"))
    try:
        with terminated_raises():
            for i, (name, paths) in enumerate(sets.items()):
                try:
                    r = evaluate_set(model, tokenizer, name, paths, args, label=f"[{i + 1}/{len(sets)}] ")
                except ValueError as e:  # too few tokens for a window, malformed JSON lines: one sentence
                    raise SystemExit(f"perplexity: {name} ({', '.join(paths)}): {e}") from None
                results.append(r)
                print(f"{name} loss: {r['loss']:.4f} ppl: {r['ppl']:.3f} tokens: {r['tokens']}", flush=True)
                writer.write(out, complete=False)
    except Terminated:
        writer.write(out, complete=False)
        print(f"perplexity: stopped by SIGTERM after {len(results)} of {len(sets)} sets; their results are in "
              f"{writer.path} (\"complete\": false)", file=sys.stderr, flush=True)
        raise SystemExit(143) from None
    if not results or not sum(r["tokens"] for r in results):
        raise SystemExit(f"perplexity: nothing was scored from --data-path {' '.join(args.data_path)}; check the paths.")
    print(f"wrote {writer.write(out, complete=True)}")
    return out


if __name__ == "__main__":
    main()
