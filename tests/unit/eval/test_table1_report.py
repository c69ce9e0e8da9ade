"""NL Table 1 from zero-shot results: the LAMBADA (acc, perplexity) and WikiText (word perplexity) columns are filled
whenever lambada_openai / wikitext ran (tools/make_report.py and the zeroshot markdown), Avg covers the accuracy
columns that ran, and columns whose task did not run show "–"."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
RESULTS = {"lambada_openai": {"acc": 0.40, "perplexity": 20.47, "perplexity_stderr": 0.5, "n": 5153},
           "wikitext": {"word_perplexity": 18.25, "byte_perplexity": 1.7, "bits_per_byte": 0.77, "n": 62},
           "piqa": {"acc": 0.69, "acc_norm": 0.70, "acc_stderr": 0.01, "n": 1838},
           "social_iqa": {"acc": 0.45, "n": 1954}}
ROW = "| **this checkpoint** (hope, 786.0M) | 18.25 | 20.47 | 40.00 | 70.00 | – | – | – | – | 45.00 | – | 51.67 |"


def test_table1_values_and_markdown():
    from hope_megatron.eval.paper import table1_markdown, table1_values

    assert table1_values(RESULTS) == {"Wiki ppl": 18.25, "LMB ppl": 20.47, "LMB acc": 40.0, "PIQA": 70.0,
                                      "SIQA": 45.0}
    md = table1_markdown(RESULTS, "hope", 786e6)
    assert ROW in md, md
    # the paper's 760M HOPE row re-averaged over LMB acc, PIQA, SIQA: (39.02 + 70.13 + 40.71) / 3 = 49.95
    assert "| paper 760M/30B HOPE ← | 20.53 | 20.47 | 39.02 | 70.13 | 49.21 |" in md and "| 49.95 |" in md
    assert "Not run: Hella, Wino, ARC-e, ARC-c, BoolQ." in md


def test_make_report_fills_lambada_and_wikitext(tmp_path):
    run = {"checkpoint": "X", "variant": "hope", "layers": 24, "hidden_size": 1024, "iteration": 57221, "time": "t",
           "parameters": 786e6}
    with open(tmp_path / "zs.json", "w") as f:
        json.dump({"kind": "zeroshot", "run": run, "limit": None, "results": RESULTS, "markdown": "old"}, f)
    out = tmp_path / "reports"
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_report.py"), "--inputs", str(tmp_path),
                    "--output", str(out)], check=True, capture_output=True)
    text = (out / "zeroshot.md").read_text()
    assert ROW in text, text
    assert "| wikitext | 62 | word_perplexity | 18.250 | – |" in text
    assert "| lambada_openai | 5153 | perplexity | 20.470 | 0.500 |" in text and "| piqa | 1838 | acc | 69.0 | 1.0 |" in text
    index = (out / "README.md").read_text()
    assert "Wiki ppl 18.2, LMB ppl 20.5, LMB acc 40.0, PIQA 70.0, SIQA 45.0 (n=62/1838/1954/5153 per task)" in index
