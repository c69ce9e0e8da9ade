"""`python benchmarks/evidence/run.py --quick` end to end (issue 18): shards -> hope_megatron.train -> convert_to_torch
-> the evaluations -> the markdown report with its figures. The pipeline, not the science: tiny budgets, 2 variants
x 2 seeds; what it asserts is that every stage ran for every job and produced numbers of the right kind and shape."""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quick_grid_runs_end_to_end(tmp_path):
    out = tmp_path / "evidence"
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "benchmarks/evidence/run.py", "--quick", "--output-dir", str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    report = (out / "evidence.md").read_text()
    for png in ("mqar", "passkey", "continual", "clip"):
        assert (out / f"evidence_{png}.png").stat().st_size > 10_000 and f"(evidence_{png}.png)" in report
    # the invocation that ran the jobs, its wall time and the machine's load before and after
    assert re.search(r"\| `python benchmarks/evidence/run.py --quick --output-dir \S+` \| [\d: UTC-]+ \| 4 / 0 \| "
                     r"[\d.]+ \(`--jobs 2`, \d+ CPU cores\) \| [\d.]+ [\d.]+ [\d.]+ → [\d.]+ [\d.]+ [\d.]+ \|", report), \
        report[:1500]

    results = {(j["variant"], j["seed"]): j for j in
               (json.load(open(out / "results" / f"{v}_seed{s}.json")) for v in ("hope", "transformer") for s in (1, 2))}
    for (variant, seed), j in results.items():
        # the train log was parsed: a loss per logged iteration, the parameter count, clip stats only with a memory
        mq = j["mqar"]
        assert mq["train"]["iteration"] == [1, 2, 3] and all(0 < x < 10 for x in mq["train"]["loss"])
        clip = mq["train"]["clip_hit_rate"]
        assert all(0 <= c <= 1 for c in clip) if variant == "hope" else clip == [None] * 3
        assert set(mq["accuracy"]) == {"32/2", "32/4", "64/2", "64/4"}
        assert all(len(v) == 4 and all(0 <= a <= 1 for a in v) for v in mq["accuracy"].values())
        cells = {c["length"]: c for c in j["passkey"]["cells"]}
        assert sorted(cells) == [32, 256, 1024]
        # full attention beyond --passkey-attention-max is marked, not run; the memory variant streams every length
        assert [cells[n]["status"] for n in (32, 256, 1024)] == (["run", "run", "run"] if variant == "hope" else
                                                                  ["run", "run", "not run"])
        assert ("peak_bytes" in cells[32]) == (seed == 1)  # memory measured on the first seed only
        if seed == 1:
            assert all(cells[n]["peak_bytes"] > 0 for n in cells if cells[n]["status"] == "run")
        cl = j["classes"]
        assert len(cl["train"]) == 2 and [c["iteration"][-1] for c in cl["train"]] == [3, 6]  # the run resumed
        assert len(cl["matrix"]) == 2 and all(len(row) == 2 and all(0 <= a <= 1 for a in row) for row in cl["matrix"])
        f = cl["forgetting"]["forgetting"][0]
        assert abs(f - (max(cl["matrix"][0][0], 0) - cl["matrix"][1][0])) < 1e-9  # best earlier - final, task 0
        ttc = cl["test_time_cms"]
        assert ttc["levels"] == (4 if variant == "hope" else 1) and len(ttc["matrix"]) == 2
        assert sum(ttc["updates"].values()) >= 1  # the stream closed at least one period and stepped a level
    # both variants of a seed trained on the same shards, with the same parameter budget (matched widths)
    p = {v: results[(v, 1)]["mqar"]["train"]["parameters"] for v in ("hope", "transformer")}
    assert abs(p["hope"] - p["transformer"]) / p["hope"] < 0.005
    assert "| `hope` |" in report and "| `transformer` |" in report and " ± " in report
