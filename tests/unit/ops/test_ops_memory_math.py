"""Building blocks of the Titans op: hope_math §8 rows 1-4 (closed-form G, WY identity, chunk advance vs token loop,
GDN mapping) and the causal conv. err(a, b) = ‖a − b‖ / max(‖b‖, 1e-12)."""

import pytest
import torch

from hope_megatron.ops import TitansOpConfig, causal_conv1d
from hope_megatron.ops.chunked import _ChunkStep, _unit_lower_inverse, advance_chunk, wy_factor
from hope_megatron.ops.memory_mlp import _SiluGradMul, _ZWt, apply_clipped_delta, boundary_terms, l2norm, memory_eval
from hope_megatron.ops.naive import advance_token_loop

F64 = torch.float64


def err(a, b):
    return ((a - b).norm() / max(b.norm().item(), 1e-12)).item()


@pytest.mark.parametrize("depth,r", [(2, 1), (2, 2), (1, 1)])
def test_closed_form_inner_gradient_matches_autograd(depth, r):
    """§8 row 1: G₁ = e hᵀ, G₂ = δ kᵀ (or G = 2(Wk − v̂)kᵀ) equal autograd of ℓ = ‖M(k) − v̂‖², v̂ detached."""
    g = torch.Generator().manual_seed(0)
    B, H, n, d = 2, 3, 5, 4
    shapes = [(B, H, d, r * d), (B, H, r * d, d)] if depth == 2 else [(B, H, d, d)]
    ws = [torch.randn(s, generator=g, dtype=F64, requires_grad=True) for s in shapes]
    k = l2norm(torch.randn(B, H, n, d, generator=g, dtype=F64))
    v_hat = torch.randn(B, H, n, d, generator=g, dtype=F64)
    _, factors, zw = boundary_terms([w.detach() for w in ws], k, v_hat, self_target=False)
    for t in range(n):
        loss = (memory_eval(ws, k[:, :, t:t + 1]) - v_hat[:, :, t:t + 1]).square().sum()
        auto = torch.autograd.grad(loss, ws)
        for (u, z), gw in zip(factors, auto):
            closed = u[:, :, t, :, None] * z[:, :, t, None, :]
            assert err(closed, gw) <= 1e-12
    for (_, z), w, z_w in zip(factors, ws, zw):  # the DGD term ẑ Wᵀ handed to the advance (§3.4)
        assert err(z_w, z @ w.detach().transpose(-1, -2)) <= 1e-12


def test_fused_silu_derivative_and_zwt_gradients():
    """The two small autograd Functions under boundary_terms: g ⊙ σ′(a) equals the formula of hope_math §1 and
    gradchecks in g and a (so σ″ is right); z Wᵀ gradchecks with z shared across the memory axis, and W's gradient
    comes back contiguous (the point of the Function)."""
    g = torch.Generator().manual_seed(4)
    x, a = torch.randn(2, 3, 4, generator=g, dtype=F64), 3 * torch.randn(2, 3, 4, generator=g, dtype=F64)
    s = torch.sigmoid(a)
    assert err(_SiluGradMul.apply(x, a), x * s * (1 + a * (1 - s))) <= 1e-15
    assert torch.autograd.gradcheck(_SiluGradMul.apply, (x.requires_grad_(True), a.requires_grad_(True)))
    z = torch.randn(2, 5, 3, generator=g, dtype=F64, requires_grad=True)       # shared by the 4 "memories"
    w = torch.randn(4, 2, 6, 3, generator=g, dtype=F64, requires_grad=True)
    assert err(_ZWt.apply(z, w), z @ w.mT) <= 1e-15
    assert torch.autograd.gradcheck(_ZWt.apply, (z, w))
    _ZWt.apply(z, w).sum().backward()
    assert w.grad.is_contiguous() and w.grad.shape == w.shape and z.grad.shape == z.shape


def test_wy_factor_equals_explicit_product():
    """§8 row 2: Π_t (I − b_t ẑ_t ẑ_tᵀ) = I − Ẑᵀ T Ẑ with T upper triangular."""
    g = torch.Generator().manual_seed(1)
    n, d = 7, 5
    z = l2norm(torch.randn(3, n, d, generator=g, dtype=F64))
    b = torch.rand(3, n, generator=g, dtype=F64) * 1.5
    t_mat = wy_factor(z, b)
    prod = torch.eye(d, dtype=F64).expand(3, d, d)
    for t in range(n):
        prod = prod @ (torch.eye(d, dtype=F64) - b[:, t, None, None] * z[:, t, :, None] * z[:, t, None, :])
    assert err(torch.eye(d, dtype=F64) - z.transpose(-1, -2) @ t_mat @ z, prod) <= 1e-12
    assert torch.count_nonzero(torch.tril(t_mat, diagonal=-1)) == 0


def _advance_inputs(g, n, dtype, alpha_low, G=2, B=2, H=3, d_out=4, d_in=5, shared_z=False):
    ws = [torch.randn(G, B, H, d_out, d_in, generator=g, dtype=F64).to(dtype)]
    ms = [0.3 * torch.randn(G, B, H, d_out, d_in, generator=g, dtype=F64).to(dtype)]
    u = torch.randn(G, B, H, n, d_out, generator=g, dtype=F64).to(dtype)
    z = l2norm(torch.randn(*(() if shared_z else (G,)), B, H, n, d_in, generator=g, dtype=F64)).to(dtype)
    eta = (0.5 * torch.rand(B, H, n, generator=g, dtype=F64)).to(dtype)
    alpha = alpha_low + (1 - alpha_low) * torch.rand(B, H, n, generator=g, dtype=F64)
    return ws, ms, [(u, z)], eta, torch.log(alpha).to(dtype)


@pytest.mark.parametrize("beta", [0.0, 0.9])
@pytest.mark.parametrize("dgd", [True, False])
@pytest.mark.parametrize("n", [1, 3, 16, 64])
def test_chunk_advance_matches_token_loop_fp64(beta, dgd, n):
    """§8 row 3: the closed form (§3.4/§3.5) equals the token loop, α ∈ [1e-3, 1], fp64 ≤ 1e-10."""
    cfg = TitansOpConfig(momentum=beta, dgd=dgd)
    g = torch.Generator().manual_seed(n)
    args = _advance_inputs(g, n, F64, 1e-3, shared_z=(n == 3))
    (w_ref,), (m_ref,) = advance_token_loop(*args, cfg)
    (w_fast,), (m_fast,) = advance_chunk(*args, cfg)
    assert err(w_fast, w_ref) <= 1e-10
    assert err(m_fast, m_ref) <= 1e-10
    assert err(w_ref, args[0][0]) > 1e-3  # the chunk really moved the state


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_chunk_advance_matches_token_loop_fp32(beta):
    cfg = TitansOpConfig(momentum=beta)
    args64 = _advance_inputs(torch.Generator().manual_seed(7), 16, F64, 0.5)
    to32 = lambda a: [x.float() for x in a]  # noqa: E731
    args32 = (to32(args64[0]), to32(args64[1]), [tuple(to32(args64[2][0]))], args64[3].float(), args64[4].float())
    (w_ref,), _ = advance_token_loop(*args64, cfg)
    (w_fast,), _ = advance_chunk(*args32, cfg)
    assert err(w_fast.double(), w_ref) <= 1e-5


def test_gdn_mapping_matches_independent_gated_delta_loop():
    """§8 row 4 (CPU part): β = 0, DGD on is fla's gated delta rule S_t = α_t S + b_t(ṽ_t − α_t S ẑ_t)ẑ_tᵀ with
    ṽ = −α u and b = η/α (§3.3)."""
    cfg = TitansOpConfig(momentum=0.0, dgd=True)
    ws, ms, [(u, z)], eta, log_alpha = _advance_inputs(torch.Generator().manual_seed(3), 9, F64, 0.2)
    (w_fast,), _ = advance_chunk(ws, ms, [(u, z)], eta, log_alpha, cfg)
    alpha = log_alpha.exp()
    s = ws[0].clone()
    for t in range(9):
        a_t, b_t = alpha[..., t, None, None], (eta / alpha)[..., t, None, None]
        v_t, z_t = -alpha[..., t, None] * u[..., t, :], z[..., t, :]
        s = a_t * s + b_t * (v_t[..., :, None] - a_t * (s @ z_t[..., :, None])) * z_t[..., None, :]
    assert err(w_fast, s) <= 1e-12


def test_clip_bounds_the_chunk_delta_and_is_identity_when_inactive():
    """§8 row 9: ‖Δ‖_F ≤ c(1 + 1e-6) after the clip, the clipped Δ keeps its direction; an inactive clip (or
    c = ∞) gives start + Δ bitwise."""
    g = torch.Generator().manual_seed(5)
    start = [torch.randn(3, 2, 4, 6, generator=g, dtype=F64), torch.randn(3, 2, 6, 4, generator=g, dtype=F64)]
    deltas = [torch.randn(s.shape, generator=g, dtype=F64) for s in start]
    norms = torch.sqrt(sum(d.square().sum((-2, -1)) for d in deltas))
    c = norms.median().item()
    clipped = apply_clipped_delta(start, deltas, c)
    new_norms = torch.sqrt(sum((e - s).square().sum((-2, -1)) for s, e in zip(start, clipped)))
    inactive = norms <= c
    assert (new_norms <= c * (1 + 1e-6)).all()
    assert torch.allclose(new_norms[~inactive], torch.full_like(new_norms[~inactive], c), rtol=1e-12)
    for s, d, cl in zip(start, deltas, clipped):
        assert torch.equal(cl[inactive], (s + d)[inactive])
        assert not torch.equal(cl[~inactive], (s + d)[~inactive])
        scale = (c / norms)[~inactive][..., None, None]
        assert torch.allclose(cl[~inactive] - s[~inactive], scale * d[~inactive], rtol=0, atol=1e-13)
    unclipped = apply_clipped_delta(start, deltas, float("inf"))
    assert all(torch.equal(u, s + d) for u, s, d in zip(unclipped, start, deltas))


def _step_reference(spec, c_u, c_w, c_m, p, q, e_out, k_out, g, r, *tensors):
    """_ChunkStep's forward written out plainly (its docstring's formulas), differentiable by autograd."""
    nl, dgd, mom, beta, c = spec
    ws, ms, us, zs, zws = (tensors[i * nl:(i + 1) * nl] for i in range(5))
    n = us[0].shape[-2]
    mw = beta ** torch.arange(n - 1, -1, -1, dtype=F64)
    deltas, new_ms = [], []
    for w, m, u, z, zw in zip(ws, ms, us, zs, zws):
        rhs = c_u[..., None] * u
        if dgd:
            s = z @ z.mT
            rhs = rhs + c_w[..., None] * (z @ w.mT if zw is None else zw)
            if mom:
                rhs = rhs + c_m[..., None] * (z @ m.mT) + (q * s) @ u
            eye = torch.eye(n, dtype=F64)
            rr = torch.linalg.solve(eye + p * s, rhs)
        else:
            rr = rhs
        a = e_out[..., None] * rr + (k_out[..., None] * u if mom else 0)
        deltas.append(a.mT @ z + g[:, None, None] * w - (r[:, None, None] * m if mom else 0))
        new_ms.append(beta ** n * m + (mw[:, None] * u).mT @ z)
    norm = torch.sqrt(sum(d.square().sum((-2, -1)) for d in deltas))
    f = (c / norm).clamp(max=1.0)[..., None, None]
    return (*[w + f * d for w, d in zip(ws, deltas)], *new_ms), norm


@pytest.mark.parametrize("layers,dgd,momentum,shared_z,zw_given", [
    (2, True, True, False, True), (2, True, True, True, False), (1, True, False, True, True),
    (1, False, True, False, False), (2, False, False, True, False)])
def test_chunk_step_forward_and_full_gradcheck(layers, dgd, momentum, shared_z, zw_given):
    """_ChunkStep (the chunk's d-sized algebra and state write with its own backward) equals its formulas written
    plainly, with the clip active on some heads and not others, and passes a dense fp64 gradcheck of every input
    (gates included); Ẑ shared by all memories (k̂) and ẐWᵀ computed inside are both covered."""
    g = torch.Generator().manual_seed(11)
    G, N, n, do, di = 2, 3, 3, 3, 2
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    ws, ms = [rnd(G, N, do, di) for _ in range(layers)], [rnd(G, N, do, di) for _ in range(layers)]
    us, zs = [rnd(G, N, n, do) for _ in range(layers)], [rnd(1 if shared_z else G, N, n, di) for _ in range(layers)]
    zws = [(z @ w.mT).clone() if zw_given else None for z, w in zip(zs, ws)]
    low = lambda: 0.3 * torch.tril(rnd(N, n, n), diagonal=-1)  # noqa: E731
    gates = [-0.5 * rnd(N, n).abs(), 0.3 * rnd(N, n) if dgd else None, 0.3 * rnd(N, n) if dgd and momentum else None,
             low() if dgd else None, low() if dgd and momentum else None, rnd(N, n).abs(),
             0.3 * rnd(N, n) if momentum else None, 0.1 * rnd(N), 0.5 * rnd(N) if momentum else None]
    spec_inf = (layers, dgd, momentum, 0.7, float("inf"))
    ref, norms = _step_reference(spec_inf, *gates, *ws, *ms, *us, *zs, *zws)
    c = norms.flatten().sort().values[2:4].mean().item()  # between two heads' norms: away from the clip's kink
    spec = (layers, dgd, momentum, 0.7, c)
    ref, _ = _step_reference(spec, *gates, *ws, *ms, *us, *zs, *zws)
    out = _ChunkStep.apply(spec, *gates, *ws, *ms, *us, *zs, *zws)
    for o, e in zip(out, ref):
        assert err(o, e) <= 1e-13
    assert 0 < int((norms > c).sum()) < norms.numel()  # both branches of the clip are exercised
    inputs = [t.requires_grad_(True) if t is not None else None for t in (*gates, *ws, *ms, *us, *zs, *zws)]
    for sp in (spec, spec_inf):
        assert torch.autograd.gradcheck(lambda *ts: _ChunkStep.apply(sp, *ts), inputs, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("n", [1, 2, 3, 16, 17, 64])
def test_unit_lower_inverse_matches_triangular_solve(n):
    """(I + L)⁻¹ by the nilpotent product (used for R = (I + Φ)⁻¹ rhs, §3.4) equals a unit-triangular solve, reads only
    the strict lower part, and stays accurate for the largest Φ the gates allow: η ≤ η_max = 0.1, α = 1 and every
    ẑ equal give Φ = 0.1·tril₋₁(1), where powers of L are largest."""
    g = torch.Generator().manual_seed(5)
    eye = torch.eye(n, dtype=F64)
    cases = [0.3 * torch.randn(4, n, n, generator=g, dtype=F64), 0.1 * torch.ones(1, n, n, dtype=F64)]
    for low in cases:
        want = torch.linalg.solve_triangular(torch.tril(low, -1) + eye, eye.expand_as(low), upper=False)
        got = _unit_lower_inverse(low)  # diagonal and upper part of `low` are non-zero here and must be ignored
        assert err(got, want) <= 1e-12
        assert torch.equal(torch.triu(got, 1), torch.zeros_like(got)) and torch.equal(got.diagonal(0, -2, -1),
                                                                                      torch.ones(low.shape[:-1], dtype=F64))
        assert err(_unit_lower_inverse(low.float()).double(), want) <= 1e-5


def test_chunk_step_backward_allocates_two_state_buffers_per_layer():
    """_ChunkStep's docstring: with the clip active its backward reuses W' − W and G_Δ as the buffers of G_W and G_m,
    so it allocates 2 state-sized tensors per layer (plus one reused scratch for the ⟨·,·⟩ products), not 4."""
    from torch.utils._python_dispatch import TorchDispatchMode

    g = torch.Generator().manual_seed(3)
    G, N, n, do, di, nl = 2, 3, 4, 5, 7, 2
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    low = lambda: 0.3 * torch.tril(rnd(N, n, n), diagonal=-1)  # noqa: E731
    gates = [-0.5 * rnd(N, n).abs(), 0.3 * rnd(N, n), 0.3 * rnd(N, n), low(), low(), rnd(N, n).abs(), 0.3 * rnd(N, n),
             0.1 * rnd(N), 0.5 * rnd(N)]
    tensors = [rnd(G, N, do, di) for _ in range(2 * nl)] + [rnd(G, N, n, do) for _ in range(nl)] + \
        [rnd(G, N, n, di) for _ in range(nl)] + [None] * nl
    inputs = [t.requires_grad_(True) if t is not None else None for t in (*gates, *tensors)]
    out = _ChunkStep.apply((nl, True, True, 0.9, 1e-3), *inputs)  # c = 1e-3: the clip is active on every head
    grads = [rnd(*o.shape) for o in out]  # handed in directly: nothing but _ChunkStep's backward runs below
    state = (G, N, do, di)

    class Fresh(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            res = func(*args, **(kwargs or {}))
            ins = {a.untyped_storage().data_ptr() for a in [*args, *(kwargs or {}).values()] if isinstance(a, torch.Tensor)}
            for r in (res if isinstance(res, (tuple, list)) else [res]):
                if isinstance(r, torch.Tensor) and tuple(r.shape) == state and r.untyped_storage().data_ptr() not in ins:
                    self.count += 1
            return res

    with Fresh() as mode:
        torch.autograd.grad(out, [t for t in inputs if t is not None], grads)
    assert mode.count == 2 * nl + 1


def test_causal_conv_matches_definition_and_streams():
    """§2.1: conv(a)_t = Σ_j w_j a_{t−j} with zeros before the start; pieces with the carried tail == whole."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 11, 3, generator=g, dtype=F64)
    w = torch.randn(3, 4, generator=g, dtype=F64)
    y, tail = causal_conv1d(x, w)
    ref = torch.zeros_like(x)
    for t in range(11):
        for j in range(4):
            if t - j >= 0:
                ref[:, t] += w[:, j] * x[:, t - j]
    assert err(y, ref) <= 1e-14
    assert torch.equal(tail, x[:, -3:])
    parts, state = [], None
    for a, b in ((0, 2), (2, 3), (3, 9), (9, 11)):
        yp, state = causal_conv1d(x[:, a:b], w, state)
        parts.append(yp)
    assert err(torch.cat(parts, 1), y) <= 1e-14
    with pytest.raises(ValueError, match="tail"):
        causal_conv1d(x, w, torch.zeros(2, 2, 3, dtype=F64))
