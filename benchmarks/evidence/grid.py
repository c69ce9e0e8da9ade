"""What the evidence grid runs: the variants, the model shape, each task's training budget and evaluation, and the
parameter matching of the baselines to HOPE (hope_megatron.models.summary counts, analytic, no model built).

Every variant shares the shape (2 layers, D = 64, 4 heads of 16, untied embeddings) and each task's data, tokens and
optimizer settings; only the mixer and the MLP stack differ. The baselines' MLP (or CMS level) width is chosen so
their non-embedding parameters match HOPE's (the embedding tables are the same for every variant of a task).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List

# label -> (hope-train flags, what it is). hope_math §5.2 presets; "titans" keeps HOPE's CMS.
VARIANTS: Dict[str, tuple] = {
    "hope": ([], "self-modifying Titans + 4 CMS levels (periods 1 4 32 128)"),
    "titans": (["--hope-variant", "titans", "--cms-levels", "4"],
               "hope without self-modification: Titans LMM (static k, v, eta, alpha; GD + momentum) + the same 4 CMS "
               "levels"),
    "titans_nocms": (["--hope-variant", "titans"], "Titans LMM with one MLP per layer (no CMS)"),
    "deltanet": (["--hope-variant", "deltanet"], "linear delta rule, one MLP per layer"),
    "transformer": (["--hope-variant", "transformer"], "full causal attention (RoPE), one MLP per layer"),
    "swa": (["--hope-variant", "swa"], "sliding-window attention (window below), one MLP per layer"),
    # diagnostic, not a baseline (not in the default grid; --variants adds it): docs/model.md finds that eta_init
    # 0.001 instead of 0.01 stops the inner clip from binding at initialisation
    "hope_eta1e-3": (["--eta-init", "0.001"], "diagnostic: hope with inner learning rate eta_init 0.001 (not 0.01)"),
}
DIAGNOSTIC = ("hope_eta1e-3",)
CMS_VARIANTS = ("hope", "titans", "hope_eta1e-3")
MEMORY_VARIANTS = ("hope", "titans", "titans_nocms", "deltanet", "hope_eta1e-3")

SHAPE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--untie-embeddings-and-output-weights", "--make-vocab-size-divisible-by", "8"]
HOPE_FFN = 128  # HOPE's width per CMS level; the baselines are widened to its parameter count


@dataclass
class TaskBudget:
    """Training of one task (for the continual task: of each of its tasks) and the optimizer, the same for every
    variant. Tokens per run = iters * batch * seq."""
    seq: int
    batch: int
    iters: int
    lr: float = 3e-3
    warmup: int = 10

    def tokens(self) -> int:
        return self.iters * self.batch * self.seq


@dataclass
class Grid:
    name: str
    variants: List[str]
    seeds: List[int]
    swa_window: int = 64
    # MQAR (tasks.MQARSpec): training streams of packed instances, N drawn from train_pairs
    mqar_kv: int = 16
    mqar: TaskBudget = field(default_factory=lambda: TaskBudget(seq=128, batch=32, iters=240))
    mqar_train_pairs: List[int] = field(default_factory=lambda: [2, 4, 8])
    mqar_eval_pairs: List[int] = field(default_factory=lambda: [2, 4, 8, 16])
    mqar_eval_lengths: List[int] = field(default_factory=lambda: [128, 256, 512])
    mqar_eval_sequences: int = 24
    # passkey (tasks.PasskeySpec): training prompts of passkey.seq tokens; evaluation through eval.niah's functions.
    # Short prompts: the answer is 5 of every 32 training tokens (at 256 tokens nothing learned it in 100 iterations).
    passkey: TaskBudget = field(default_factory=lambda: TaskBudget(seq=32, batch=128, iters=230))
    passkey_lengths: List[int] = field(default_factory=lambda: [32, 1024, 4096, 16384, 65536])
    passkey_depths: List[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    passkey_trials: int = 1
    passkey_attention_max: int = 4096  # full attention is O(L^2) in time on a CPU: longer cells are not run
    passkey_segment: int = 256  # tokens per streamed call (sliding-window attention is ~10x faster at 256 than 2048)
    measure_memory: bool = True
    # permuted classes (tasks.ClassesSpec): `tasks` tasks trained one after another, each for classes.iters
    classes_tasks: int = 3
    classes: TaskBudget = field(default_factory=lambda: TaskBudget(seq=64, batch=32, iters=50))
    classes_eval_examples: int = 256
    ttc_stream_tokens: int = 8192     # test-time CMS: tokens of each later task streamed through the model
    ttc_segment: int = 64
    ttc_periods: List[int] = field(default_factory=lambda: [64, 256, 1024, 4096])
    ttc_lr: List[float] = field(default_factory=lambda: [1e-2, 3e-3, 1e-3, 3e-4])


DEFAULT = Grid(name="default", variants=[v for v in VARIANTS if v not in DIAGNOSTIC], seeds=[1, 2, 3])


def quick() -> Grid:
    """The pipeline end to end in seconds (make test): every stage, tiny budgets, two seeds (a CI needs two)."""
    g = copy.deepcopy(DEFAULT)
    g.name = "quick"
    g.variants = ["hope", "transformer"]
    g.seeds = [1, 2]
    g.mqar = TaskBudget(seq=32, batch=4, iters=3, warmup=1)
    g.mqar_train_pairs, g.mqar_eval_pairs, g.mqar_eval_lengths = [2, 4], [2, 4], [32, 64]
    g.mqar_eval_sequences = 4
    g.passkey = TaskBudget(seq=32, batch=4, iters=3, warmup=1)
    g.passkey_lengths, g.passkey_depths = [32, 256, 1024], [0.5]
    g.passkey_attention_max = 256
    g.passkey_segment = 128
    g.classes_tasks = 2
    g.classes = TaskBudget(seq=32, batch=4, iters=3, warmup=1)
    g.classes_eval_examples = 16
    g.ttc_stream_tokens, g.ttc_segment, g.ttc_periods = 64, 16, [16, 32, 64, 64]
    return g


def base_flags(variant: str, grid: Grid) -> List[str]:
    """The model flags of a variant before matching (HOPE's own width)."""
    flags = SHAPE + VARIANTS[variant][0]
    if variant == "swa":
        flags += ["--swa-window", str(grid.swa_window)]
    return flags


def _non_embedding(flags: List[str], vocab: int) -> int:
    from hope_megatron.models.summary import count_parameters
    from hope_megatron.training.arguments import parse_args
    from hope_megatron.training.model_config import build_config

    args = parse_args(flags + ["--mock-data", "--vocab-size", str(vocab)])
    return count_parameters(build_config(args, configure=False), vocab, tied=False)


def matched_width(variant: str, grid: Grid, vocab: int = 64) -> int:
    """The MLP / CMS-level width giving `variant` HOPE's non-embedding parameter count (closest integer; the count
    is affine in the width, so two evaluations find it)."""
    if variant == "hope":
        return HOPE_FFN
    target = _non_embedding(base_flags("hope", grid) + ["--ffn-hidden-size", str(HOPE_FFN)], vocab)["non_embedding"]
    at = lambda w: _non_embedding(base_flags(variant, grid) + ["--ffn-hidden-size", str(w)], vocab)["non_embedding"]  # noqa: E731
    a, b = at(64), at(128)
    return max(1, round(64 + (target - a) * 64 / (b - a)))


def model_flags(variant: str, grid: Grid, widths: Dict[str, int]) -> List[str]:
    return base_flags(variant, grid) + ["--ffn-hidden-size", str(widths[variant])]


def parameter_counts(grid: Grid, widths: Dict[str, int], vocab: int) -> Dict[str, dict]:
    """{variant: {total, non_embedding, memory, attention, mlp, cms, width}} at a task's vocabulary."""
    out = {}
    for v in grid.variants:
        c = _non_embedding(model_flags(v, grid, widths), vocab)
        out[v] = {"total": c["total"], "non_embedding": c["non_embedding"], "memory": c["memory"],
                  "attention": c["attention"], "mlp": c["mlp"],
                  "cms": sum(n for k, n in c.items() if k.startswith("cms_level_")), "width": widths[v]}
    return out


def grid_from_dict(d: dict) -> Grid:
    """Inverse of dataclasses.asdict(grid) (the job spec carries the grid as JSON)."""
    d = dict(d)
    for key in ("mqar", "passkey", "classes"):
        d[key] = TaskBudget(**d[key])
    return Grid(**d)
