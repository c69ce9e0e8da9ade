"""Gather the evaluation JSON files into reports/*.md tables and PNG plots, with the papers' numbers alongside.

    python tools/make_report.py --inputs OUT/eval [more dirs or .json files] --output reports [--title "tiny CPU demo"]

Reads every JSON written by hope_megatron.eval.{perplexity,zeroshot,niah,continual} (by its "kind"), and writes
reports/perplexity.md, zeroshot.md, niah.md (+ niah_heatmap.png), continual.md (+ matrix and curve PNGs) and
reports/README.md (index, run info, what a small model can and cannot show). Paper numbers: hope_math.md §9 (NL Table 1,
Titans Table 2), from hope_megatron/eval/paper.py (pure data). Deviations from the paper are marked with Δ.
Imports no model code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hope_megatron.eval.paper import NIAH_LENGTHS, TABLE1, TITANS_NIAH, VARIANT_ROW, nearest_scale  # noqa: E402


def collect(inputs: List[str]) -> Dict[str, List[dict]]:
    found: Dict[str, List[dict]] = {}
    files = []
    for p in inputs:
        if os.path.isdir(p):
            files += [os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(".json")]
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise SystemExit(f"make_report: {p} is neither a JSON file nor a directory; pass the eval output paths.")
    for f in files:
        with open(f, encoding="utf-8") as fh:
            try:
                obj = json.load(fh)
            except json.JSONDecodeError:
                continue
        if isinstance(obj, dict) and obj.get("kind") in ("perplexity", "zeroshot", "niah", "continual"):
            obj["_file"] = f
            found.setdefault(obj["kind"], []).append(obj)
    return found


def run_line(r: dict) -> str:
    run = r.get("run", {})
    return (f"checkpoint `{run.get('checkpoint')}` (variant {run.get('variant')}, {run.get('layers')} layers, "
            f"D={run.get('hidden_size')}, iteration {run.get('iteration')}), {run.get('time')}; source `{r['_file']}`")


def perplexity_md(results: List[dict]) -> str:
    out = ["# Perplexity", ""]
    for r in results:
        out += [run_line(r), "", "| set | mode | documents | tokens | loss | ppl |", "|---|---|---|---|---|---|"]
        for s in r["results"]:
            out.append(f"| {s['name']} | {s['mode']} | {s['documents']} | {s['tokens']} | {s['loss']:.4f} | "
                       f"{s['ppl']:.2f} |")
        out.append("")
    out += ["Paper (NL Table 1, WikiText ppl): HOPE 760M/30B 20.53, 1.3B/100B 15.11; Titans (LMM) 20.04 / 15.60; "
            "Transformer++ 25.21 / 18.53. \"PG19-like\" and \"Wiki-like\" are this project's substitutes built from "
            "the demo corpus (public-domain books; Wikipedia articles), NOT PG19 or WikiText, and use this model's "
            "tokenizer: their perplexities are not comparable to the paper's numbers."]
    return "\n".join(out) + "\n"


def zeroshot_md(results: List[dict]) -> str:
    out = ["# Zero-shot accuracy (lm-eval, adapter `hope`)", ""]
    for r in results:
        out += [run_line(r), "", r["markdown"], ""]
        scale = r.get("scale") or nearest_scale(r["run"].get("parameters") or 1)
        row = VARIANT_ROW.get(r["run"].get("variant"), "HOPE")
        paper = TABLE1[scale].get(row)
        if paper:
            out.append(f"Δ vs paper {scale} {row} average (their 9 columns): ours are over the tasks run; a model "
                       f"of {(r['run'].get('parameters') or 0) / 1e6:.1f}M parameters trained on a CPU is expected "
                       f"near chance (PIQA 50, Hella 25, Wino 50, ARC-e 25, ARC-c 25, SIQA 33, BoolQ ~62 majority).")
        out.append("")
    return "\n".join(out) + "\n"


def niah_md(results: List[dict], outdir: str) -> str:
    out = ["# Needle in a haystack", ""]
    for k, r in enumerate(results):
        out += [run_line(r), "", f"haystack `{r['haystack']}`, segment {r['segment']} tokens, needles "
                                 f"{', '.join(r['needles'])}", ""]
        lengths = r["lengths"]
        out.append("| needle | depth | " + " | ".join(_fmt_len(n) for n in lengths) + " |")
        out.append("|---|---|" + "---|" * len(lengths))
        for kind in r["needles"]:
            for d in r["depths"]:
                cells = {c["length"]: c for c in r["cells"] if c["needle"] == kind and c["depth"] == d}
                vals = []
                for n in lengths:
                    c = cells.get(n)
                    vals.append("–" if c is None else ("beyond" if c["status"] == "beyond" else
                                                       f"{100 * c['recall']:.0f}"))
                out.append(f"| {kind} | {d:.2f} | " + " | ".join(vals) + " |")
        peaks = [(c["length"], c["peak_bytes"]) for c in r["cells"] if c.get("peak_bytes")]
        if peaks:
            by_len = {}
            for n, b in peaks:
                by_len[n] = max(b, by_len.get(n, 0))
            out += ["", "Peak torch CPU allocation while reading the prompt (MiB): " +
                    ", ".join(f"{_fmt_len(n)} {b / 2**20:.1f}" for n, b in sorted(by_len.items()))]
        png = os.path.join(outdir, f"niah_heatmap{'' if k == 0 else k}.png")
        try:
            from hope_megatron.eval.plots import plot_heatmap  # matplotlib only, no model code

            plot_heatmap(r, png)
            out += ["", f"![recall heatmap]({os.path.basename(png)})"]
        except ImportError:
            out += ["", "(matplotlib missing: no heatmap)"]
        out.append("")
    out += ["Paper (Titans Table 2, S-NIAH %, 2K/4K/8K/16K; models ~760M trained on 30B tokens):", "",
            "| model | passkey | number | word |", "|---|---|---|---|"]
    for name, rows in TITANS_NIAH.items():
        out.append(f"| {name} | " + " | ".join("/".join(f"{v:g}" for v in rows[k]) for k in ("passkey", "number", "word"))
                   + " |")
    out += ["", f"Lengths of the paper's columns: {', '.join(_fmt_len(n) for n in NIAH_LENGTHS)}. NL-arXiv "
            "(secondary, unverified): S-NIAH-1 HOPE 100/100/100 at 4K/8K/16K."]
    return "\n".join(out) + "\n"


def continual_md(results: List[dict], outdir: str) -> str:
    out = ["# Continual learning: forgetting across domain segments", ""]
    for r in results:
        names = r["segments"]
        out += [run_line(r), "", f"mode {r['mode']} ({'checkpoint sequence' if r['mode'] == 'A' else 'test-time CMS stream, hope_math §4.4'}), "
                f"seeds {r['seeds']}", "", "| stage | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for label, row in zip(r["row_labels"], r["matrix"]):
            out.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
        ci = r["average_forgetting_ci"]
        out += ["", "| segment | forgetting F_j | BWT_j |", "|---|---|---|"]
        for n, f, b in zip(names, r["forgetting"], r["bwt"]):
            out.append(f"| {n} | {f:+.4f} | {b:+.4f} |")
        out += ["", f"Average forgetting {r['average_forgetting']:+.4f} (95% bootstrap CI {ci[1]:+.4f} .. {ci[2]:+.4f}); "
                f"per seed {', '.join(f'{x:+.4f}' for x in r['per_seed_average_forgetting'])}. Losses in nats/token; "
                f"F_j > 0 means segment j got worse after later segments."]
        try:
            from hope_megatron.eval.plots import plot_continual

            for p in plot_continual(r, outdir):
                out.append(f"![{os.path.basename(p)}]({os.path.basename(p)})")
        except ImportError:
            out.append("(matplotlib missing: no plots)")
        out.append("")
    out += ["The paper gives no forgetting numbers (NL-arXiv §7 argues qualitatively that knowledge overwritten in fast "
            "CMS levels survives in slow ones); compare HOPE with cms_levels=1 or test-time lr=0 runs."]
    return "\n".join(out) + "\n"


def _fmt_len(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="reports/*.md from the evaluation JSON files.")
    p.add_argument("--inputs", nargs="+", required=True, help="eval output directories or JSON files")
    p.add_argument("--output", default="reports")
    p.add_argument("--title", default="hope_megatron evaluation report")
    p.add_argument("--note", default="", help="a paragraph for the index (e.g. what the run can and cannot show)")
    a = p.parse_args(argv)
    found = collect(a.inputs)
    if not found:
        raise SystemExit(f"make_report: no evaluation JSON (kind perplexity/zeroshot/niah/continual) under {a.inputs}.")
    os.makedirs(a.output, exist_ok=True)
    writers = {"perplexity": lambda r: perplexity_md(r), "zeroshot": lambda r: zeroshot_md(r),
               "niah": lambda r: niah_md(r, a.output), "continual": lambda r: continual_md(r, a.output)}
    index = [f"# {a.title}", ""]
    for kind, res in found.items():
        path = os.path.join(a.output, f"{kind}.md")
        with open(path, "w", encoding="utf-8") as f:
            f.write(writers[kind](res))
        index.append(f"- [{kind}]({kind}.md): {len(res)} result file(s)")
        print(f"wrote {path}")
    if a.note:
        index += ["", a.note]
    with open(os.path.join(a.output, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(index) + "\n")
    print(f"wrote {os.path.join(a.output, 'README.md')}")


if __name__ == "__main__":
    main()
