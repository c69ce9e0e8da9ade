"""reports/evidence.md from the jobs' JSON: tables (mean ± 95% CI over seeds), figures, the run's record (command,
wall time, machine load), findings computed from the numbers, and the written discussion of the default grid
(benchmarks/evidence/discussion.md, included verbatim when the default grid is reported)."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from typing import Dict, List

import numpy as np

from benchmarks.evidence import figures
from benchmarks.evidence.grid import CMS_VARIANTS, DIAGNOSTIC, MEMORY_VARIANTS, VARIANTS, Grid
from benchmarks.evidence.stats import fmt, mean_ci

DISCUSSION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "discussion.md")


def _by_variant(results) -> Dict[str, List[dict]]:
    out = defaultdict(list)
    for r in sorted(results, key=lambda r: r["seed"]):
        out[r["variant"]].append(r)
    return out


def _last(xs):
    vals = [x for x in xs if x is not None]
    return vals[-1] if vals else None


def gather(results, g: Grid) -> dict:
    """Per variant, per-seed values of every number the report shows."""
    by = _by_variant(results)
    d = {"variants": [v for v in g.variants if v in by], "seeds": sorted({r["seed"] for r in results})}
    mq, pk, cl, clip, params, times = {}, {}, {}, {}, {}, {}
    for v, rs in by.items():
        mq[v] = {key: [float(np.mean(r["mqar"]["accuracy"][key])) for r in rs] for key in rs[0]["mqar"]["accuracy"]}
        pk[v] = {}
        for n in g.passkey_lengths:
            cells = [[c for c in r["passkey"]["cells"] if c["length"] == n] for r in rs]
            run = [[c for c in cs if c["status"] == "run"] for cs in cells]
            pk[v][n] = {"recall": [float(np.mean([c["recall"] for c in cs])) if cs else None for cs in run],
                        "digits": [float(np.mean([c["digits"] for c in cs])) if cs else None for cs in run],
                        "peak": [c["peak_bytes"] / 2**20 for cs in run for c in cs if "peak_bytes" in c][:1],
                        "not_run": any(c["status"] != "run" for cs in cells for c in cs)}
        cl[v] = {"final_acc": [float(np.mean(r["classes"]["matrix"][-1])) for r in rs],
                 "forgetting": [r["classes"]["forgetting"]["average_forgetting"] for r in rs],
                 "matrix": [r["classes"]["matrix"] for r in rs],
                 "ttc_matrix": [r["classes"]["test_time_cms"]["matrix"] for r in rs],
                 "ttc_forgetting": [r["classes"]["test_time_cms"]["forgetting"]["average_forgetting"] for r in rs],
                 "ttc_new": [float(np.mean([m[t][t] for t in range(1, len(m))]))
                             for m in (r["classes"]["test_time_cms"]["matrix"] for r in rs)],
                 "ttc_levels": rs[0]["classes"]["test_time_cms"]["levels"]}
        clip[v] = {"mqar": [_last(r["mqar"]["train"]["clip_hit_rate"]) for r in rs],
                   "passkey": [_last(r["passkey"]["train"]["clip_hit_rate"]) for r in rs],
                   "classes": [_last(r["classes"]["train"][-1]["clip_hit_rate"]) for r in rs],
                   "scale": [_last(r["mqar"]["train"]["clip_scale"]) for r in rs],
                   "curve": (rs[0]["mqar"]["train"]["iteration"], [r["mqar"]["train"]["clip_hit_rate"] for r in rs])}
        params[v] = {t: rs[0][t]["train"]["parameters"] if t != "classes" else rs[0][t]["train"][0]["parameters"]
                     for t in ("mqar", "passkey", "classes")}
        times[v] = [sum(r["times"].values()) for r in rs]
    d.update(mqar=mq, passkey=pk, classes=cl, clip=clip, params=params, times=times)
    return d


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header, rows) -> List[str]:
    return [_row(header), _row(["---"] * len(header))] + [_row(r) for r in rows]


def _rank(d: Dict[str, list], higher=True) -> List[tuple]:
    """[(variant, mean, half-width)] sorted best first."""
    ms = [(v, *mean_ci(xs)[:2]) for v, xs in d.items() if mean_ci(xs)[0] is not None]
    return sorted(ms, key=lambda t: -t[1] if higher else t[1])


def _compare(name: str, d: Dict[str, list], higher=True, scale=100.0, unit=" %", chance=None) -> str:
    """One sentence: HOPE's place and whether its CI overlaps the best baseline's."""
    ranked = _rank(d, higher)
    if "hope" not in d or not ranked:
        return f"- {name}: no HOPE result."
    ranked = [t for t in ranked if t[0] not in DIAGNOSTIC]
    pos = [v for v, _, _ in ranked].index("hope") + 1
    others = [t for t in ranked if t[0] != "hope"]
    if not others:
        return f"- {name}: HOPE {ranked[0][1] * scale:.1f}{unit}; no baseline was run there."
    base = others[0]
    hope = next(t for t in ranked if t[0] == "hope")
    if hope[2] is None or base[2] is None:
        sep = "one seed: no interval"
    else:
        lo_h, hi_h, lo_b, hi_b = hope[1] - hope[2], hope[1] + hope[2], base[1] - base[2], base[1] + base[2]
        sep = "the 95% intervals overlap" if lo_h <= hi_b and lo_b <= hi_h else "the 95% intervals do not overlap"
    at = "" if chance is None else f"; chance is {chance * scale:.1f}{unit}"
    return (f"- {name}: HOPE {hope[1] * scale:.1f}{unit} is {pos} of {len(ranked)} (diagnostic variants left out); "
            f"the best baseline is {base[0]} at {base[1] * scale:.1f}{unit} ({sep}{at}).")


def write(results, meta: dict, g: Grid, path: str) -> str:
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(path))[0]
    d = gather(results, g)
    vs, seeds = d["variants"], d["seeds"]
    with open(os.path.join(out_dir, f"{stem}.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "summary": {k: d[k] for k in ("mqar", "classes", "params", "times")}}, f)
    L = [f"# Evidence that the memory learns: recall, passkey past the training length, continual classes ({g.name} "
         f"grid)", ""]
    L += [f"{len(results)} jobs ({len(vs)} variants × {len(seeds)} seeds {seeds}), made by (a job is reused when "
          f"its budgets, flags and seed are unchanged):", ""]
    L += _table(["command", "started", "jobs run / reused", "wall (min)", "load average before → after"],
                [[f"`{h['command']}`", h["started"], f"{h['jobs_run']} / {h['jobs_reused']}",
                  f"{h['wall_seconds'] / 60:.1f} (`--jobs {h['jobs']}`, {h['cpus']} CPU cores)",
                  f"{h['load_before']} → {h['load_after']}"] for h in meta["history"]])
    L += ["", "Load averages (1, 5, 15 min, as `uptime` prints them) above the job count mean other work shared the "
          f"machine. Report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    L += ["Every number is the mean over seeds ± the half-width of its 95% Student-t interval. Path: shards written "
          "by the writer tools/preprocess_data.py uses → `hope_megatron.train` (CPU, gloo, one process per job) → "
          "`checkpoints_convert/convert_to_torch.py` → the plain-PyTorch model (`hope_megatron.inference`), "
          "passkey through `hope_megatron.eval.niah`'s prompt builder, streaming and memory probe, test-time CMS "
          "through `hope_megatron/inference/cms_stream.py`.", ""]
    L += _setup(d, g, meta)
    L += _mqar(d, g, out_dir, stem)
    L += _passkey(d, g, out_dir, stem)
    L += _classes(d, g, out_dir, stem)
    L += _clip(d, g, out_dir, stem)
    L += ["## Findings computed from the numbers above", ""]
    first = g.mqar_eval_lengths[0]
    L.append(_compare(f"MQAR at {first} tokens, mean over pairs",
                      {v: [float(np.mean(x)) for x in zip(*[d["mqar"][v][k] for k in d["mqar"][v]
                                                             if k.startswith(f"{first}/")])] for v in vs},
                      chance=1 / g.mqar_kv))
    for n in (g.passkey_lengths[0], g.passkey_lengths[-1]):
        ran = {v: d["passkey"][v][n]["digits"] for v in vs if d["passkey"][v][n]["digits"][0] is not None}
        L.append(_compare(f"passkey digits right at {n} tokens" + (" (the training length)" if n == g.passkey.seq
                                                                   else ""), ran, chance=0.1))
    L.append(_compare("continual: final mean accuracy over all tasks", {v: d["classes"][v]["final_acc"] for v in vs},
                      chance=1 / 8))
    L.append(_compare("continual: average forgetting (lower is better)", {v: d["classes"][v]["forgetting"] for v in vs},
                      higher=False, scale=100.0, unit=" points"))
    L.append("")
    if g.name == "default" and os.path.isfile(DISCUSSION):
        L += [open(DISCUSSION, encoding="utf-8").read().rstrip(), ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")
    return path


def _setup(d, g: Grid, meta) -> List[str]:
    L = ["## Set-up", ""]
    b = {"MQAR": g.mqar, "passkey": g.passkey, f"classes (each of {g.classes_tasks} tasks)": g.classes}
    L.append("Shape shared by every variant: 2 layers, D = 64, 4 heads (memory heads 4 × 16), untied embeddings, "
             "RMSNorm, SwiGLU; AdamW (β 0.9/0.95, weight decay 0.1, gradient clip 1.0), the same data and tokens "
             "for every variant of a seed. Budgets: " + "; ".join(
                 f"{k}: {t.iters} iterations × {t.batch} × {t.seq} tokens = {t.tokens() / 1e6:.2f}M tokens, LR "
                 f"{t.lr:g}" for k, t in b.items()) + f". SWA window {g.swa_window} tokens.")
    L.append("")
    rows = []
    hope = d["params"].get("hope", {}).get("mqar")
    for v in d["variants"]:
        p = d["params"][v]
        diff = f"{100 * (p['mqar'] - hope) / hope:+.2f}%" if hope else "–"
        rows.append([f"`{v}`", VARIANTS[v][1], meta["widths"][v], f"{p['mqar']:,}", diff, f"{p['passkey']:,}",
                     f"{p['classes']:,}", fmt(d["times"][v], 1 / 60, 1)])
    L += _table(["variant", "what", "MLP / CMS-level width", "parameters (MQAR)", "vs hope", "(passkey)",
                 "(classes)", "job minutes"], rows)
    L += ["", "Parameters as the training log prints them (the vocabularies differ by task; the embedding tables are "
          "the same for every variant of a task). Widths are chosen so the non-embedding counts match HOPE's.", ""]
    return L


def _mqar(d, g: Grid, out_dir, stem) -> List[str]:
    from benchmarks.evidence.shards import mqar_spec

    vs = d["variants"]
    L = ["## 1. Multi-query associative recall", "",
         f"Instances `k1 v1 … kN vN` then the N queries `kj vj` (every key once, shuffled), {g.mqar_kv} keys and "
         f"{g.mqar_kv} values, packed back to back into sequences (later instances rebind the keys). Trained on "
         f"{g.mqar.seq}-token sequences with N ∈ {g.mqar_train_pairs}; scored on {g.mqar_eval_sequences} fresh "
         f"sequences per cell: the greedy prediction at each query key must be its current value (chance "
         f"1/{g.mqar_kv} = {1 / g.mqar_kv:.3f}). Lengths above {g.mqar.seq} and pairs above "
         f"{max(g.mqar_train_pairs)} are beyond training.", ""]
    for n in g.mqar_eval_lengths:
        pairs = [p for p in g.mqar_eval_pairs if f"{n}/{p}" in d["mqar"][vs[0]]]
        L += [f"Sequence length {n}:", ""]
        L += _table(["variant"] + [f"N = {p}" for p in pairs],
                    [[f"`{v}`"] + [fmt(d["mqar"][v][f"{n}/{p}"], 100, 1) for p in pairs] for v in vs])
        L.append("")
    first, mid = g.mqar_eval_lengths[0], g.mqar_eval_pairs[min(1, len(g.mqar_eval_pairs) - 1)]
    pairs = [p for p in g.mqar_eval_pairs if f"{first}/{p}" in d["mqar"][vs[0]]]
    lengths = [n for n in g.mqar_eval_lengths if f"{n}/{mid}" in d["mqar"][vs[0]]]
    png = figures.mqar(os.path.join(out_dir, f"{stem}_mqar.png"), pairs,
                       {v: [d["mqar"][v][f"{first}/{p}"] for p in pairs] for v in vs}, first, lengths,
                       {v: [d["mqar"][v][f"{n}/{mid}"] for n in lengths] for v in vs}, mid, 1 / mqar_spec(g).values)
    L += [f"![MQAR accuracy]({os.path.basename(png)})", ""]
    return L


def _passkey(d, g: Grid, out_dir, stem) -> List[str]:
    vs = d["variants"]
    ns = g.passkey_lengths
    L = ["## 2. Passkey retrieval past the training length", "",
         f"A repeated 12-token filler sentence, the needle `PK d1 d2 d3 d4 d5 END` (5 distinct digits of 10) at "
         f"depth {g.passkey_depths} of the filler, then the question `Q PK` (like eval.niah's \"... The pass key "
         f"is\", it ends with the needle's marker); the model greedily continues with 5 tokens. Trained on "
         f"{g.passkey.seq}-token prompts (needle anywhere, loss on every token); evaluated with "
         f"`hope_megatron.eval.niah.build_prompt` (exact lengths) and the streamed greedy continuation "
         f"`niah.run_trial` uses ({g.passkey_segment}-token segments, carried state), {g.passkey_trials} prompt(s) "
         f"per depth and seed. Exact recall needs all 5 digits (chance 3e-5); \"digits right\" is the share of the "
         f"5 positions right (chance ~0.1). Full attention is run up to {g.passkey_attention_max} tokens (its time "
         f"grows as L² on a CPU; \"not run\" beyond), sliding-window attention and the memory variants at every "
         f"length.", ""]

    def cell(v, n, key):
        c = d["passkey"][v][n]
        return "not run" if c["not_run"] and c[key][0] is None else fmt(c[key], 100, 0)

    L += ["Digits right (%):", ""]
    L += _table(["variant"] + [_len(n) for n in ns], [[f"`{v}`"] + [cell(v, n, "digits") for n in ns] for v in vs])
    L += ["", "Exact recall (%):", ""]
    L += _table(["variant"] + [_len(n) for n in ns], [[f"`{v}`"] + [cell(v, n, "recall") for n in ns] for v in vs])
    L += ["", "Peak memory while reading the prompt (MiB above the start, first seed, one trial per length; "
          "`niah.peak_alloc_bytes`):", ""]
    L += _table(["variant"] + [_len(n) for n in ns],
                [[f"`{v}`"] + [f"{d['passkey'][v][n]['peak'][0]:.1f}" if d["passkey"][v][n]["peak"] else "–"
                               for n in ns] for v in vs])
    png = figures.passkey(os.path.join(out_dir, f"{stem}_passkey.png"), ns,
                          {v: [d["passkey"][v][n]["recall"] for n in ns] for v in vs},
                          {v: [d["passkey"][v][n]["digits"] for n in ns] for v in vs},
                          {v: [d["passkey"][v][n]["peak"] for n in ns] for v in vs}, g.passkey.seq)
    L += ["", f"![passkey recall and memory]({os.path.basename(png)})", ""]
    return L


def _len(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def _classes(d, g: Grid, out_dir, stem) -> List[str]:
    vs, T = d["variants"], g.classes_tasks
    L = ["## 3. Continual stress test: permuted classes", "",
         f"{T} tasks, each the same 8 classes (prototypes of 6 of 48 feature tokens, 20% of tokens replaced by "
         f"noise) read through its own permutation of the feature vocabulary; an example is `x1..x6 SEP label`, "
         f"8 examples per {g.classes.seq}-token document. **Training**: one run that switches task every "
         f"{g.classes.iters} iterations (each stage resumes the checkpoint: optimizer, CMS clocks and accumulators "
         f"carried; constant LR after warm-up); after each stage the checkpoint is converted and every task scored "
         f"on {g.classes_eval_examples} held-out examples (argmax over the 8 label tokens at SEP; chance 12.5%). "
         f"Average forgetting = mean over tasks j < {T - 1} of (best accuracy on j at any earlier stage − final "
         f"accuracy on j), `hope_megatron.eval.continual.forgetting` on 1 − accuracy. **Test-time CMS**: the "
         f"stage-0 model streams {g.ttc_stream_tokens} tokens of each later task through `TestTimeCMS` "
         f"(predict-then-learn, gradient into the CMS levels only; periods {g.ttc_periods} tokens, LR {g.ttc_lr}, "
         f"clip 1.0; variants without CMS adapt all their MLPs as one level).", ""]
    rows = []
    for v in vs:
        c = d["classes"][v]
        rows.append([f"`{v}`", "yes" if v in CMS_VARIANTS else "no", fmt(c["final_acc"], 100, 1),
                     fmt(c["forgetting"], 100, 1), fmt([m[-1][0] for m in c["matrix"]], 100, 1),
                     fmt(c["ttc_forgetting"], 100, 1), fmt(c["ttc_new"], 100, 1),
                     fmt([m[0][1] if len(m[0]) > 1 else None for m in c["ttc_matrix"]], 100, 1)])
    L += _table(["variant", "CMS levels", "final mean accuracy (%)", "average forgetting (points)",
                 "task 0 at the end (%)", "test-time CMS: forgetting (points)",
                 "test-time CMS: accuracy on the task just streamed (%)", "…the same task before streaming (%)"], rows)
    L += ["", "Accuracy matrices (mean over seeds; row = after training stage, column = task):", ""]
    for v in vs:
        m = np.mean(np.asarray(d["classes"][v]["matrix"], dtype=float), axis=0)
        L.append(f"- `{v}`: " + " / ".join("[" + ", ".join(f"{100 * x:.0f}" for x in row) + "]" for row in m))
    stages = list(range(T))

    def series(key, fn):
        return {v: [[fn(m, s) for m in d["classes"][v][key]] for s in stages] for v in vs}

    png = figures.forgetting(os.path.join(out_dir, f"{stem}_continual.png"), stages,
                             series("matrix", lambda m, s: m[s][0]),
                             series("matrix", lambda m, s: float(np.mean(m[s][:s + 1]))),
                             series("ttc_matrix", lambda m, s: m[s][0]),
                             series("ttc_matrix", lambda m, s: m[s][s] if s else None), 1 / 8)
    L += ["", f"![forgetting curves]({os.path.basename(png)})", ""]
    return L


def _clip(d, g: Grid, out_dir, stem) -> List[str]:
    vs = [v for v in d["variants"] if v in MEMORY_VARIANTS]
    L = ["## 4. The inner clip", "",
         "Share of (memory, head, sequence, chunk) writes whose change the inner clip (0.3, Frobenius) scaled down, "
         "over the last log interval of each training run, as the training log prints it (`inner clip hits`); the "
         "attention variants have no inner loop.", ""]
    L += _table(["variant", "MQAR", "passkey", "classes (last stage)", "mean scale (MQAR)"],
                [[f"`{v}`", fmt(d["clip"][v]["mqar"], 100, 1), fmt(d["clip"][v]["passkey"], 100, 1),
                  fmt(d["clip"][v]["classes"], 100, 1), fmt(d["clip"][v]["scale"], 1, 3)] for v in vs])
    if vs:
        png = figures.clip(os.path.join(out_dir, f"{stem}_clip.png"), {v: d["clip"][v]["curve"] for v in vs},
                           {t: {v: d["clip"][v][t] for v in vs} for t in ("mqar", "passkey", "classes")})
        L += ["", f"![inner clip hit rate]({os.path.basename(png)})", ""]
    return L
