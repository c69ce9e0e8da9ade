"""Peak GPU memory per rank of a training run, estimated before launch (the launchers' preflight, docs/training.md).

    python -m hope_megatron.training.memory_estimate [--world-size N] [--gpu-memory-gb 80] -- <hope-train flags>

The flags after `--` are parsed by the training CLI itself (YAML config, then flags), so the estimate describes the
run those flags start. Nothing is built and no GPU is needed. Per rank, for the worst pipeline stage (stage 0 keeps
the most micro-batches in flight; the last stage holds the logits), the estimate adds up:

  memory op          bytes the Titans memory op keeps for its backward, per layer and sequence: on CUDA with
                     --titans-impl auto|triton the fused kernels' formula (ops.triton.saved_bytes); with chunked or
                     naive, what the op leaves allocated for its backward, measured on CPU at two short lengths and
                     extrapolated linearly (training/saved_memory.py; benchmarks/bench_saved_memory.py)
  other activations  every other tensor autograd keeps, itemised per token (norm inputs, in_proj, conv, gate, CMS
                     MLPs, attention, logits); /TP for head- or width-split tensors, /TP for the rest only with
                     sequence parallelism; --recompute-granularity full keeps only each recompute unit's input
  weights, gradients parameters on the rank (embedding on the first stage, output layer on the last); the DDP
                     gradient buffer is fp32 (grad_reduce_in_fp32)
  optimizer state    AdamW moments + fp32 main weights (BF16) and the CMS accumulators, /DP with the distributed
                     optimizer
  backward working   one layer's activations of one micro-batch (its gradients exist while it runs backward)
  runtime            CUDA context, cuBLAS/NCCL workspaces and allocator slack: 2 GiB + 10% of the above

It is an estimate (an itemised count of what autograd keeps, not a measurement on a GPU): read it as "fits with
margin" or "does not fit", not to the GiB. Exit codes: 0 fits, 3 does not fit (one sentence on stderr naming the fix),
2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Dict, List, Optional

GIB = float(2 ** 30)
RUNTIME_FIXED = 2 * GIB
RUNTIME_FRACTION = 0.10


@dataclasses.dataclass
class Layout:
    tp: int
    pp: int
    dp: int
    vpp: Optional[int]          # model chunks per pipeline stage (interleaved 1F1B), None = plain 1F1B
    micro: int
    num_micro: int              # micro-batches per iteration per DP rank
    seq: int
    sp: bool
    dist_opt: bool
    recompute: Optional[str]    # None | "full" | "selective"
    recompute_method: Optional[str]
    recompute_num_layers: Optional[int]
    bf16: bool
    fp8: bool
    transformer_impl: str
    on_cuda: bool = True        # the run is on GPUs (titans_impl auto -> triton)


# --------------------------------------------------------------------------------------------------- memory op
def op_impl_on_cuda(op_cfg) -> str:
    """The form titans_memory runs on CUDA (auto = triton when Triton imports; the GPU images ship it)."""
    return "triton" if op_cfg.impl in ("auto", "triton") else op_cfg.impl


def op_bytes(op_cfg, layout: Layout, heads_local: int, head_dim: int, compare: bool = False):
    """(bytes per micro-batch and layer, form, the chunked form's bytes when `compare` or the form is chunked)."""
    from hope_megatron.ops import triton as op_triton
    from hope_megatron.training.saved_memory import measured_op_bytes

    a = 2 if layout.bf16 else 4
    impl = op_impl_on_cuda(op_cfg) if layout.on_cuda else ("chunked" if op_cfg.impl in ("auto", "triton")
                                                           else op_cfg.impl)
    chunked = None
    if compare or impl == "chunked":
        chunked = measured_op_bytes(op_cfg, "chunked", layout.micro, heads_local, layout.seq, head_dim, a)
    if impl == "triton":
        return op_triton.saved_bytes(op_cfg, layout.micro, heads_local, layout.seq, head_dim, input_bytes=a), \
            "fused Triton kernels", chunked
    if impl == "chunked":
        return chunked, "chunked form" + (" with recompute_chunks" if op_cfg.recompute_chunks else ""), chunked
    return measured_op_bytes(op_cfg, impl, layout.micro, heads_local, layout.seq, head_dim, a), f"{impl} form", \
        chunked


# ------------------------------------------------------------------------------------------- other activations
def _t_sp(layout: Layout) -> int:
    return layout.tp if layout.sp else 1


def mixer_token_bytes(config, op_cfg, layout: Layout) -> float:
    """Per token, a Titans mixer's kept tensors other than the op's own (layers/titans_mixer.py, in order)."""
    a, t = (2 if layout.bf16 else 4), layout.tp
    D, i = config.hidden_size, config.memory_heads // t * config.memory_head_dim
    h = config.memory_heads // t
    static = op_cfg.static_channels()
    sv, ss = sum(c in ("k", "v") for c in static), sum(c in ("eta", "alpha") for c in static)
    replicated = (2 * a * D + 4) / _t_sp(layout)            # pre-norm input (+ fp32 rstd), in_proj input
    split = a * (3 + sv) * i + a * ss * h                   # in_proj output [x̃ q g k̃ ṽ | η̃ α̃] (g's view keeps it)
    split += 2 * a * (2 + sv) * i                           # conv input (cat) and conv output (SiLU's input)
    split += a * i + 4 * h                                  # q before ℓ2norm and its norm
    split += 8 * i + 3 * a * i                              # y in fp32, normalised y, bf16 cast, SiLU(g), out_proj input
    return replicated + split


def mlp_token_bytes(config, width: int, layout: Layout) -> float:
    """One MLP (a CMS level or the single MLP): pre-norm input + fc1 input, fc1 output, activation, fc2 input."""
    a, t = (2 if layout.bf16 else 4), layout.tp
    glu = 2 if config.gated_linear_unit else 1
    return (2 * a * config.hidden_size + 4) / _t_sp(layout) + a * (glu + 2) * width / t


def attention_token_bytes(config, layout: Layout, window: Optional[int]) -> float:
    """Megatron SelfAttention per token: norm, QKV, rotary copies, context, out_proj input; the local (unfused)
    core attention also keeps scores and softmax per head and key position, unless selective recompute drops them."""
    a, t = (2 if layout.bf16 else 4), layout.tp
    d = config.kv_channels or config.hidden_size // config.num_attention_heads
    q = config.num_attention_heads * d / t
    kv = (config.num_query_groups or config.num_attention_heads) * d / t
    out = (2 * a * config.hidden_size + 4) / _t_sp(layout) + a * (q + 2 * kv) + a * (q + kv) + 2 * a * q
    if layout.transformer_impl != "transformer_engine" and layout.recompute != "selective":
        out += 2 * a * (config.num_attention_heads / t) * layout.seq  # full s x s: local attention masks, no window
    else:
        out += 4 * config.num_attention_heads / t                     # flash attention's log-sum-exp
    return out


def layer_activation_bytes(config, layout: Layout, letter: str) -> Dict[str, float]:
    """One layer, one micro-batch: {"memory op": ..., "other": ...} bytes."""
    from hope_megatron.config import MEMORY_LETTERS

    tokens = layout.micro * layout.seq
    out = {"memory op": 0.0, "other": 0.0}
    if letter in MEMORY_LETTERS:
        op_cfg = config.to_op_config(letter)
        op, _, _ = op_bytes(op_cfg, layout, config.memory_heads // layout.tp, config.memory_head_dim)
        out["memory op"] = float(op)
        out["other"] += tokens * mixer_token_bytes(config, op_cfg, layout)
    else:
        out["other"] += tokens * attention_token_bytes(config, layout, config.swa_window if letter == "W" else None)
    widths = config.cms_widths() if config.uses_cms else [config.ffn_hidden_size]
    out["other"] += tokens * sum(mlp_token_bytes(config, w, layout) for w in widths)
    return out


def in_flight(layout: Layout, stage: int) -> float:
    """Micro-batches whose activations a pipeline stage holds at once, in units of its whole layer set:
    1F1B: min(PP - stage, micro-batches); interleaved: megatron's warm-up count of model-chunk forwards, per chunk."""
    if layout.pp == 1:
        return 1.0
    if not layout.vpp:
        return float(min(layout.pp - stage, layout.num_micro))
    chunks = (layout.pp - stage - 1) * 2 + (layout.vpp - 1) * layout.pp + 1
    return min(chunks, layout.num_micro * layout.vpp) / layout.vpp


def stage_activations(config, layout: Layout, stage: int, vocab: int) -> Dict[str, float]:
    """{"memory op", "other", "backward working"} bytes on pipeline stage `stage` (its layers, micro-batches in flight,
    the logits on the last stage, recompute honoured)."""
    letters = config.layer_letters()
    per = len(letters) // layout.pp
    mine = letters[stage * per:(stage + 1) * per]
    layers = [layer_activation_bytes(config, layout, c) for c in mine]
    a = 2 if layout.bf16 else 4
    tokens = layout.micro * layout.seq
    unit_input = a * config.hidden_size * tokens / _t_sp(layout)  # what a full-recompute unit keeps
    fly = in_flight(layout, stage)
    if layout.recompute == "full":
        n = layout.recompute_num_layers or 1
        if layout.recompute_method == "block":  # the first n layers of the stage recompute, the rest keep all
            kept = {"memory op": sum(x["memory op"] for x in layers[n:]),
                    "other": sum(x["other"] for x in layers[n:]) + min(n, len(layers)) * unit_input}
        else:                                   # uniform: groups of n layers keep only their input
            kept = {"memory op": 0.0, "other": math.ceil(len(layers) / n) * unit_input}
        working = max(sum(x["memory op"] + x["other"] for x in layers[j:j + n]) for j in range(0, len(layers), n))
    else:
        kept = {k: sum(x[k] for x in layers) for k in ("memory op", "other")}
        working = max(x["memory op"] + x["other"] for x in layers)
    out = {"memory op": fly * kept["memory op"], "other": fly * kept["other"], "backward working": working}
    if stage == layout.pp - 1:  # final norm + output layer input, logits and the fp32 cross-entropy copy (1 in flight)
        out["other"] += tokens * ((2 * a * config.hidden_size + 4) / _t_sp(layout) + (a + 4) * vocab / layout.tp)
    return out  # the embedding output is the first layer's pre-norm input, counted with that layer


# ------------------------------------------------------------------------------------------- weights and state
def stage_parameters(config, vocab: int, tied: bool, layout: Layout, stage: int) -> Dict[str, float]:
    """Parameters held by one rank of `stage`: {"all", "cms"} (TP-split; norms counted as split too, a few KiB)."""
    from hope_megatron.models.summary import count_parameters

    fam = count_parameters(config, vocab, tied=tied)
    layer_total = fam["total"] - fam["embedding"] - fam["output_layer"] - config.hidden_size  # final norm
    cms = sum(v for k, v in fam.items() if k.startswith("cms_level_"))
    frac = 1.0 / layout.pp
    n = layer_total * frac
    if stage == 0:
        n += fam["embedding"]
    if stage == layout.pp - 1:
        n += config.hidden_size + (fam["output_layer"] if not tied else (fam["embedding"] if layout.pp > 1 else 0))
    return {"all": n / layout.tp, "cms": cms * frac / layout.tp}


def estimate(config, layout: Layout, vocab: int, tied: bool) -> Dict[str, object]:
    """Bytes per rank by item on the worst stage, plus what the report lines need."""
    worst = None
    for stage in sorted({0, layout.pp - 1}):
        act = stage_activations(config, layout, stage, vocab)
        params = stage_parameters(config, vocab, tied, layout, stage)
        shard = layout.dp if layout.dist_opt else 1
        item = {
            "memory op": act["memory op"],
            "other activations": act["other"],
            "backward working": act["backward working"],
            "weights": params["all"] * ((2 if layout.bf16 else 4) + (1 if layout.fp8 else 0)),
            "gradients": params["all"] * 4,
            "optimizer state": (params["all"] * (12 if layout.bf16 else 8) + params["cms"] * 8) / shard,
        }
        sub = sum(item.values())
        item["runtime"] = RUNTIME_FIXED + RUNTIME_FRACTION * sub
        total = sum(item.values())
        if worst is None or total > worst["total"]:
            worst = {"items": item, "total": total, "stage": stage, "params": params["all"]}
    return worst


# ------------------------------------------------------------------------------------------------------- CLI
def layout_from_args(args, world_size: int, on_cuda: bool = True) -> Layout:
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    dp = max(world_size // (tp * pp), 1)
    gbs = args.global_batch_size if args.global_batch_size else args.micro_batch_size * dp
    return Layout(tp=tp, pp=pp, dp=dp, vpp=args.virtual_pipeline_model_parallel_size, micro=args.micro_batch_size,
                  num_micro=max(gbs // (args.micro_batch_size * dp), 1), seq=args.seq_length,
                  sp=bool(args.sequence_parallel and tp > 1), dist_opt=bool(args.use_distributed_optimizer),
                  recompute=args.recompute_granularity, recompute_method=args.recompute_method,
                  recompute_num_layers=args.recompute_num_layers, bf16=bool(args.bf16), fp8=bool(args.fp8_format),
                  transformer_impl=args.transformer_impl, on_cuda=on_cuda)


def _gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB"


def report(config, layout: Layout, vocab: int, tied: bool, limit_gib: float) -> (List[str], Optional[str]):
    """(preflight lines, refusal sentence or None)."""
    est = estimate(config, layout, vocab, tied)
    it = est["items"]
    lines = [f"memory per GPU    ~{_gib(est['total'])} of GPU_MEMORY_GB={limit_gib:g} GiB (estimate, worst pipeline "
             f"stage {est['stage']}; docs/training.md \"Memory preflight\")"]
    letters = config.layer_letters()
    from hope_megatron.config import MEMORY_LETTERS

    mem_letter = next((c for c in letters if c in MEMORY_LETTERS), None)
    if mem_letter:
        op_cfg = config.to_op_config(mem_letter)
        one, form, chunked = op_bytes(op_cfg, dataclasses.replace(layout, micro=1), config.memory_heads // layout.tp,
                                      config.memory_head_dim, compare=True)
        note = f"{form}, {one / 2 ** 20:.1f} MiB per layer and sequence"
        if form.startswith("fused"):
            note += f"; the chunked form would keep {chunked / 2 ** 20:.0f} MiB"
        lines.append(f"  memory op       {_gib(it['memory op'])} ({note})")
    rc = f", recompute {layout.recompute}" if layout.recompute else ""
    lines += [
        f"  activations     {_gib(it['other activations'])} (micro-batch {layout.micro} x seq {layout.seq}, "
        f"{in_flight(layout, est['stage']):g} in flight{rc}{', sequence-parallel' if layout.sp else ''}) + backward "
        f"working set {_gib(it['backward working'])}",
        f"  weights+grads   {_gib(it['weights'] + it['gradients'])} ({est['params'] / 1e6:.1f}M parameters on this "
        f"rank, {'BF16' if layout.bf16 else 'FP32'} weights, FP32 gradient buffer)",
        f"  optimizer       {_gib(it['optimizer state'])} (AdamW + FP32 main weights + CMS accumulators"
        f"{f', sharded over DP={layout.dp}' if layout.dist_opt and layout.dp > 1 else ''})",
        f"  runtime         {_gib(it['runtime'])} (CUDA context, workspaces, allocator slack)",
    ]
    if est["total"] <= limit_gib * GIB:
        return lines, None
    return lines, _refusal(config, layout, vocab, tied, limit_gib, est["total"])


def _refusal(config, layout, vocab, tied, limit_gib, total) -> str:
    tries = []
    if layout.recompute != "full":
        tries.append(("RECOMPUTE=full (flag --recompute-granularity full)",
                      dataclasses.replace(layout, recompute="full", recompute_method=None, recompute_num_layers=1)))
    m = layout.micro // 2
    while m >= 1:
        n = layout.num_micro * layout.micro // m
        tries.append((f"MICRO_BATCH={m}", dataclasses.replace(layout, micro=m, num_micro=n)))
        m //= 2
    for what, alt in tries:
        got = estimate(config, alt, vocab, tied)["total"]
        if got <= limit_gib * GIB:
            fix = f"set {what}, estimated ~{_gib(got)}"
            break
    else:
        fix = "raise TP or PP, or set RECOMPUTE=full with MICRO_BATCH=1"
    return (f"the estimated peak memory per GPU is ~{_gib(total)}, above GPU_MEMORY_GB={limit_gib:g}; {fix}, or raise "
            f"GPU_MEMORY_GB if your GPUs have more memory.")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, train = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m hope_megatron.training.memory_estimate",
                                description=__doc__.splitlines()[0])
    p.add_argument("--world-size", type=int, default=1, help="GPUs in the job (DP = world / (TP x PP))")
    p.add_argument("--gpu-memory-gb", type=str, default="80", help="memory per GPU in GiB (GPU_MEMORY_GB)")
    p.add_argument("--cpu", action="store_true", help="the run is on CPU (auto = chunked form, not Triton)")
    a = p.parse_args(ours)
    try:
        limit = float(a.gpu_memory_gb)
        assert limit > 0 and math.isfinite(limit)
    except (ValueError, AssertionError):
        print(f"error: GPU_MEMORY_GB={a.gpu_memory_gb!r} is not a positive number of GiB; set it to the memory of "
              f"one GPU, e.g. GPU_MEMORY_GB=80.", file=sys.stderr)
        return 2
    if a.world_size < 1:
        print(f"error: --world-size {a.world_size} must be at least 1.", file=sys.stderr)
        return 2
    from hope_megatron.training.arguments import parse_args
    from hope_megatron.training.model_setup import build_config
    from hope_megatron.training.data import padded_vocab_size

    try:
        args = parse_args(train + (["--mock-data"] if "--mock-data" not in train else []))
        config = build_config(args, configure=False)
    except SystemExit as e:  # the training CLI's own one-sentence errors (unknown flag, bad YAML key)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    vocab = padded_vocab_size(args.vocab_size or 32000, args.make_vocab_size_divisible_by,
                              args.tensor_model_parallel_size)
    layout = layout_from_args(args, a.world_size, on_cuda=not a.cpu)
    lines, refusal = report(config, layout, vocab, not args.untie_embeddings_and_output_weights, limit)
    print("\n".join(lines))
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
