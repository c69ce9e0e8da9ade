"""titans_memory end to end: hope_math §8 rows 5-10. Independent transcriptions of the recurrences live here, not in
hope_megatron/ops. err(a, b) = ‖a − b‖ / max(‖b‖, 1e-12)."""

import math

import pytest
import torch
import torch.nn.functional as F

from hope_megatron.ops import TitansOpConfig, TitansState, init_meta_params, titans_memory
from hope_megatron.ops.memory_mlp import l2norm

F64 = torch.float64


def err(a, b):
    return ((a - b).norm() / max(b.norm().item(), 1e-12)).item()


def make_case(cfg, B=2, H=2, L=11, d=4, dtype=F64, seed=0, params=None):
    """Inputs as the layer hands them over (§2.1) and meta-params moved off their init (random readouts, α ≈ 0.9)."""
    g = torch.Generator().manual_seed(seed)
    x = F.silu(torch.randn(B, H, L, d, generator=g, dtype=F64))
    q = l2norm(F.silu(torch.randn(B, H, L, d, generator=g, dtype=F64)))
    static_all = {"k": F.silu(torch.randn(B, H, L, d, generator=g, dtype=F64)),
                  "v": torch.randn(B, H, L, d, generator=g, dtype=F64),
                  "eta": torch.randn(B, H, L, generator=g, dtype=F64),
                  "alpha": torch.randn(B, H, L, generator=g, dtype=F64)}
    static = {c: static_all[c].to(dtype) for c in cfg.static_channels()}
    if params is None:
        params = init_meta_params(H, d, cfg, dtype=F64, generator=g)
        for name, t in params.items():
            if name.endswith("readout"):
                t.copy_(torch.randn(t.shape, generator=g, dtype=F64))
            elif name == "alpha_bias":
                t.fill_(2.0)
    params = {n: t.detach().to(dtype if dtype == F64 else torch.float32).requires_grad_(True) for n, t in params.items()}
    return x.to(dtype), q.to(dtype), static, params


def grads(y, params):
    return torch.autograd.grad(y.square().sum(), list(params.values()), allow_unused=False)


CASES = [
    dict(B=1, L=11, H=2, d=4, cfg=dict(chunk_size=4)),
    dict(B=2, L=13, H=2, d=4, cfg=dict(chunk_size=4, proj_chunk_size=3, expansion=2)),
    dict(B=1, L=10, H=1, d=6, cfg=dict(chunk_size=3, proj_chunk_size=5, inner_q=True, inner_clip=0.05)),
    dict(B=1, L=9, H=2, d=4, cfg=dict(chunk_size=2, dgd=False, momentum=0.0, decay=False)),
    dict(B=1, L=9, H=2, d=4, cfg=dict(chunk_size=4, inner_k=False, inner_v=False, memory_depth=1)),
    dict(B=2, L=9, H=1, d=4, cfg=dict(chunk_size=5, self_mod=False)),
    dict(B=1, L=7, H=2, d=4, cfg=dict(chunk_size=1, self_mod=False, memory_depth=1, momentum=0.0, dgd=False,
                                      read_after_update=True, zero_init=True)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c["cfg"].items()))
def test_chunked_equals_naive_fp64(case):
    """§8 rows 3/5: output and every parameter gradient, fp64 ≤ 1e-10, incl. L % C ≠ 0 and C_proj ≠ C_mem."""
    cfg = TitansOpConfig(**case["cfg"])
    x, q, static, params = make_case(cfg, B=case["B"], H=case["H"], L=case["L"], d=case["d"])
    y_ref = titans_memory(x, q, params, cfg, static=static, impl="naive")
    y = titans_memory(x, q, params, cfg, static=static, impl="chunked")
    assert err(y, y_ref) <= 1e-10
    for g, g_ref in zip(grads(y, params), grads(y_ref, params)):
        assert err(g, g_ref) <= 1e-10


@pytest.mark.parametrize("dtype,out_tol,grad_tol", [(torch.float32, 1e-5, 1e-4), (torch.bfloat16, 2e-2, 5e-2)])
def test_chunked_low_precision_against_fp64_naive(dtype, out_tol, grad_tol):
    """§8 row 5: fp32 out ≤ 1e-5, grads ≤ 1e-4; bf16 out ≤ 2e-2, grads ≤ 5e-2 against the fp64 reference run on the
    same (rounded) inputs."""
    cfg = TitansOpConfig(chunk_size=4, proj_chunk_size=3)
    x, q, static, params = make_case(cfg, L=13, d=8, dtype=dtype)
    y = titans_memory(x, q, params, cfg, static=static)
    assert y.dtype == dtype
    p64 = {n: t.detach().double().requires_grad_(True) for n, t in params.items()}
    y_ref = titans_memory(x.double(), q.double(), p64, cfg, impl="naive")
    assert err(y.double(), y_ref) <= out_tol
    for g, g_ref in zip(grads(y.float(), params), grads(y_ref, p64)):
        assert err(g.double(), g_ref) <= grad_tol


def _mlp(w1, w2, z):
    return z + F.silu(z @ w2.transpose(-1, -2)) @ w1.transpose(-1, -2)


def test_c1_equals_per_token_recurrence():
    """§3.1 with C = 1: each token reads and writes at W_{t−1}; written here from the paper's equations, with the
    inner gradient by autograd and the DGD factor as an explicit matrix (NL-arXiv Eqs 84–88, hope_math §2.3–2.5)."""
    cfg = TitansOpConfig(chunk_size=1, momentum=0.7, inner_clip=float("inf"))  # the written loop has no clip
    x, q, _, p = make_case(cfg, B=1, H=2, L=6, d=3)
    names = cfg.memory_names()
    W = {m: [p[f"{m}_w1"].detach().clone().expand(1, -1, -1, -1), p[f"{m}_w2"].detach().clone().expand(1, -1, -1, -1)]
         for m in names}
    M = {m: [torch.zeros_like(w) for w in W[m]] for m in names}
    eye = lambda n: torch.eye(n, dtype=F64)  # noqa: E731
    ys = []
    for t in range(x.shape[2]):
        xt, qt = x[:, :, t:t + 1], q[:, :, t:t + 1]                       # row vectors [B, H, 1, d]
        k = l2norm(_mlp(*W["k"], xt))
        v = _mlp(*W["v"], xt)
        eta = cfg.eta_max * torch.sigmoid(_mlp(*W["eta"], xt) @ p["eta_readout"].detach()[:, :, None]
                                          + p["eta_bias"].detach()[:, None, None])   # [B, H, 1, 1]
        alpha = torch.sigmoid(_mlp(*W["alpha"], xt) @ p["alpha_readout"].detach()[:, :, None]
                              + p["alpha_bias"].detach()[:, None, None])
        ys.append(_mlp(*W["mem"], qt)[:, :, 0])
        for m in names:
            w1, w2 = [w.clone().requires_grad_(True) for w in W[m]]
            v_hat = _mlp(w1, w2, v).detach()
            g1, g2 = torch.autograd.grad((_mlp(w1, w2, k) - v_hat).square().sum(), (w1, w2))
            h_hat = l2norm(F.silu(k @ W[m][1].transpose(-1, -2)))
            for i, (g, z) in enumerate(((g1, h_hat), (g2, k))):
                M[m][i] = cfg.momentum * M[m][i] + g
                decay = alpha * eye(z.shape[-1]) - eta * z.transpose(-1, -2) @ z   # α_t I − λ_t ẑẑᵀ
                W[m][i] = W[m][i] @ decay - eta * M[m][i]
    y_ref = torch.stack(ys, dim=2)
    for impl in ("naive", "chunked"):
        assert err(titans_memory(x, q, p, cfg, impl=impl), y_ref) <= 1e-10


@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("read_after_update", [True, False])
def test_linear_memory_is_gated_delta_rule(decay, read_after_update):
    """§3.3 / §8 row 9: self_mod off, linear, C = 1, β = 0, DGD off is the (gated) delta rule with β_t = 2η_t:
    S_t = α_t S_{t−1} − 2η_t (S_{t−1}k_t − v_t) k_tᵀ; deltanet reads S_t, Titans-style reads S_{t−1}."""
    cfg = TitansOpConfig(chunk_size=1, self_mod=False, memory_depth=1, momentum=0.0, dgd=False, decay=decay,
                         read_after_update=read_after_update, zero_init=True, eta_max=0.5, inner_clip=float("inf"))
    x, q, st, p = make_case(cfg, B=2, H=2, L=9, d=4)
    k = l2norm(st["k"])
    eta = 0.5 * torch.sigmoid(st["eta"] + p["eta_bias"].detach()[:, None])
    alpha = torch.sigmoid(st["alpha"] + p["alpha_bias"].detach()[:, None]) if decay else torch.ones_like(eta)
    S = torch.zeros(2, 2, 4, 4, dtype=F64)
    ys = []
    for t in range(9):
        kt, vt, qt = k[:, :, t], st["v"][:, :, t], q[:, :, t]
        S_new = alpha[:, :, t, None, None] * S - 2 * eta[:, :, t, None, None] * ((S @ kt[..., None]) - vt[..., None]) * kt[..., None, :]
        ys.append(((S_new if read_after_update else S) @ qt[..., None])[..., 0])
        S = S_new
    y_ref = torch.stack(ys, dim=2)
    for impl in ("naive", "chunked"):
        assert err(titans_memory(x, q, p, cfg, static=st, impl=impl), y_ref) <= 1e-12


def test_self_mod_off_equals_titans_lmm():
    """§5.4 seed 1 / §8 row 9: self_mod off, DGD off is Titans' LMM with boundary reads, written directly: per chunk,
    y = M(q) at the boundary; per token G_t = ∇‖M(k_t) − v_t‖² at the boundary, m = βm + G_t, W = α_t W − η_t m."""
    cfg = TitansOpConfig(chunk_size=4, self_mod=False, dgd=False, momentum=0.9, inner_clip=float("inf"))
    x, q, st, p = make_case(cfg, B=2, H=2, L=11, d=4)
    k, v = l2norm(st["k"]), st["v"]
    eta = cfg.eta_max * torch.sigmoid(st["eta"] + p["eta_bias"].detach()[:, None])
    alpha = torch.sigmoid(st["alpha"] + p["alpha_bias"].detach()[:, None])
    W = [p["mem_w1"].detach().expand(2, -1, -1, -1), p["mem_w2"].detach().expand(2, -1, -1, -1)]
    Mo = [torch.zeros_like(w) for w in W]
    ys = []
    for c0 in range(0, 11, 4):
        ys.append(_mlp(*W, q[:, :, c0:c0 + 4]))
        Wb = [w.clone().requires_grad_(True) for w in W]
        for t in range(c0, min(c0 + 4, 11)):
            G = torch.autograd.grad((_mlp(*Wb, k[:, :, t:t + 1]) - v[:, :, t:t + 1]).square().sum(), Wb)
            for i in range(2):
                Mo[i] = cfg.momentum * Mo[i] + G[i]
                W[i] = alpha[:, :, t, None, None] * W[i] - eta[:, :, t, None, None] * Mo[i]
    y_ref = torch.cat(ys, dim=2)
    for impl in ("naive", "chunked"):
        assert err(titans_memory(x, q, p, cfg, static=st, impl=impl), y_ref) <= 1e-12


def test_causality():
    """§8 row 7: perturbing x_s leaves y_t unchanged up to the end of s's C_mem chunk, and ∂y_t/∂x_s = 0 for t < s."""
    cfg = TitansOpConfig(chunk_size=4, proj_chunk_size=3)
    x, q, _, p = make_case(cfg, L=12)
    s, first_affected = 5, 8
    y = titans_memory(x, q, p, cfg)
    x2 = x.clone()
    x2[:, :, s] += 1.0
    y2 = titans_memory(x2, q, p, cfg)
    assert torch.equal(y2[:, :, :first_affected], y[:, :, :first_affected])
    assert err(y2[:, :, first_affected:], y[:, :, first_affected:]) > 1e-4
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(titans_memory(xg, q, p, cfg)[:, :, :s].sum(), xg)
    assert torch.count_nonzero(gx[:, :, s:]) == 0 and torch.count_nonzero(gx[:, :, :s]) > 0


@pytest.mark.parametrize("impl,dtype,tol", [("chunked", F64, 1e-12), ("naive", F64, 1e-12), ("chunked", torch.float32, 1e-6)])
def test_streaming_equals_whole(impl, dtype, tol):
    """§8 row 10: segments split mid-chunk on both grids, with carried state, equal one call; save/load is bitwise."""
    cfg = TitansOpConfig(chunk_size=4, proj_chunk_size=3, inner_k=False)
    x, q, st, p = make_case(cfg, L=17, dtype=dtype)
    whole = titans_memory(x, q, p, cfg, static=st, impl=impl)
    parts, state, a = [], None, 0
    for n in (2, 1, 6, 5, 3):
        sl = slice(a, a + n)
        y, state = titans_memory(x[:, :, sl], q[:, :, sl], p, cfg, static={c: t[:, :, sl] for c, t in st.items()},
                                 state=state, return_state=True, impl=impl)
        parts.append(y)
        a += n
        if a == 9:  # round trip through a plain dict mid-stream
            state = TitansState.from_state_dict({k: (v.clone() if torch.is_tensor(v) else v)
                                                 for k, v in state.detach().state_dict().items()})
    assert state.position == 17 and state.pending["k"].shape[2] == max(17 % 4, 17 % 3)
    assert err(torch.cat(parts, dim=2), whole) <= tol
    fresh = titans_memory(x[:, :, 9:], q[:, :, 9:], p, cfg, static={c: t[:, :, 9:] for c, t in st.items()}, impl=impl)
    assert err(fresh, whole[:, :, 9:]) > 1e-3  # the carried state matters


def test_gradcheck_tiny_mixer():
    """§8 row 8: fp64 gradcheck of every outer input (L = 8, C = 2, d_h = 4), with and without an active clip.
    fast_mode checks random projections vᵀJu of the full Jacobian (the dense check takes minutes on one core)."""
    for clip in (float("inf"), 1e-3):
        cfg = TitansOpConfig(chunk_size=2, inner_clip=clip, inner_q=True)
        x, q, _, p = make_case(cfg, B=1, H=1, L=8, d=4)
        names = list(p)

        def fn(x, q, *ps):
            return titans_memory(x, q, dict(zip(names, ps)), cfg)

        inputs = (x.requires_grad_(True), q.requires_grad_(True), *p.values())
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_every_meta_init_and_readout_gets_gradient():
    """§2.8 / §8 row 8: with L ≥ 2·max(C_proj, C_mem) the writes carry gradient into M_k, M_v, M_η, M_α's meta-inits."""
    cfg = TitansOpConfig(chunk_size=4, proj_chunk_size=3)
    x, q, _, p = make_case(cfg, L=16)
    for impl in ("chunked", "naive"):
        gs = dict(zip(p, grads(titans_memory(x, q, p, cfg, impl=impl), p)))
        for m in ("k", "v", "eta", "alpha", "mem"):
            assert gs[f"{m}_w1"].norm() > 1e-8 and gs[f"{m}_w2"].norm() > 1e-8, m
        for n in ("eta_readout", "alpha_readout", "eta_bias", "alpha_bias"):
            assert gs[n].norm() > 1e-8, n


TOGGLES = [dict(dgd=False), dict(momentum=0.0), dict(decay=False), dict(inner_k=False), dict(inner_v=False),
           dict(inner_q=True), dict(self_mod=False), dict(inner_clip=0.01), dict(proj_chunk_size=2),
           dict(expansion=2), dict(memory_depth=1)]


@pytest.mark.parametrize("toggle", TOGGLES, ids=lambda t: ",".join(f"{k}={v}" for k, v in t.items()))
def test_each_toggle_changes_the_output(toggle):
    """§5.4: every ablation toggle changes y (same parameters wherever the shapes agree)."""
    base = TitansOpConfig(chunk_size=3)
    x, q, _, p = make_case(base, L=10)
    y0 = titans_memory(x, q, p, base)
    cfg = TitansOpConfig(**{**base.__dict__, **toggle})
    _, _, st, p_new = make_case(cfg, L=10, seed=1)
    shared = {n: p[n] if n in p and p[n].shape == t.shape else t for n, t in p_new.items()}
    y1 = titans_memory(x, q, shared, cfg, static=st)
    assert err(y1, y0) > 1e-3


def test_update_dropout_and_decay_off_limits():
    """Update dropout changes y only in training; decay off equals α → 1 (static logits +60; §8 row 9)."""
    cfg = TitansOpConfig(chunk_size=3, update_dropout=0.5)
    x, q, _, p = make_case(cfg, L=10)
    y_eval = titans_memory(x, q, p, cfg)
    assert torch.equal(y_eval, titans_memory(x, q, p, TitansOpConfig(chunk_size=3)))
    assert err(titans_memory(x, q, p, cfg, training=True), y_eval) > 1e-3
    on = TitansOpConfig(chunk_size=3, self_mod=False)
    off = TitansOpConfig(chunk_size=3, self_mod=False, decay=False)
    x, q, st, p = make_case(on, L=10)
    st_big = dict(st, alpha=torch.full_like(st["alpha"], 60.0))
    p_off = {n: t for n, t in p.items() if n != "alpha_bias"}
    y_off = titans_memory(x, q, p_off, off, static={c: st[c] for c in off.static_channels()})
    assert err(titans_memory(x, q, p, on, static=st_big), y_off) <= 1e-12


def test_config_and_input_errors_are_clear():
    with pytest.raises(ValueError, match="read_after_update"):
        TitansOpConfig(chunk_size=4, read_after_update=True)
    with pytest.raises(ValueError, match="momentum"):
        TitansOpConfig(momentum=1.0)
    cfg = TitansOpConfig(chunk_size=2, inner_k=False)
    assert cfg.memory_names() == ("v", "eta", "alpha", "mem") and cfg.static_channels() == ("k",)
    assert TitansOpConfig(self_mod=False).static_channels() == ("k", "v", "eta", "alpha")
    x, q, st, p = make_case(cfg, L=4)
    with pytest.raises(ValueError, match="static must hold exactly"):
        titans_memory(x, q, p, cfg)
    p0 = init_meta_params(3, 4, TitansOpConfig(expansion=2))
    assert math.isclose(0.1 * torch.sigmoid(p0["eta_bias"][0]).item(), 0.01, rel_tol=1e-6)
    assert math.isclose(torch.sigmoid(p0["alpha_bias"][0]).item(), 0.999, rel_tol=1e-6)
    assert p0["k_w1"].shape == (3, 4, 8) and p0["k_w2"].shape == (3, 8, 4) and p0["eta_readout"].abs().sum() == 0


def _saved_bytes(fn):
    """Bytes of distinct storages autograd keeps for the backward of fn() (saved-tensor hooks)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def test_recompute_chunks_gives_the_same_numbers():
    """cfg.recompute_chunks (activation checkpointing per chunk) changes memory, not numbers: y and every gradient
    equal the default form's (fp64 ≤ 1e-12)."""
    base = dict(chunk_size=4, inner_clip=0.5)
    x, q, _, p = make_case(TitansOpConfig(**base), L=24, d=8)
    out = {}
    for rc in (False, True):
        y = titans_memory(x, q, p, TitansOpConfig(**base, recompute_chunks=rc))
        out[rc] = (y, grads(y, p))
    assert err(out[True][0], out[False][0]) <= 1e-12
    for a, b in zip(out[True][1], out[False][1]):
        assert err(a, b) <= 1e-12


def test_backward_memory_falls_with_the_number_of_chunks():
    """§2.8 / issue 3 item 3: what the chunked form keeps for the backward is per chunk (boundary W, m, ΔW) plus
    per-token activations of width d, not per-token states: at L = 64, d = 32 (measured 2.95 MB at C = 16 vs
    6.08 MB at C = 4, and 9.65 MB for the naive token loop at C = 16)."""
    kept = {}
    for impl, c in (("chunked", 4), ("chunked", 16), ("naive", 16)):
        cfg = TitansOpConfig(chunk_size=c, inner_clip=0.5)
        x, q, _, p = make_case(cfg, B=1, H=1, L=64, d=32)
        kept[impl, c] = _saved_bytes(lambda: titans_memory(x, q, p, cfg, impl=impl))[1]
    assert kept["chunked", 16] < 0.6 * kept["chunked", 4]
    assert kept["chunked", 16] < 0.4 * kept["naive", 16]


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_fused_grids_equal_two_passes(impl, monkeypatch):
    """C_proj = C_mem runs all five memories in one chunk loop; it must equal the two-pass driver (§3.6): y, every
    gradient and the streamed state, fp64 ≤ 1e-12, with update dropout on (the same masks) and a mid-chunk split."""
    import hope_megatron.ops.titans as titans_mod

    cfg = TitansOpConfig(chunk_size=4, inner_clip=0.5, update_dropout=0.3)
    x, q, _, p = make_case(cfg, L=14, d=4)
    out = {}
    for fused in (True, False):
        monkeypatch.setattr(titans_mod, "_FUSE_GRIDS", fused)
        torch.manual_seed(3)
        y1, state = titans_memory(x[:, :, :6], q[:, :, :6], p, cfg, return_state=True, impl=impl, training=True)
        y2, state = titans_memory(x[:, :, 6:], q[:, :, 6:], p, cfg, state=state, return_state=True, impl=impl,
                                  training=True)
        y = torch.cat([y1, y2], dim=2)
        out[fused] = (y, grads(y, p), state.state_dict())
    assert err(out[True][0], out[False][0]) <= 1e-12
    for a, b in zip(out[True][1], out[False][1]):
        assert err(a, b) <= 1e-12
    assert out[True][2].keys() == out[False][2].keys()
    for k, v in out[False][2].items():
        if torch.is_tensor(v):
            assert err(out[True][2][k], v) <= 1e-12, k


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_clip_stats_count_every_clipped_write(impl):
    """stats= reports one entry per (memory, sequence, head, closed chunk) write: all active with a tiny clip (f < 1,
    Σf = c·Σ 1/‖Δ‖ < writes), none with a huge one (Σf = writes), nothing with the clip off."""
    B, H, L, C = 2, 3, 13, 4           # 3 closed chunks; with return_state every one writes
    counts = {}
    for clip in (1e-6, 1e6, float("inf")):
        cfg = TitansOpConfig(chunk_size=C, inner_clip=clip)
        x, q, static, params = make_case(cfg, B=B, H=H, L=L)
        stats = {}
        titans_memory(x, q, params, cfg, static=static or None, return_state=True, impl=impl, stats=stats)
        counts[clip] = {k: v.item() for k, v in stats.items()}
    writes = len(cfg.memory_names()) * B * H * (L // C)
    assert counts[1e-6]["clip_writes"] == writes and counts[1e-6]["clip_hits"] == writes
    assert counts[1e-6]["clip_scale_sum"] < 1e-3 * writes
    assert counts[1e6] == {"clip_writes": writes, "clip_hits": 0.0, "clip_scale_sum": writes}
    assert counts[float("inf")] == {}


def test_impl_names_are_checked_and_triton_falls_back_with_one_line(caplog):
    cfg = TitansOpConfig(chunk_size=4)
    x, q, static, params = make_case(cfg, dtype=torch.float32)
    with pytest.raises(ValueError, match="impl='cuda' is unknown"):
        titans_memory(x, q, params, cfg, impl="cuda")
    with pytest.raises(ValueError, match="impl='fast' is unknown"):
        TitansOpConfig(impl="fast")
    ref = titans_memory(x, q, params, cfg, impl="chunked")
    assert torch.equal(titans_memory(x, q, params, cfg, impl="auto"), ref)   # CPU tensors: auto = chunked
