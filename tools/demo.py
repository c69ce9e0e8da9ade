#!/usr/bin/env python
"""`make demo`: the whole hope_megatron workflow on one machine, CPU included, in about ten minutes.

  corpus -> split (train / held-out pieces) -> tokenizer -> shards -> train (2 ranks, saves) -> resume (loads, finishes) -> convert -> eval data
  -> perplexity per domain -> zero-shot -> NIAH -> summary table

Every step is one of the project's own command-line tools run as a child process (the exact commands a user runs at
cluster scale, see docs/reproduction.md); its output streams to the terminal and to WORKDIR/logs/STEP.log. A step
whose outputs exist is skipped with "reusing ...", so a second `make demo` only prints the summary. If a step fails
the demo stops with one line naming the step and its log.

  python tools/demo.py                          # runs/demo/, a 0.5 MB slice per domain, 60 iterations
  python tools/demo.py --force                  # redo every step
  python tools/demo.py --corpus-dir DIR         # use DIR/*.jsonl ({"text": ...} per line) instead of fetching
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
SPLITS = ("train", "heldout")
WARNING_LINE = re.compile(r"^\S.*:\d+: \w*Warning: ")


class StepFailed(Exception):
    pass


class Demo:
    """Paths, options and the record of what each step did (for the summary)."""

    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.workdir)
        self.corpus = os.path.abspath(args.corpus_dir) if args.corpus_dir else os.path.join(self.work, "corpus")
        self.split_dir = os.path.join(self.work, "pieces")
        self.tok_prefix = os.path.join(self.work, "tokenizer", "demo8k")
        self.shards = os.path.join(self.work, "shards")
        self.ckpt = os.path.join(self.work, "checkpoints")
        self.torch_dir = os.path.join(self.work, "torch")
        self.eval_dir = os.path.join(self.work, "eval")
        self.logs = os.path.join(self.work, "logs")
        self.t0 = time.monotonic()
        self.rows = []      # (step, status, seconds, artefact)
        os.makedirs(self.logs, exist_ok=True)

    def domains(self):
        return sorted(os.path.basename(p)[:-6] for p in glob.glob(os.path.join(self.corpus, "*.jsonl")))

    def shard_prefix(self, domain, kind="train"):
        return os.path.join(self.shards, f"{domain}_{kind}_text_document")

    def split_file(self, domain, kind):
        return os.path.join(self.split_dir, f"{domain}.{kind}.jsonl")

    def half(self):
        """The first training launch stops here (--exit-interval); the second resumes from its checkpoint."""
        return self.args.train_iters // 2

    def elapsed(self):
        s = int(time.monotonic() - self.t0)
        return f"{s // 60}:{s % 60:02d}"


def run(demo: Demo, step: str, cmd, env=None) -> str:
    """Run one child process, streaming its output (indented) to the terminal and to logs/STEP.log."""
    log_path = os.path.join(demo.logs, f"{step}.log")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    print(f"  $ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
                                cwd=REPO, bufsize=1, start_new_session=True)
        try:
            rc = _stream(demo, proc, log)
        except BaseException:  # Ctrl-C or a kill of the demo: take the step's whole process group down with it
            _kill_group(proc)
            raise
    if rc != 0:
        raise StepFailed(f"step '{step}' failed with exit code {rc}; its full output is in {log_path}")
    return log_path


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stream(demo, proc, log) -> int:
    after_warning = False
    for line in proc.stdout:
        log.write(line)
        # Python warnings (two lines: "file:line: XWarning: ..." and the indented source line) stay in the log
        # only; the terminal shows the tools' own progress.
        is_warning = bool(WARNING_LINE.search(line)) or (after_warning and line.startswith("  "))
        after_warning = bool(WARNING_LINE.search(line))
        if not demo.args.quiet and not is_warning:
            print("  | " + line, end="", flush=True)
    return proc.wait()


# ------------------------------------------------------------------------------------------------------ the steps
# Each step: (name, done(demo) -> artefact or None, do(demo) -> artefact). done() makes the second run a no-op.

def corpus_done(d):
    return d.corpus if len(d.domains()) >= 1 and (d.args.corpus_dir or len(d.domains()) == 4) else None


def corpus_do(d):
    if d.args.corpus_dir:
        if d.domains():
            return d.corpus
        raise StepFailed(f"--corpus-dir {d.corpus} has no *.jsonl files; give a folder of jsonl files with a 'text' key.")
    cmd = [PY, "tools/fetch_demo_corpus.py", "--out-dir", d.corpus, "--max-mb", str(d.args.max_mb)]
    run(d, "corpus", cmd + (["--offline"] if d.args.offline else []))
    return d.corpus


def _pieces(text, size):
    """Cut a document at line breaks into pieces of about `size` characters (a 5-play file becomes ~300 documents)."""
    piece, n = [], 0
    for line in text.splitlines(keepends=True):
        piece.append(line)
        n += len(line)
        if n >= size:
            yield "".join(piece)
            piece, n = [], 0
    if piece and "".join(piece).strip():
        yield "".join(piece)


def split_done(d):
    ok = d.domains() and all(os.path.exists(d.split_file(x, "heldout")) for x in d.domains())
    return d.split_dir if ok else None


def split_do(d):
    """Documents -> ~4k-character pieces; every 10th piece of a domain is held out for perplexity (never trained on).
    Pieces make the GPT dataset's train/valid split meaningful on a corpus of a few long plays."""
    os.makedirs(d.split_dir, exist_ok=True)
    for domain in d.domains():
        counts = {"train": 0, "heldout": 0}
        outs = {k: open(d.split_file(domain, k) + ".tmp", "w", encoding="utf-8") for k in counts}
        with open(os.path.join(d.corpus, f"{domain}.jsonl"), encoding="utf-8") as f:
            i = 0
            for line in f:
                if not line.strip():
                    continue
                for piece in _pieces(json.loads(line)["text"], d.args.piece_chars):
                    kind = "heldout" if i % 10 == 9 else "train"
                    outs[kind].write(json.dumps({"text": piece}) + "\n")
                    counts[kind] += 1
                    i += 1
        for k, fh in outs.items():
            fh.close()
            os.replace(d.split_file(domain, k) + ".tmp", d.split_file(domain, k))
        if counts["heldout"] == 0:
            raise StepFailed(f"domain {domain} has too little text for a held-out piece; give more text or lower --piece-chars.")
        print(f"  {domain}: {counts['train']} training pieces, {counts['heldout']} held-out pieces", flush=True)
    return d.split_dir


def tokenizer_done(d):
    return d.tok_prefix + ".model" if os.path.exists(d.tok_prefix + ".model") else None


def tokenizer_do(d):
    train_files = [d.split_file(x, "train") for x in d.domains()]
    run(d, "tokenizer", [PY, "tools/train_tokenizer.py", "--input", *train_files,
                         "--model-prefix", d.tok_prefix, "--vocab-size", str(d.args.vocab_size),
                         "--num-threads", str(os.cpu_count() or 1)])
    return d.tok_prefix + ".model"


def shards_done(d):
    ok = d.domains() and all(os.path.exists(d.shard_prefix(x, k) + ".idx") for x in d.domains() for k in SPLITS)
    return d.shards if ok else None


def shards_do(d):
    for domain in d.domains():
        for kind in SPLITS:
            if os.path.exists(d.shard_prefix(domain, kind) + ".idx"):
                continue
            run(d, f"shards_{domain}_{kind}", [PY, "tools/preprocess_data.py", "--input", d.split_file(domain, kind),
                                    "--output-prefix", os.path.join(d.shards, f"{domain}_{kind}"),
                                    "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                                    d.tok_prefix + ".model", "--append-eod", "--workers", "1"])
    return d.shards


def latest_iteration(d):
    try:
        with open(os.path.join(d.ckpt, "latest_checkpointed_iteration.txt")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _train(d, step, iters, exit_at=None):
    env = {"DATA_PATH": " ".join(f"1 {d.shard_prefix(x)}" for x in d.domains()), "TOKENIZER_MODEL": d.tok_prefix + ".model",
           "CHECKPOINT_DIR": d.ckpt, "TENSORBOARD_DIR": os.path.join(d.work, "tensorboard"), "PYTHON": PY,
           "MASTER_PORT": _free_port(), "DATA_CACHE_PATH": os.path.join(d.work, "data_cache")}
    if d.args.nproc:
        env["GPUS_PER_NODE"] = str(d.args.nproc)
    flags = ["--train-iters", str(iters), "--save-interval", str(d.args.save_interval), "--log-interval", "5",
             "--eval-interval", str(iters), "--eval-iters", "2", *shlex.split(d.args.train_args)]
    if exit_at:
        flags += ["--exit-interval", str(exit_at)]
    run(d, step, ["bash", "examples/pretrain_hope_tiny.sh", *flags], env)
    return d.ckpt


def train_metrics(d):
    """Logged training and validation losses of the train + resume legs (read back from their logs)."""
    losses, valid = [], []
    for step in ("train", "resume"):
        try:
            text = open(os.path.join(d.logs, f"{step}.log"), encoding="utf-8").read()
        except OSError:
            continue
        losses += [(int(i), float(x)) for i, x in re.findall(r"iteration\s+(\d+)/\s*\d+ \|.*?lm loss: ([0-9.E+-]+)", text)]
        valid += [float(x) for x in re.findall(r"validation at iteration \d+ \| lm loss: ([0-9.E+-]+)", text)]
    return losses, valid


def train_done(d):
    return f"{d.ckpt} (iteration {latest_iteration(d)})" if latest_iteration(d) >= d.half() else None


def train_do(d):
    _train(d, "train", d.args.train_iters, exit_at=d.half())
    return f"{d.ckpt} (iteration {latest_iteration(d)})"


def resume_done(d):
    return f"{d.ckpt} (iteration {latest_iteration(d)})" if latest_iteration(d) >= d.args.train_iters else None


def resume_do(d):
    _train(d, "resume", d.args.train_iters)  # --load finds iteration half(): the run resumes there
    if latest_iteration(d) < d.args.train_iters:
        raise StepFailed(f"step 'resume' ended at iteration {latest_iteration(d)} < {d.args.train_iters}; "
                         f"see {os.path.join(d.logs, 'resume.log')}")
    return f"{d.ckpt} (iteration {latest_iteration(d)})"


def convert_done(d):
    cfg = os.path.join(d.torch_dir, "config.json")
    tracker = os.path.join(d.ckpt, "latest_checkpointed_iteration.txt")
    fresh = os.path.exists(cfg) and os.path.exists(tracker) and os.path.getmtime(cfg) >= os.path.getmtime(tracker)
    return d.torch_dir if fresh else None


def convert_do(d):
    # --overwrite: a newer checkpoint replaces the earlier conversion and its (now stale) eval results
    run(d, "convert", [PY, "checkpoints_convert/convert_to_torch.py", "--load", d.ckpt, "--output", d.torch_dir,
                       "--overwrite"])
    return d.torch_dir


def _importable(module):
    return subprocess.run([PY, "-c", f"import {module}"], capture_output=True, cwd=REPO).returncode == 0


def eval_deps_done(d):
    return "lm-eval (installed)" if _importable("lm_eval") else None


def eval_deps_do(d):
    """Zero-shot scoring runs through lm-eval, the package's `eval` extra (`make demo` installs only `dev`)."""
    if d.args.offline:
        raise StepFailed("zero-shot needs lm-eval, which is not installed and --offline forbids pip; run "
                         "`pip install -e '.[eval]'` or pass --skip zeroshot.")
    run(d, "eval_deps", [PY, "-m", "pip", "install", "-q", "-e", ".[eval]"])
    return "lm-eval (installed now)"


def eval_data_done(d):
    need = [os.path.join(d.args.eval_data, t, "validation.jsonl") for t in d.args.zeroshot_tasks]
    return d.args.eval_data if all(os.path.exists(p) for p in need) else None


def eval_data_do(d):
    cmd = [PY, "tools/fetch_eval_data.py", "--out-dir", d.args.eval_data, "--only", "tasks",
           "--tasks", *d.args.zeroshot_tasks]
    run(d, "eval_data", cmd + (["--offline"] if d.args.offline else []))
    return d.args.eval_data


def _eval(d, step, module, extra):
    out = os.path.join(d.eval_dir, f"{step}.json")
    os.makedirs(d.eval_dir, exist_ok=True)
    run(d, step, [PY, "-m", module, "--checkpoint", d.torch_dir, "--output", out, "--threads",
                  str(os.cpu_count() or 1), *extra])
    return out


def perplexity_do(d):
    # the held-out pieces of each domain (never trained on): one result per domain
    return _eval(d, "perplexity", "hope_megatron.eval.perplexity",
                 ["--data-path", *[d.shard_prefix(x, "heldout") for x in d.domains()],
                  "--max-samples", str(d.args.ppl_samples)])


def zeroshot_do(d):
    return _eval(d, "zeroshot", "hope_megatron.eval.zeroshot",
                 ["--data-dir", d.args.eval_data, "--tasks", ",".join(d.args.zeroshot_tasks), "--limit",
                  str(d.args.zeroshot_limit), "--markdown", os.path.join(d.eval_dir, "zeroshot.md")])


def niah_do(d):
    # haystack: held-out demo text (public domain), so the demo needs no essay download
    hay = next((d.split_file(x, "heldout") for x in ("drama", *d.domains())
                if os.path.exists(d.split_file(x, "heldout"))), None)
    return _eval(d, "niah", "hope_megatron.eval.niah",
                 ["--lengths", ",".join(map(str, d.args.niah_lengths)), "--depths", "0,0.5,1",
                  "--needles", "passkey", "--trials", str(d.args.niah_trials), "--haystack", hay])


def _out_done(name):
    def done(d):
        out = os.path.join(d.eval_dir, name)
        return out if convert_done(d) and os.path.exists(out) and \
            os.path.getmtime(out) >= os.path.getmtime(os.path.join(d.torch_dir, "config.json")) else None
    return done


STEPS = [
    ("corpus", None, corpus_done, corpus_do),
    ("split", None, split_done, split_do),
    ("tokenizer", "tools/train_tokenizer.py", tokenizer_done, tokenizer_do),
    ("shards", "tools/preprocess_data.py", shards_done, shards_do),
    ("train", "hope_megatron/train.py", train_done, train_do),
    ("resume", "hope_megatron/train.py", resume_done, resume_do),
    ("convert", "checkpoints_convert/convert_to_torch.py", convert_done, convert_do),
    ("eval_deps", None, eval_deps_done, eval_deps_do),
    ("eval_data", "tools/fetch_eval_data.py", eval_data_done, eval_data_do),
    ("perplexity", "hope_megatron/eval/perplexity.py", _out_done("perplexity.json"), perplexity_do),
    ("zeroshot", "hope_megatron/eval/zeroshot.py", _out_done("zeroshot.json"), zeroshot_do),
    ("niah", "hope_megatron/eval/niah.py", _out_done("niah.json"), niah_do),
]


# ------------------------------------------------------------------------------------------------------ summary
def _load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def eval_lines(d):
    """One line per evaluation, read back from its JSON (so a reused run prints the same numbers)."""
    lines = []
    ppl = _load(os.path.join(d.eval_dir, "perplexity.json"))
    if ppl:
        lines.append("perplexity (held-out): " + ", ".join(
            f"{r['name'].replace('_heldout_text_document', '')} {r['ppl']:.2f}" for r in ppl.get("results", [])))
    zs = _load(os.path.join(d.eval_dir, "zeroshot.json"))
    if zs:
        rows = zs.get("results", zs.get("tasks", []))
        if isinstance(rows, dict):
            rows = [{"task": k, **v} if isinstance(v, dict) else {"task": k, "acc": v} for k, v in rows.items()]
        parts = []
        for r in rows:
            acc = next((r[k] for k in ("acc", "accuracy", "acc_norm") if k in r), None)
            parts.append(f"{r.get('task', r.get('name', '?'))} {acc:.3f}" if isinstance(acc, (int, float)) else str(r))
        lines.append("zero-shot accuracy: " + ", ".join(parts))
    niah = _load(os.path.join(d.eval_dir, "niah.json"))
    if niah:
        cols = list(zip(*niah.get("grid", []))) or []
        parts = []
        for n, col in zip(niah.get("lengths", []), cols):
            vals = [v for v in col if v is not None]
            parts.append(f"{n} tokens {sum(vals) / len(vals):.2f}" if vals else f"{n} tokens beyond budget")
        lines.append("NIAH passkey recall: " + ", ".join(parts))
    return lines


def summary(d) -> str:
    lines = ["", "=" * 100, f"hope_megatron demo summary (total {d.elapsed()}, workdir {d.work})", "=" * 100,
             f"{'step':<12} {'status':<10} {'seconds':>8}  artefact", "-" * 100]
    for step, status, secs, art in d.rows:
        lines.append(f"{step:<12} {status:<10} {secs:>8.1f}  {art}")
    lines += ["-" * 100, f"{'logs':<12} {'':<10} {'':>8}  {d.logs}",
              f"{'tensorboard':<12} {'':<10} {'':>8}  {os.path.join(d.work, 'tensorboard')}", "-" * 100]
    losses, valid = train_metrics(d)
    if losses:
        lines.append(f"train lm loss: iteration {losses[0][0]} {losses[0][1]:.4f} -> iteration {losses[-1][0]} "
                     f"{losses[-1][1]:.4f}")
    if valid:
        lines.append(f"validation lm loss at the end: {valid[-1]:.4f}")
    lines += eval_lines(d)
    lines.append("=" * 100)
    return "\n".join(lines)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=os.path.join(REPO, "runs", "demo"))
    p.add_argument("--corpus-dir", default=None, help="folder of *.jsonl to use instead of fetching the demo corpus")
    p.add_argument("--max-mb", type=float, default=0.5, help="MB of text per domain fetched (CPU budget)")
    p.add_argument("--piece-chars", type=int, default=4000, help="documents are cut into pieces this long (see split)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--train-iters", type=int, default=60)
    p.add_argument("--save-interval", type=int, default=10)
    p.add_argument("--train-args", default="", help="extra hope-train flags, e.g. '--num-layers 2'")
    p.add_argument("--nproc", type=int, default=None, help="processes (default: the GPUs found, else 2 CPU ranks)")
    p.add_argument("--eval-data", default=os.path.join(REPO, "data", "eval"))
    p.add_argument("--ppl-samples", type=int, default=12, help="windows of seq-length tokens per domain for perplexity")
    p.add_argument("--zeroshot-tasks", nargs="+", default=["arc_easy", "winogrande"])
    p.add_argument("--zeroshot-limit", type=int, default=40, help="examples per zero-shot task")
    p.add_argument("--niah-lengths", nargs="+", type=int, default=[256, 512])
    p.add_argument("--niah-trials", type=int, default=1, help="prompts per (length, depth) cell")
    p.add_argument("--offline", action="store_true", help="never call pip (the archives must be in data/downloads)")
    p.add_argument("--force", action="store_true", help="redo every step")
    p.add_argument("--skip", nargs="*", default=[], choices=[s[0] for s in STEPS], help="steps to leave out")
    p.add_argument("--quiet", action="store_true", help="only banners and the summary (logs still written)")
    args = p.parse_args(argv)
    if args.train_iters < 2 or args.save_interval < 1:
        p.error("--train-iters must be >= 2 (the demo saves halfway and resumes) and --save-interval >= 1.")
    return args


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _terminate)  # a killed demo (CI timeout) also ends the step it is running
    d = Demo(get_args(argv))
    if d.args.force and os.path.isdir(d.work):
        for sub in ("pieces", "tokenizer", "shards", "checkpoints", "torch", "eval", "tensorboard", "data_cache"):
            shutil.rmtree(os.path.join(d.work, sub), ignore_errors=True)
    print(f"hope_megatron demo: workdir {d.work}; {len(STEPS)} steps; logs in {d.logs}", flush=True)
    for i, (name, needs, done, do) in enumerate(STEPS, 1):
        print(f"\n[demo {i}/{len(STEPS)}] {name}  (elapsed {d.elapsed()})", flush=True)
        start = time.monotonic()
        if name in d.args.skip:
            d.rows.append((name, "skipped", 0.0, "--skip"))
            print("  skipped (--skip)")
            continue
        if needs and not os.path.exists(os.path.join(REPO, needs)):
            d.rows.append((name, "missing", 0.0, f"{needs} is not in this checkout"))
            print(f"  not run: {needs} is not in this checkout yet")
            continue
        art = None if d.args.force else done(d)
        if art:
            print(f"  reusing {art}")
            d.rows.append((name, "reused", 0.0, art))
            continue
        try:
            art = do(d)
        except StepFailed as e:
            print(summary(d), flush=True)
            print(f"\nerror: {e}", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            print(f"\nerror: interrupted during step '{name}'; rerun `make demo` to continue from there.",
                  file=sys.stderr, flush=True)
            return 130
        d.rows.append((name, "ran", time.monotonic() - start, art))
    print(summary(d), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
