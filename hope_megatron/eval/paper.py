"""The papers' reference numbers (hope_math.md §9), as data for the reports. Pure data: no model code."""

from __future__ import annotations

TABLE1_COLUMNS = ("Wiki ppl", "LMB ppl", "LMB acc", "PIQA", "Hella", "Wino", "ARC-e", "ARC-c", "SIQA", "BoolQ", "Avg")
# NL Table 1 (NeurIPS camera-ready, primary). Scale label of the first block is illegible; its values fit 340M/15B.
TABLE1 = {
    "340M/15B": {"HOPE": (26.05, 29.38, 35.40, 64.62, 40.11, 51.19, 56.92, 28.49, 38.33, 60.12, 46.90)},
    "760M/30B": {
        "Transformer++": (25.21, 27.64, 35.78, 66.92, 42.19, 51.95, 60.38, 32.46, 39.51, 60.37, 48.69),
        "RetNet": (26.08, 24.45, 34.51, 67.19, 41.63, 52.09, 63.17, 32.78, 38.36, 57.92, 48.46),
        "DeltaNet": (24.37, 24.60, 37.06, 66.93, 41.98, 50.65, 64.87, 31.39, 39.88, 59.02, 48.97),
        "TTT": (24.17, 23.51, 34.74, 67.25, 43.92, 50.99, 64.53, 33.81, 40.16, 59.58, 47.32),
        "Samba*": (20.63, 22.71, 39.72, 69.19, 47.35, 52.01, 66.92, 33.20, 38.98, 61.24, 51.08),
        "Titans (LMM)": (20.04, 21.96, 37.40, 69.28, 48.46, 52.27, 66.31, 35.84, 40.13, 62.76, 51.56),
        "HOPE": (20.53, 20.47, 39.02, 70.13, 49.21, 52.70, 66.89, 36.05, 40.71, 63.29, 52.26),
    },
    "1.3B/100B": {
        "Transformer++": (18.53, 18.32, 42.60, 70.02, 50.23, 53.51, 68.83, 35.10, 40.66, 57.09, 52.25),
        "RetNet": (19.08, 17.27, 40.52, 70.07, 49.16, 54.14, 67.34, 33.78, 40.78, 60.39, 52.02),
        "DeltaNet": (17.71, 16.88, 42.46, 70.72, 50.93, 53.35, 68.47, 35.66, 40.22, 55.29, 52.14),
        "Samba*": (16.13, 13.29, 44.94, 70.94, 53.42, 55.56, 68.81, 36.17, 39.96, 62.11, 54.00),
        "Titans (LMM)": (15.60, 11.41, 49.14, 73.09, 56.31, 59.81, 72.43, 40.82, 42.05, 60.97, 56.82),
        "HOPE": (15.11, 11.63, 50.01, 73.29, 56.84, 60.19, 72.30, 41.24, 42.52, 61.46, 57.23),
    },
}
SCALES = {"340M/15B": 340e6, "760M/30B": 760e6, "1.3B/100B": 1.3e9}
VARIANT_ROW = {"hope": "HOPE", "hope_attention": "HOPE", "titans": "Titans (LMM)", "transformer": "Transformer++",
               "deltanet": "DeltaNet", "swa": "Transformer++"}
# Titans Table 2: S-NIAH accuracy (%) at 2K/4K/8K/16K (primary)
NIAH_LENGTHS = (2048, 4096, 8192, 16384)
TITANS_NIAH = {
    "TTT": {"passkey": (98.4, 98.8, 98.0, 88.4), "number": (60.2, 36.6, 10.2, 4.4), "word": (78.8, 28.0, 4.4, 0.0)},
    "Mamba2": {"passkey": (98.6, 61.4, 31.0, 5.4), "number": (98.4, 55.8, 14.2, 0.0), "word": (42.2, 4.2, 0.0, 0.0)},
    "DeltaNet": {"passkey": (96.8, 98.8, 98.6, 71.4), "number": (47.2, 15.4, 12.8, 5.4), "word": (46.2, 20.0, 1.6, 0.0)},
    "Titans (LMM)": {"passkey": (99.8, 98.4, 98.2, 96.2), "number": (100, 99.8, 93.4, 80.2),
                     "word": (90.4, 89.4, 85.8, 80.6)},
}
# NL-arXiv (secondary, unverified): S-NIAH-1 HOPE 100/100/100 at 4K/8K/16K, Transformer 88.6/76.4/79.8.


def nearest_scale(n_params: float) -> str:
    """The Table 1 block whose model size is nearest (log scale) to n_params."""
    import math

    return min(SCALES, key=lambda s: abs(math.log(SCALES[s]) - math.log(max(n_params, 1.0))))


# Table 1 column <- (lm-eval task, metric, scale): acc_norm where lm-eval reports it (PIQA, Hella, ARC), acc otherwise;
# LAMBADA (lambada_openai) acc and perplexity, WikiText word perplexity. SIQA is `siqa` locally, `social_iqa` in lm-eval.
TABLE1_SOURCES = {
    "Wiki ppl": (("wikitext", "word_perplexity", 1.0),),
    "LMB ppl": (("lambada_openai", "perplexity", 1.0),),
    "LMB acc": (("lambada_openai", "acc", 100.0),),
    "PIQA": (("piqa", "acc_norm", 100.0),), "Hella": (("hellaswag", "acc_norm", 100.0),),
    "Wino": (("winogrande", "acc", 100.0),), "ARC-e": (("arc_easy", "acc_norm", 100.0),),
    "ARC-c": (("arc_challenge", "acc_norm", 100.0),),
    "SIQA": (("siqa", "acc", 100.0), ("social_iqa", "acc", 100.0)), "BoolQ": (("boolq", "acc", 100.0),),
}
PPL_COLUMNS = ("Wiki ppl", "LMB ppl")  # lower is better; the paper's Avg is the mean of the other (accuracy) columns


def table1_values(results: dict) -> dict:
    """{Table 1 column: our number} for every column whose task ran ({task: {metric: value}} as zeroshot writes)."""
    out = {}
    for col, sources in TABLE1_SOURCES.items():
        for task, metric, scale in sources:
            if metric in results.get(task, {}):
                out[col] = scale * results[task][metric]
                break
    return out


def table1_markdown(results: dict, variant: str, n_params: int, note: str = "") -> str:
    """Our row of NL Table 1 (every column; "–" where its task did not run) above the paper's rows at the nearest
    scale. Avg is over the accuracy columns this run filled, and the paper rows' Avg over the same columns."""
    scale = nearest_scale(n_params)
    cols = list(TABLE1_COLUMNS[:-1])
    ours = table1_values(results)
    acc_cols = [c for c in cols if c in ours and c not in PPL_COLUMNS]
    avg = lambda vals: sum(vals[c] for c in acc_cols) / len(acc_cols) if acc_cols else float("nan")  # noqa: E731
    lines = [f"| model | {' | '.join(cols)} | Avg |", "|---|" + "---|" * (len(cols) + 1),
             f"| **this checkpoint** ({variant}, {n_params / 1e6:.1f}M) | "
             + " | ".join(f"{ours[c]:.2f}" if c in ours else "–" for c in cols) + f" | {avg(ours):.2f} |"]
    for name, vals in TABLE1[scale].items():
        paper = dict(zip(TABLE1_COLUMNS, vals))
        mark = " ←" if name == VARIANT_ROW.get(variant) else ""
        lines.append(f"| paper {scale} {name}{mark} | {' | '.join(f'{paper[c]:.2f}' for c in cols)} | {avg(paper):.2f} |")
    missing = [c for c in cols if c not in ours]
    text = "\n".join(lines)
    text += (f"\n\nColumns: lm-eval zero-shot; acc_norm for PIQA/Hella/ARC-e/ARC-c, acc otherwise; LMB = lambada_openai "
             f"(acc, perplexity), Wiki ppl = wikitext word perplexity. Avg is the mean of the accuracy columns this run "
             f"filled ({', '.join(acc_cols) or 'none'}); the paper's Avg covers all eight, so the paper rows here are "
             f"re-averaged over the same columns. "
             + (f"Not run: {', '.join(missing)}. " if missing else "") + f"Paper rows: NL Table 1 at the nearest scale "
             f"({scale}). {note}")
    return text.rstrip()
