"""gpu_suite: the Markdown report, reports/gpu/<device>-<date>.md (a new file per run; never overwrites one)."""

from __future__ import annotations

import os
import re
import time

SECTIONS = ("## Environment", "## Memory op forward+backward", "## Training: HOPE vs a parameter-matched transformer",
            "## Notes")
OP_TARGET, RATIO_TARGET = 20.0, 0.5  # issue 14: triton >= 20x chunked (pilot); HOPE/transformer >= 0.5 at seq 4096


def slug(device: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"


def _path(out_dir: str, device: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    stem = f"{slug(device)}-{time.strftime('%Y-%m-%d')}"
    path, n = os.path.join(out_dir, stem + ".md"), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(out_dir, f"{stem}-{n}.md")
    return path


def _f(x, fmt="{:.1f}", none="—"):
    return none if x is None else fmt.format(x)


def op_lines(ops, smoke: bool = False) -> list:
    rows = ["| shape (B, H, L, d_h, C) | dtype | impl | fwd+bwd | tokens/s | chunked / this | first call | timed calls "
            "| peak | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    chunked = {(r["shape"], r["dtype"]): r for r in ops if r["impl"] == "chunked" and "median_s" in r}
    for r in ops:
        dims = f"{r['shape']} {tuple(r['dims'])}"
        if "median_s" not in r:
            rows.append(f"| {dims} | {r['dtype']} | {r['impl']} | — | — | — | — | — | — | "
                        f"{r.get('skipped') or r.get('error')} |")
            continue
        ref = chunked.get((r["shape"], r["dtype"]))
        note = []
        if r.get("fell_back"):
            note.append(f"**no fused kernel ran: the chunked form** ({r['fell_back']})")
        elif r["impl"] == "triton":
            note.append(f"launches per call {sum(r['launches'].values())} ({', '.join(sorted(r['launches']))})")
        if not r.get("finite", True):
            note.append("non-finite output")
        rows.append(f"| {dims} | {r['dtype']} | {r['impl']} | {r['median_s'] * 1e3:.1f} ms | {r['tokens_per_s']:,.0f} "
                    f"| {_f(ref['median_s'] / r['median_s'] if ref else None, '{:.2f}x')} | {r['first_s']:.2f} s | "
                    f"{r['reps']} | {_f(r.get('peak_gib'), '{:.1f} GiB')} | {'; '.join(note)} |")
    lines = rows + [""]
    for r in ops:
        ref = chunked.get((r["shape"], r["dtype"]))
        if r["impl"] == "triton" and r["shape"] == "pilot" and ref and "median_s" in r:
            if r.get("fell_back"):
                lines.append(f"- triton vs chunked at the pilot shape, {r['dtype']}: not measured (the triton path ran "
                             f"the chunked form).")
            else:
                x = ref["median_s"] / r["median_s"]
                verdict = "interpreter on CPU: no speed claim" if smoke else \
                    f"{'meets' if x >= OP_TARGET else 'misses'} the target >= {OP_TARGET:g}x"
                lines.append(f"- triton vs chunked at the pilot shape, {r['dtype']}: **{x:.2f}x** ({verdict}).")
    return lines


def train_lines(train, smoke: bool = False) -> list:
    rows = ["| seq | model | parameters | micro-batch | tokens/s | MFU | s / iteration | iterations (timed) | "
            "peak memory (estimate) | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in train:
        model = r["variant"] + (f" (ffn {r['ffn']})" if r.get("ffn") else "")
        note = "; ".join(x for x in (r.get("stopped"), r.get("error")) if x)
        rows.append(f"| {r['seq']} | {model} | {r['params'] / 1e6:.1f}M | {r['micro']} | "
                    f"{_f(r.get('tokens_per_s'), '{:,.0f}')} | {_f(r.get('mfu'), '{:.3f}')} | "
                    f"{_f(r.get('seconds_per_iteration'), '{:.3f}')} | {r.get('iterations', 0)} ({r.get('timed', 0)}) "
                    f"| {_f(r.get('peak_gib'), '{:.1f} GiB')} ({_f(r.get('estimate_gib'), '{:.1f} GiB')}) | {note} |")
    lines = rows + [""]
    by = {(r["variant"], r["seq"]): r for r in train}
    for seq in sorted({r["seq"] for r in train}):
        h, t = by.get(("hope", seq), {}), by.get(("transformer", seq), {})
        if h.get("tokens_per_s") and t.get("tokens_per_s"):
            x = h["tokens_per_s"] / t["tokens_per_s"]
            target = f" (target >= {RATIO_TARGET} at seq 4096: {'met' if x >= RATIO_TARGET else 'missed'})" \
                if seq == 4096 and not smoke else ""
            lines.append(f"- HOPE / transformer tokens/s at seq {seq}: **{x:.3f}**{target}.")
        else:
            lines.append(f"- HOPE / transformer tokens/s at seq {seq}: not measured (see the rows above).")
    if train and not train[0].get("peak_flops"):
        lines.append("- MFU: not reported (unknown device peak; pass --peak-flops).")
    elif train:
        lines.append(f"- MFU against {train[0]['peak_flops']:.3g} FLOP/s (dense BF16 peak of the device); model FLOPs "
                     f"from hope_megatron/training/flops.py.")
    return lines


def write_report(out_dir, info, ops, train, notes, fallbacks, smoke, path=None) -> str:
    """Write (or rewrite, when `path` is this run's own file) the report; returns its path."""
    path = path or _path(out_dir, info["device"])
    title = "CPU smoke run (no GPU figures)" if smoke else info["device"]
    lines = [f"# gpu_suite: {title}, {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"`{info['command']}` at commit {info['commit']}, {info['wall_s']:.0f} s. "
             + ("Tiny shapes on CPU under Triton's interpreter: these numbers check the suite, not any speed."
                if smoke else "One GPU; every figure below was measured in this run."), "",
             SECTIONS[0], "", "| item | value |", "|---|---|",
             f"| device | {info['device']} ({info['device_note']}) |",
             f"| python | {info['python']} |", f"| torch | {info['torch']} (CUDA {info['cuda']}) |",
             f"| triton | {info['triton']} (TRITON_INTERPRET={info['triton_interpret']}) |",
             f"| megatron-core | {info['megatron.core']} |", f"| transformer-engine | {info['transformer_engine']} |",
             "", SECTIONS[1], "",
             "Pilot op settings (HOPE defaults, inner clip 0.3, update dropout 0.2), training, return_state; median of "
             "the timed calls after one untimed call (Triton compiles there; the naive row is its one call).", ""]
    lines += op_lines(ops, smoke) if ops else ["No case ran (see Notes)."]
    lines += ["", SECTIONS[2], "",
              "configs/hope/pilot.yaml" if not smoke else "configs/hope/tiny.yaml (smoke)",
              "", "Through hope_megatron.training.loop.pretrain on mock tokens, one device, local spec, micro-batch = "
              "global batch; tokens/s from the median timed iteration after the warm-up.", ""]
    lines += train_lines(train, smoke) if train else ["No case ran (see Notes)."]
    lines += ["", SECTIONS[3], ""]
    lines += [f"- {n}" for n in notes]
    lines += [f"- the triton path fell back to the chunked form: {r}" for r in fallbacks]
    skipped = sorted({r["skipped"] for r in ops if r.get("skipped")})
    lines += [f"- skipped: {s}" for s in skipped]
    if not (notes or fallbacks or skipped):
        lines.append("- nothing skipped, nothing failed.")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
