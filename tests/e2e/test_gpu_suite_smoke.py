"""benchmarks/gpu_suite --cpu-smoke, the way `make test` and a user run it: tiny shapes on CPU under Triton's
interpreter, both sections, and a report that holds every section with measured rows (benchmarks/gpu_suite/README.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cpu_smoke_writes_every_section(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_suite"), "--cpu-smoke", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = sorted(p for p in os.listdir(tmp_path) if p.endswith(".md"))
    assert len(reports) == 1 and re.fullmatch(r"cpu-\d{4}-\d{2}-\d{2}\.md", reports[0]), reports
    text = (tmp_path / reports[0]).read_text()
    for section in ("## Environment", "## Memory op forward+backward",
                    "## Training: HOPE vs a parameter-matched transformer", "## Notes"):
        assert section in text, section
    assert "CPU smoke run (no GPU figures)" in text and "TRITON_INTERPRET=1" in text
    # section 1: every impl at the pilot shape has a measured row; naive is skipped at mid, and says so
    for impl in ("triton", "chunked", "naive"):
        rows = re.findall(rf"^\| pilot \(1, 1, 16, 16, 8\) \| (?:bf16|fp32) \| {impl} \| ([\d.]+) ms \| ([\d,]+) \|",
                          text, flags=re.M)
        assert len(rows) == 2 and all(float(ms) > 0 for ms, _ in rows), (impl, rows)
    assert re.search(r"^\| mid .* \| naive \| — .*skipped to keep the suite inside 8 minutes \|$", text, flags=re.M)
    # a triton row that ran the chunked form is marked so, never presented as the kernel
    for line in re.findall(r"^\| \w+ \(.*\) \| \w+ \| triton \|.*$", text, flags=re.M):
        assert ("no fused kernel ran" in line) != ("launches " in line), line
    # section 2: HOPE and the matched transformer at both lengths, with tokens/s and a ratio
    for seq in (64, 128):
        for model in ("hope", r"transformer \(ffn \d+\)"):
            m = re.search(rf"^\| {seq} \| {model} \| ([\d.]+)M \| \d+ \| ([\d,]+) \|", text, flags=re.M)
            assert m and float(m.group(2).replace(",", "")) > 0, (seq, model)
        assert re.search(rf"HOPE / transformer tokens/s at seq {seq}: \*\*[\d.]+\*\*", text)
    params = [float(x) for x in re.findall(r"^\| 64 \| \S+(?: \(ffn \d+\))? \| ([\d.]+)M", text, flags=re.M)]
    assert len(params) == 2 and abs(params[0] - params[1]) / params[0] < 0.02  # parameter-matched
