"""titans_memory on the fused Triton kernels: buffers, launches and the autograd Function (hope_math §2.8).

One forward launch and one backward launch per layer call, whatever the length: the kernels loop over the chunks
themselves (kernels.py). What the backward keeps: the inputs (x̃, q, static channels, update-dropout keep-masks as
uint8) and the boundary state of every n_r-th chunk (n_r = checkpoint_every(chunks)); every other boundary state is
recomputed segment by segment inside the backward kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ..memory_mlp import add_clip_stats, l2norm, record_clip_scales
from . import LAUNCHES, checkpoint_every

_TRITON = None


def _triton():
    global _TRITON
    if _TRITON is None:
        import triton
        import triton.language as tl

        from . import kernels
        _TRITON = (triton, tl, kernels)
    return _TRITON


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << (max(n, 1) - 1).bit_length())


@dataclass(frozen=True)
class _Spec:
    """Everything a launch needs besides tensors: sizes, the kernel's compile-time switches and runtime scalars."""
    B: int
    H: int
    L: int
    D: int
    R: int
    C: int
    G: int
    depth: int
    self_target: bool
    dgd: bool
    beta: float
    clip: float
    dropout: bool
    inv_keep: float
    idx_k: int
    idx_v: int
    idx_eta: int
    idx_alpha: int
    has_lain: bool
    eta_max: float
    n_chunks: int
    n_writes: int
    nr: int
    nck: int
    store_pending: bool
    store_f: bool
    dtype: torch.dtype          # state / compute dtype
    precision: str              # tl.dot input precision

    @property
    def momentum(self) -> bool:
        return self.beta != 0.0

    @property
    def nprog(self) -> int:
        return self.B * self.H

    def constexprs(self, tl) -> dict:
        bc = _pow2(self.C)
        return dict(D=self.D, R=self.R, BC=bc, BD=_pow2(self.D), BR=_pow2(self.R), LOG2BC=int(math.log2(bc)),
                    G=self.G, DEPTH=self.depth, SELF=self.self_target, DGD=self.dgd, MOM=self.momentum,
                    CLIP_ON=math.isfinite(self.clip), DROP=self.dropout, IDX_K=self.idx_k, IDX_V=self.idx_v,
                    IDX_ETA=self.idx_eta, IDX_ALPHA=self.idx_alpha, HAS_LAIN=self.has_lain,
                    CDT=tl.float64 if self.dtype == torch.float64 else tl.float32, PREC=self.precision)

    def scalars(self) -> tuple:
        clip = self.clip if math.isfinite(self.clip) else 0.0
        return (self.L, self.C, self.H, self.n_chunks, self.n_writes, self.nr, self.nck, self.eta_max, clip,
                self.inv_keep)

    def launch_options(self) -> dict:
        # num_stages=1: the chunk loops are sequential, and software pipelining would multi-buffer every state tile
        # in shared memory (measured: the backward then needs 292 KB at d_h = 64, more than any GPU has).
        return dict(num_warps=4 if _pow2(max(self.D, self.R)) <= 32 else 8, num_stages=1)


def _dummy(like: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.empty(1, dtype=dtype or like.dtype, device=like.device)


class _TitansTriton(torch.autograd.Function):
    """y (and the final state) of one layer from its inputs and initial state; backward by the reverse kernel."""

    @staticmethod
    def forward(ctx, spec: _Spec, keep, x, q, kin, vin, etain, lain, weta, beta_b, walpha, balpha, w1, w2, m1, m2):
        triton, tl, kernels = _triton()
        cdt, dev, P = spec.dtype, x.device, spec.nprog
        dummy = _dummy(x, cdt)
        state = [t.clone() if t is not None else dummy for t in (w1, w2, m1, m2)]     # the working state S_j
        save = torch.is_grad_enabled() or any(ctx.needs_input_grad)
        if save:
            ck = [torch.empty((P, spec.nck) + tuple(t.shape[1:]), dtype=cdt, device=dev) if t is not None else dummy
                  for t in (w1, w2, m1, m2)]
        else:
            ck = [dummy] * 4
        y = torch.empty(x.shape, dtype=x.dtype, device=dev)
        if spec.store_pending:
            pend = [torch.zeros(P, spec.C, spec.D, dtype=cdt, device=dev) for _ in range(2)]
            pend += [torch.zeros(P, spec.C, dtype=cdt, device=dev) for _ in range(2)]
        else:
            pend = [dummy] * 4
        clipf = (torch.ones(spec.n_writes, spec.G, P, dtype=cdt, device=dev) if spec.store_f else dummy)
        ins = [t if t is not None else dummy for t in (kin, vin, etain, lain)]
        keep_t = keep if keep is not None else _dummy(x, torch.uint8)
        ro = [t if t is not None else dummy for t in (weta, beta_b, walpha, balpha)]
        bpow = spec_bpow(spec, dev)
        kernels._titans_fwd_kernel[(P,)](
            x, q, *ins, keep_t, *ro, bpow, *state, *ck, y, *pend, clipf, *spec.scalars(),
            SAVE_CK=save, STORE_PENDING=spec.store_pending, STORE_F=spec.store_f, **spec.launch_options(),
            **spec.constexprs(tl))
        LAUNCHES["titans_fwd"] += 1
        ctx.spec = spec
        ctx.has = [t is not None for t in (kin, vin, etain, lain, w2, m2)]
        ctx.save_for_backward(keep, x, q, kin, vin, etain, lain, weta, beta_b, walpha, balpha, *ck[:4])
        ctx.mark_non_differentiable(clipf)
        return (y, *state, *pend, clipf)

    @staticmethod
    def backward(ctx, dy, gw1, gw2, gm1, gm2, gpk, gpv, gpeta, gpla, _gclip):
        triton, tl, kernels = _triton()
        spec: _Spec = ctx.spec
        keep, x, q, kin, vin, etain, lain, weta, beta_b, walpha, balpha, ck1, ck2, ckm1, ckm2 = ctx.saved_tensors
        cdt, dev, P = spec.dtype, x.device, spec.nprog
        dummy = _dummy(x, cdt)
        cks = (ck1, ck2, ckm1, ckm2)
        seg = [torch.empty((P, spec.nr) + tuple(c.shape[2:]), dtype=cdt, device=dev) for c in cks]
        present = (True, ctx.has[4], True, ctx.has[5])          # a linear memory has no W₂ / m₂ buffers
        seg = [s_ if on else dummy for s_, on in zip(seg, present)]
        gs = []
        for g, c, on in zip((gw1, gw2, gm1, gm2), cks, present):
            if not on:
                gs.append(dummy)
            elif g is None:
                gs.append(torch.zeros((P,) + tuple(c.shape[2:]), dtype=cdt, device=dev))
            else:
                gs.append(g.to(cdt).contiguous().clone())
        has_gpend = spec.store_pending and any(g is not None for g in (gpk, gpv, gpeta, gpla))
        if has_gpend:
            gpend = [g.contiguous() if g is not None else torch.zeros_like(ref) for g, ref in
                     zip((gpk, gpv, gpeta, gpla), (dummy.new_zeros(P, spec.C, spec.D),) * 2 + (dummy.new_zeros(P, spec.C),) * 2)]
        else:
            gpend = [dummy] * 4
        dy = (dy if dy is not None else torch.zeros_like(x)).contiguous()
        dx = torch.empty_like(x) if spec.G > 1 else None
        dq = torch.empty_like(q)
        din = [torch.empty_like(t) if t is not None else None for t in (kin, vin, etain, lain)]
        dro = [torch.empty(P, spec.D, dtype=cdt, device=dev) if spec.idx_eta >= 0 else None,
               torch.empty(P, dtype=cdt, device=dev) if spec.idx_eta >= 0 else None,
               torch.empty(P, spec.D, dtype=cdt, device=dev) if spec.idx_alpha >= 0 else None,
               torch.empty(P, dtype=cdt, device=dev) if spec.idx_alpha >= 0 else None]
        opt = lambda t: t if t is not None else dummy  # noqa: E731
        keep_t = keep if keep is not None else _dummy(x, torch.uint8)
        kernels._titans_bwd_kernel[(P,)](
            x, q, *[opt(t) for t in (kin, vin, etain, lain)], keep_t, *[opt(t) for t in (weta, beta_b, walpha, balpha)],
            spec_bpow(spec, dev), *cks, *seg, *gs, dy, *gpend, opt(dx), dq, *[opt(t) for t in din],
            *[opt(t) for t in dro], *spec.scalars(), HAS_GPEND=has_gpend, **spec.launch_options(),
            **spec.constexprs(tl))
        LAUNCHES["titans_bwd"] += 1
        b = spec.B
        red = [t.view(b, spec.H, *t.shape[1:]).sum(0) if t is not None else None for t in dro]
        dstate = [g if on else None for g, on in zip(gs, present)]
        return (None, None, dx, dq, *din, *red, *dstate)


_BPOW: Dict[tuple, torch.Tensor] = {}


def spec_bpow(spec: _Spec, device) -> torch.Tensor:
    """β^k for k = 0..BC (chunked.py raises the same β to integer powers in the state dtype)."""
    bc = _pow2(spec.C)
    key = (spec.beta, bc, spec.dtype, str(device))
    if key not in _BPOW:
        _BPOW[key] = (torch.tensor(spec.beta, dtype=spec.dtype) ** torch.arange(bc + 1, dtype=spec.dtype)).to(device)
    return _BPOW[key]


def _precision(x: torch.Tensor) -> str:
    """tl.dot input precision: exact fp32 for fp32/fp64 inputs; TF32 tensor cores for bf16/fp16 inputs on a GPU (their
    own rounding dominates), IEEE under the interpreter."""
    return "tf32" if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) else "ieee"


def run(x, q, params, cfg, static, state, return_state: bool, training: bool,
        stats: Optional[Dict[str, torch.Tensor]]):
    """titans_memory(..., impl="triton") for settings the kernels cover (ops/triton.unsupported returned None)."""
    from ..titans import _titans_memory_torch

    length = x.shape[2]
    C = cfg.mem_chunk
    y_head = None
    if state is not None and state.position % C:
        # the open chunk of a stream is finished by the chunked form; the kernels start at a boundary
        n0 = min(C - state.position % C, length)
        cut = lambda t, a, b: t[:, :, a:b]  # noqa: E731
        with record_clip_scales(stats):
            y_head, state = _titans_memory_torch(
                cut(x, 0, n0), cut(q, 0, n0), params, cfg, {c: cut(t, 0, n0) for c, t in (static or {}).items()},
                state, True, "chunked", training)
        if n0 == length:
            return (y_head, state) if return_state else y_head
        x, q = cut(x, n0, length), cut(q, n0, length)
        static = {c: cut(t, n0, length) for c, t in (static or {}).items()}
    problem = gpu_problem(cfg, x, training) if x.is_cuda else None
    if problem is None:
        out = _run_kernels(x, q, params, cfg, static, state, return_state, training, stats)
    else:
        from . import log_fallback
        log_fallback(problem)
        with record_clip_scales(stats):
            out = _titans_memory_torch(x, q, params, cfg, static, state, return_state, "chunked", training)
    if y_head is None:
        return out
    y = torch.cat([y_head, out[0] if return_state else out], dim=2)
    return (y, out[1]) if return_state else y


def _run_kernels(x, q, params, cfg, static, state, return_state: bool, training: bool,
                 stats: Optional[Dict[str, torch.Tensor]]):
    """The kernels' share of run(): the state starts at a chunk boundary."""
    from ..titans import TitansState, _static_channels, keep_masks

    bsz, heads, length, d = x.shape
    C = cfg.mem_chunk
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    names = cfg.projection_memories()
    group = names + ("mem",)
    p = {n: t.to(cdt) for n, t in params.items()}
    st = {c: t.to(cdt) for c, t in (static or {}).items()}
    P = bsz * heads
    flat = lambda t: t.reshape(P, *t.shape[2:]).contiguous() if t is not None else None  # noqa: E731

    # inputs of the reads: static channels, normalised / squashed here when no memory produces them (§2.1, §5.4)
    kin = vin = etain = lain = None
    if not names:
        kv = _static_channels(st, p, cfg)
        kin, vin, etain = flat(kv["k"]), flat(kv["v"]), flat(kv["eta"])
        lain = flat(kv["log_alpha"]) if cfg.decay else None
    else:
        kin = flat(l2norm(st["k"])) if "k" in st else None
        vin = flat(st["v"]) if "v" in st else None

    keep = None
    if names and training and cfg.update_dropout > 0:   # same draws, in the same order, as the chunked form
        keep_p = 1.0 - cfg.update_dropout
        keep = torch.stack(keep_masks(len(names), x.shape, keep_p, x.device)).to(torch.uint8)
        keep = keep.reshape(len(names), P, length, d)

    # initial state S₀ [P, G, d_out, d_in] per weight matrix, differentiable into the meta-inits or the given state
    depth2 = cfg.memory_depth == 2
    layer_names = ("w1", "w2") if depth2 else ("w",)
    if state is None:
        ws = [torch.stack([p[f"{m}_{ln}"] for m in group], dim=1) for ln in layer_names]       # [H, G, o, i]
        ws = [w.unsqueeze(0).expand(bsz, *w.shape).reshape(P, *w.shape[1:]) for w in ws]
        ms = [torch.zeros_like(w) for w in ws]
    else:
        ws = [torch.stack([state.weights[m][i].to(cdt) for m in group], dim=2).reshape(P, len(group), *
              state.weights["mem"][i].shape[2:]) for i in range(len(layer_names))]
        ms = [torch.stack([state.momentum[m][i].to(cdt) for m in group], dim=2).reshape(P, len(group), *
              state.momentum["mem"][i].shape[2:]) for i in range(len(layer_names))]
    w1, w2 = (ws + [None])[:2]
    m1, m2 = (ms + [None])[:2]

    n_chunks = -(-length // C)
    n_full = length // C
    n_writes = n_full if return_state else min(n_full, n_chunks - 1)
    nr = checkpoint_every(n_chunks)
    idx = {m: i for i, m in enumerate(group)}
    spec = _Spec(B=bsz, H=heads, L=length, D=d, R=cfg.expansion * d if depth2 else d, C=C, G=len(group),
                 depth=cfg.memory_depth, self_target=cfg.self_mod, dgd=cfg.dgd, beta=float(cfg.momentum),
                 clip=float(cfg.inner_clip), dropout=keep is not None,
                 inv_keep=1.0 / (1.0 - cfg.update_dropout) if keep is not None else 1.0,
                 idx_k=idx.get("k", -1), idx_v=idx.get("v", -1), idx_eta=idx.get("eta", -1),
                 idx_alpha=idx.get("alpha", -1), has_lain=lain is not None, eta_max=float(cfg.eta_max),
                 n_chunks=n_chunks, n_writes=n_writes, nr=nr, nck=-(-n_chunks // nr),
                 store_pending=bool(return_state and names and length % C),
                 store_f=stats is not None and math.isfinite(cfg.inner_clip) and n_writes > 0,
                 dtype=cdt, precision=_precision(x))
    readouts = [p.get("eta_readout"), p.get("eta_bias"), p.get("alpha_readout"), p.get("alpha_bias")]
    if spec.idx_eta < 0:
        readouts[0] = readouts[1] = None
    if spec.idx_alpha < 0:
        readouts[2] = readouts[3] = None
    out = _TitansTriton.apply(spec, keep, flat(x), flat(q), kin, vin, etain, lain, *readouts, w1, w2, m1, m2)
    y, sw1, sw2, sm1, sm2, pk, pv, peta, pla, clipf = out
    if spec.store_f:
        add_clip_stats(stats, [clipf])
    y = y.view(bsz, heads, length, d)
    if not return_state:
        return y

    G = len(group)
    unflat = lambda t: t.view(bsz, heads, G, *t.shape[2:])  # noqa: E731
    layers_w = [unflat(sw1)] + ([unflat(sw2)] if depth2 else [])
    layers_m = [unflat(sm1)] + ([unflat(sm2)] if depth2 else [])
    weights = {m: tuple(w[:, :, g] for w in layers_w) for g, m in enumerate(group)}
    momentum = {m: tuple(w[:, :, g] for w in layers_m) for g, m in enumerate(group)}
    start = 0 if state is None else state.position
    end = start + length
    keep_n = end % C
    pending = {}
    if keep_n:
        if names:
            src = {"k": pk.view(bsz, heads, C, d), "v": pv.view(bsz, heads, C, d),
                   "eta": peta.view(bsz, heads, C), "log_alpha": pla.view(bsz, heads, C)}
            pending = {c: t[:, :, :keep_n] for c, t in src.items()}
        else:
            kv = {"k": kin.view(bsz, heads, length, d), "v": vin.view(bsz, heads, length, d),
                  "eta": etain.view(bsz, heads, length),
                  "log_alpha": lain.view(bsz, heads, length) if lain is not None else
                  torch.zeros(bsz, heads, length, dtype=cdt, device=x.device)}
            pending = {c: t[:, :, length - keep_n:] for c, t in kv.items()}
    base = state if state is not None else TitansState({}, {}, 0, {})
    return y, TitansState(dict(base.weights, **weights), dict(base.momentum, **momentum), end, pending)


_CHECKED: Dict[tuple, Optional[str]] = {}
SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-2}


def gpu_problem(cfg, x: torch.Tensor, training: bool) -> Optional[str]:
    """None when the kernels of this configuration load on x's device and agree with the chunked form there, else
    why not. Checked once per configuration, dtype and device, before the first forward (a backward that cannot
    launch cannot fall back): a small problem of the same configuration runs forward and backward through both forms
    and is compared. HOPE_TRITON_SELF_CHECK=0 skips the comparison (not the launch)."""
    key = (cfg, x.dtype, x.device, bool(training and cfg.update_dropout > 0), x.shape[-1])
    if key not in _CHECKED:
        try:
            gap = self_check(cfg, x.dtype, x.device, training, x.shape[-1])
            tol = SELF_CHECK_TOLERANCE.get(x.dtype, 1e-4)
            _CHECKED[key] = None if gap <= tol else (
                f"the kernels disagree with the chunked form on this device (relative error {gap:.1e} > {tol:.0e} in "
                f"a {cfg.mem_chunk}-token-chunk self-check); please report it with `python -m "
                f"hope_megatron.ops.triton.compile_check` output")
        except Exception as e:  # noqa: BLE001 - a kernel that does not compile or load here: run the chunked form
            _CHECKED[key] = f"the kernels do not run on this device ({type(e).__name__}: {str(e)[:200]})"
    return _CHECKED[key]


def self_check(cfg, dtype: torch.dtype, device, training: bool, head_dim: int) -> float:
    """Largest relative difference between the kernels and the chunked form, over y, the final state and every
    gradient, on a seeded 1×1×(2C+3)-token problem of this configuration (the caller's RNG stream is untouched)."""
    import os

    from ..config import init_meta_params
    from ..titans import _titans_memory_torch

    C = cfg.mem_chunk
    g = torch.Generator().manual_seed(0)
    shape = (1, 1, 2 * C + 3, head_dim)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = F.silu(rnd(*shape)).to(device, dtype).requires_grad_()
    q = l2norm(F.silu(rnd(*shape))).to(device, dtype).requires_grad_()
    static = {c: (rnd(*shape) if c in ("k", "v") else rnd(*shape[:3])).to(device, dtype).requires_grad_()
              for c in cfg.static_channels()}
    params = init_meta_params(1, head_dim, cfg, generator=g)
    params = {n: (t + 0.1 * rnd(*t.shape) if n.endswith("readout") else t).to(device).requires_grad_()
              for n, t in params.items()}
    leaves = [x, q, *static.values(), *params.values()]
    results = []
    skip = os.environ.get("HOPE_TRITON_SELF_CHECK", "1") == "0"
    for form in ("kernels",) if skip else ("kernels", "chunked"):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)                                  # the same update-dropout draws for both forms
            if form == "kernels":
                y, st = _run_kernels(x, q, params, cfg, static, None, True, training, None)
            else:
                y, st = _titans_memory_torch(x, q, params, cfg, static, None, True, "chunked", training)
        outs = [y.float()] + [w.float() for ws in st.weights.values() for w in ws]
        loss = sum((o * torch.cos(torch.arange(o.numel(), device=device).view_as(o).float())).sum() for o in outs)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        results.append([o.detach() for o in outs] + [gr.float() for gr in grads if gr is not None])
    if skip:
        return 0.0
    return max(((a - b).norm() / b.norm().clamp_min(1e-12)).item() for a, b in zip(*results))
