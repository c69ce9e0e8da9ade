"""The fused Triton kernels (hope_megatron/ops/triton) held to the chunked form: hope_math §8 row 15 on CPU.

Triton's interpreter (TRITON_INTERPRET=1, set here unless the caller chose) runs the @triton.jit kernels on CPU
tensors, so every number below is the kernels' own arithmetic: fp64 runs agree with the chunked form to rounding
(≤ 1e-12) in y and every gradient, which checks each hand-derived backward term; fp32 runs agree within 1e-5 or within
the chunked form's own fp32 error against fp64. One test compiles the kernels for sm_90 (no GPU needed) to hold them to
a GPU's shared memory, which the interpreter cannot see.
"""

import json
import logging
import os
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from hope_megatron.ops import TitansOpConfig, TitansState, titans_memory  # noqa: E402
from hope_megatron.ops import triton as tri  # noqa: E402

from .test_ops_titans_memory import err, make_case  # noqa: E402

F64, F32 = torch.float64, torch.float32
pytestmark = pytest.mark.skipif(not tri.interpreting(), reason="runs the kernels under TRITON_INTERPRET=1 on CPU")


def run(cfg, impl, dtype=F64, B=1, H=2, L=11, d=4, training=False, return_state=True, seed=0):
    """y, the final state's tensors and the gradients of every input of a loss that reads y and the final state."""
    x, q, static, params = make_case(cfg, B=B, H=H, L=L, d=d, dtype=dtype, seed=seed)
    leaves = {"x": x.requires_grad_(), "q": q.requires_grad_(),
              **{f"static_{c}": t.requires_grad_() for c, t in static.items()}, **params}
    torch.manual_seed(7)                                              # the same update-dropout draws for both forms
    tri.LAUNCHES.clear()
    out = titans_memory(x, q, params, cfg, static=static or None, impl=impl, return_state=return_state,
                        training=training)
    y, state = out if return_state else (out, None)
    wy = torch.sin(torch.arange(y.numel(), dtype=F64)).view_as(y).to(y.dtype)
    loss = (y * wy).sum()
    tensors = {"y": y}
    if state is not None:
        for kind, store in (("W", state.weights), ("m", state.momentum)):
            for m, ws in store.items():
                for i, w in enumerate(ws):
                    loss = loss + 0.3 * (w * torch.cos(w.detach())).sum()
                    tensors[f"{kind}.{m}.{i}"] = w
        tensors.update({f"pending.{c}": t for c, t in state.pending.items()})
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    if impl == "triton":  # a silent fallback would compare the chunked form with itself
        assert tri.LAUNCHES["titans_fwd"] == 1 and tri.LAUNCHES["titans_bwd"] == 1, dict(tri.LAUNCHES)
    out = {n: t.detach() for n, t in tensors.items()}
    out.update({f"grad.{n}": g for n, g in zip(leaves, grads) if g is not None})
    return out


def assert_close(got, want, tol, label=""):
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    worst = max(((err(got[n].double(), want[n].double()), n) for n in want), default=(0.0, ""))
    assert worst[0] <= tol, f"{label}: {worst[1]} differs by {worst[0]:.2e} (> {tol:.0e})"


CONFIGS = {
    "default": dict(),
    "no_clip": dict(inner_clip=float("inf")),
    "clip": dict(inner_clip=0.8),                      # active on 17 of 30 (memory, head, chunk) writes
    "no_momentum": dict(momentum=0.0),
    "no_dgd": dict(dgd=False),
    "no_decay": dict(decay=False),
    "no_self_mod": dict(self_mod=False, inner_clip=0.5),
    "titans_lmm": dict(self_mod=False, dgd=False),
    "deltanet_like": dict(self_mod=False, dgd=False, decay=False, momentum=0.0, memory_depth=1),
    "no_inner_k": dict(inner_k=False),
    "no_inner_v": dict(inner_v=False),
    "linear": dict(memory_depth=1, inner_clip=0.2),
    "expansion_2": dict(expansion=2),
    "update_dropout": dict(update_dropout=0.3),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_triton_equals_chunked_fp64(name):
    """y, the final state (weights, momentum, pending tokens) and every gradient: fp64 ≤ 1e-12 (hope_math §8 row 15).
    L = 11, C = 4: three chunks, the last one open, and n_r = 2, so the backward recomputes two segments."""
    cfg = TitansOpConfig(chunk_size=4, **CONFIGS[name])
    training = cfg.update_dropout > 0
    want = run(cfg, "chunked", training=training)
    got = run(cfg, "triton", training=training)
    assert_close(got, want, 1e-12, name)
    assert want["grad.x"].abs().max() > 0 if cfg.self_mod else True


@pytest.mark.parametrize("chunk,head_dim,length", [(8, 32, 21), (16, 64, 35), (32, 128, 40), (64, 32, 70)])
def test_triton_fp32_shapes(chunk, head_dim, length):
    """The configs' chunk sizes and head widths in fp32 (L not a multiple of C): y and every gradient within 1e-5 of
    the chunked form, or within 3× the chunked form's own fp32 error against fp64 (small, cancelling gradients such
    as M_α's readout sit at ~1e-5 relative in both forms)."""
    cfg = TitansOpConfig(chunk_size=chunk, inner_clip=0.3)
    shape = dict(B=1, H=1, L=length, d=head_dim, return_state=False)
    ref = run(cfg, "chunked", **shape)
    c32 = run(cfg, "chunked", dtype=F32, **shape)
    t32 = run(cfg, "triton", dtype=F32, **shape)
    for n in ref:
        own = err(c32[n].double(), ref[n])
        gap = err(t32[n], c32[n])
        assert gap <= max(1e-5, 3 * own), f"{n}: triton vs chunked {gap:.2e}, chunked's own fp32 error {own:.2e}"
        assert err(t32[n].double(), ref[n]) <= max(1e-5, 4 * own), n


def test_triton_bf16_inputs_against_fp64():
    """bf16 inputs, fp32 state (hope_math §3.7): y within 2e-2, gradients within 5e-2 of the fp64 chunked form."""
    cfg = TitansOpConfig(chunk_size=8, inner_clip=0.3)
    shape = dict(B=2, H=1, L=19, d=16, return_state=False)
    ref = run(cfg, "chunked", **shape)
    got = run(cfg, "triton", dtype=torch.bfloat16, **shape)
    assert got["y"].dtype == torch.bfloat16 and got["grad.x"].dtype == torch.bfloat16
    assert err(got["y"].double(), ref["y"]) <= 2e-2
    for n in ref:
        assert err(got[n].double(), ref[n]) <= 5e-2, n


def test_triton_streaming_equals_one_call():
    """Segments split mid-chunk, state carried (the open chunk finished by the chunked form, the rest by the kernels):
    y and the final state equal one call (fp64 ≤ 1e-12), and the carried state equals the chunked form's."""
    cfg = TitansOpConfig(chunk_size=4, inner_clip=0.3)
    x, q, _, params = make_case(cfg, B=2, H=1, L=17, d=4)
    y_all, s_all = titans_memory(x, q, params, cfg, impl="triton", return_state=True)
    ys, state = [], None
    for a, b in ((0, 6), (6, 7), (7, 13), (13, 17)):
        y, state = titans_memory(x[:, :, a:b], q[:, :, a:b], params, cfg, state=state, impl="triton",
                                 return_state=True)
        ys.append(y)
    assert err(torch.cat(ys, dim=2), y_all) <= 1e-12
    _, s_chunked = titans_memory(x, q, params, cfg, impl="chunked", return_state=True)
    for other in (state, s_chunked):
        assert other.position == s_all.position == 17
        for key, t in s_all.state_dict().items():
            if key != "position":
                assert err(other.state_dict()[key], t) <= 1e-12, key
    assert isinstance(TitansState.from_state_dict(state.state_dict()), TitansState)


def test_triton_clip_stats_equal_chunked():
    cfg = TitansOpConfig(chunk_size=4, inner_clip=0.8)
    x, q, _, params = make_case(cfg, B=1, H=2, L=13, d=4)
    got, want = {}, {}
    titans_memory(x, q, params, cfg, impl="triton", return_state=True, stats=got)
    titans_memory(x, q, params, cfg, impl="chunked", return_state=True, stats=want)
    assert got.keys() == want.keys() and 0 < want["clip_hits"].item() < want["clip_writes"].item()
    for k in want:
        assert abs(got[k].item() - want[k].item()) <= 1e-9, k


def test_one_launch_each_way_whatever_the_length():
    """The whole chunk loop is one kernel launch forward and one backward, at 2 and at 8 chunks."""
    cfg = TitansOpConfig(chunk_size=4, inner_clip=0.3)
    for length in (8, 32):
        x, q, _, params = make_case(cfg, B=1, H=1, L=length, d=4, dtype=F32)
        tri.LAUNCHES.clear()
        y = titans_memory(x.requires_grad_(), q, params, cfg, impl="triton")
        assert dict(tri.LAUNCHES) == {"titans_fwd": 1}
        y.sum().backward()
        assert dict(tri.LAUNCHES) == {"titans_fwd": 1, "titans_bwd": 1}


def test_saved_bytes_match_the_formula():
    """What the backward keeps (saved_tensors_hooks) equals ops.triton.saved_bytes: inputs, uint8 keep-masks and
    every n_r-th boundary state; it grows with √chunks, not with chunks × state."""
    cfg = TitansOpConfig(chunk_size=4, inner_clip=0.3, update_dropout=0.2)
    B, H, L, d = 2, 2, 64, 8
    x, q, _, params = make_case(cfg, B=B, H=H, L=L, d=d, dtype=F32)
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        titans_memory(x.requires_grad_(), q, params, cfg, impl="triton", training=True)
    inputs = {x.untyped_storage().data_ptr(), q.untyped_storage().data_ptr()}
    assert inputs <= seen.keys()
    kept = sum(seen.values()) - sum(t.untyped_storage().nbytes() for t in params.values()
                                    if t.untyped_storage().data_ptr() in seen)
    assert kept == tri.saved_bytes(cfg, B, H, L, d, input_bytes=4, training=True)
    # issue 14's target: <= 64 MiB per layer and sequence at the pilot shape (L 2048, H 8, d_h 64, C 8, bf16 inputs)
    pilot = TitansOpConfig(chunk_size=8, inner_clip=0.3, update_dropout=0.2)
    assert tri.saved_bytes(pilot, 1, 8, 2048, 64, input_bytes=2, training=True) == 48 * 2**20 <= 64 * 2**20


def test_unsupported_settings_fall_back_with_one_line(caplog):
    cfg = TitansOpConfig(chunk_size=4, inner_q=True)
    x, q, _, params = make_case(cfg, dtype=F32)
    tri._SAID.clear()
    with caplog.at_level(logging.WARNING, logger="hope_megatron.ops"):
        y = titans_memory(x, q, params, cfg, impl="triton")
        titans_memory(x, q, params, cfg, impl="triton")
    assert torch.equal(y, titans_memory(x, q, params, cfg, impl="chunked"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["titans_memory: impl='triton' runs the chunked form instead: inner_q=True (M_q needs its own "
                     "projection pass)."]
    assert tri.unsupported(x, TitansOpConfig(chunk_size=128), None, False).startswith("chunk size 128")
    assert tri.unsupported(x, TitansOpConfig(), None, False) is None


def test_kernels_compile_for_sm90_within_shared_memory():
    """The pilot layer's kernels (d_h 64, C 8, bf16 inputs, every switch on) compile for Hopper without a GPU and
    need less shared memory than an A100 or H100 has per block (the interpreter cannot see this limit; software
    pipelining once made the backward need 292 KB). Compiled in a child process with the interpreter off."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run([sys.executable, "-m", "hope_megatron.ops.triton.compile_check", "--arch", "90"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    shared = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(shared) == {"_titans_fwd_kernel", "_titans_bwd_kernel"}
    for name, nbytes in shared.items():
        assert 0 < nbytes <= 160 * 1024, (name, nbytes)


def test_inference_mixer_streams_on_the_kernels():
    """The plain-PyTorch mixer (hope_megatron.inference) with impl='triton': whole-sequence and streamed (two calls
    with the state carried) outputs equal the chunked form's, fp32."""
    import dataclasses

    from hope_megatron.inference.layers import TitansMixer

    torch.manual_seed(0)
    op = TitansOpConfig(chunk_size=4, inner_clip=0.3)
    mixer = TitansMixer({"memory_heads": 2, "memory_head_dim": 8, "hidden_size": 16, "add_bias_linear": False}, op)
    with torch.no_grad():
        mixer.conv_weight.normal_(0, 0.5)
    h = torch.randn(2, 14, 16)
    want, _ = mixer(h)
    mixer.op_cfg = dataclasses.replace(op, impl="triton")
    tri.LAUNCHES.clear()
    got, _ = mixer(h)
    first, state = mixer(h[:, :6])
    second, _ = mixer(h[:, 6:], state)
    assert tri.LAUNCHES["titans_fwd"] == 3
    assert err(got, want) <= 1e-5 and err(torch.cat([first, second], dim=1), want) <= 1e-5


def test_gpu_self_check_passes_and_catches_a_wrong_kernel(monkeypatch):
    """The once-per-configuration check that guards the default GPU path (function.gpu_problem): the kernels agree
    with the chunked form on a seeded problem with update dropout; a kernel that is off by 1% is refused with one
    sentence, so titans_memory would run the chunked form."""
    from hope_megatron.ops.triton import function

    cfg = TitansOpConfig(chunk_size=4, inner_clip=0.3, update_dropout=0.2)
    x = torch.zeros(1, 1, 8, 8)
    function._CHECKED.clear()
    assert function.self_check(cfg, F32, x.device, True, 8) < function.SELF_CHECK_TOLERANCE[F32]
    assert function.gpu_problem(cfg, x, True) is None
    real = function._run_kernels

    def off_by_one_percent(*args, **kwargs):
        y, state = real(*args, **kwargs)
        return y * 1.01, state

    monkeypatch.setattr(function, "_run_kernels", off_by_one_percent)
    function._CHECKED.clear()
    problem = function.gpu_problem(cfg, x, True)
    assert problem.startswith("the kernels disagree with the chunked form on this device (relative error 1.0e-02")
    function._CHECKED.clear()


def test_packed_documents_on_the_kernels_equal_each_document_alone():
    """--hope-reset-at-eod (ops/documents.py) with impl='triton': a packed [doc₁ EOD doc₂] row gives each document's
    outputs and the packed call's gradients as if each document ran alone on the chunked form (fp64 ≤ 1e-12)."""
    from hope_megatron.ops.documents import titans_memory_documents

    cfg = TitansOpConfig(chunk_size=4, inner_clip=0.5)
    L, cut = 19, 7
    x, q, st, p = make_case(cfg, B=2, H=1, L=L, d=4)
    starts = torch.zeros(2, L, dtype=torch.bool)
    starts[0, cut] = True
    y = titans_memory_documents(x, q, p, cfg, starts, static=st or None, impl="triton")
    parts = [(0, 0, cut), (0, cut, L), (1, 0, L)]
    alone = [titans_memory(x[b:b + 1, :, s:e], q[b:b + 1, :, s:e], p, cfg, impl="chunked") for b, s, e in parts]
    for (b, s, e), want in zip(parts, alone):
        assert err(y[b:b + 1, :, s:e], want) <= 1e-12, (b, s, e)
    g_packed = torch.autograd.grad(y.square().sum(), list(p.values()))
    g_alone = torch.autograd.grad(sum(a.square().sum() for a in alone), list(p.values()))
    for name, a, b in zip(p, g_packed, g_alone):
        assert err(a, b) <= 1e-12, name


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_update_dropout_masks_are_the_slice_of_all_heads(impl):
    """Under dropout_heads(first, total) the masks are drawn over every head and sliced, so heads 2..3 of a 4-head
    layer (a TP=2 rank's share) see exactly the masks the whole layer gives them (issue 15's layout parity)."""
    from hope_megatron.ops.titans import dropout_heads

    cfg = TitansOpConfig(chunk_size=4, inner_clip=0.3, update_dropout=0.3)
    x, q, _, params = make_case(cfg, B=1, H=4, L=9, d=4)
    torch.manual_seed(3)
    whole = titans_memory(x, q, params, cfg, impl=impl, training=True)
    part = {n: t[2:4] for n, t in params.items()}
    torch.manual_seed(3)
    with dropout_heads(2, 4):
        share = titans_memory(x[:, 2:4], q[:, 2:4], part, cfg, impl=impl, training=True)
    assert err(share, whole[:, 2:4]) <= 1e-12
    torch.manual_seed(3)
    plain = titans_memory(x[:, 2:4], q[:, 2:4], part, cfg, impl=impl, training=True)   # its own draws differ
    assert err(plain, whole[:, 2:4]) > 1e-6
