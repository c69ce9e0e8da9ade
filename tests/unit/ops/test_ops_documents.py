"""Packed documents (`--hope-reset-at-eod`, hope_math §2.7; issue 16 item 3): a document start acts as a sequence
start for the memory (meta-init state, chunk grid restarted) and for the conv (no look-back); and the conv takes a
zero-length segment (item 6). Chunked form here; the Triton kernel joins through the same public titans_memory."""

import pytest
import torch

from hope_megatron.ops import TitansOpConfig, causal_conv1d, titans_memory
from hope_megatron.ops.documents import DocumentStates, document_starts, titans_memory_documents
from tests.unit.ops.test_ops_titans_memory import err, make_case

F64 = torch.float64
OPS = {
    "hope": dict(chunk_size=4, inner_clip=0.5),
    "hope_cproj": dict(chunk_size=4, proj_chunk_size=3, update_dropout=0.0),
    "titans": dict(chunk_size=4, self_mod=False, dgd=False),
    "deltanet": dict(chunk_size=1, self_mod=False, memory_depth=1, momentum=0.0, dgd=False, decay=False,
                     read_after_update=True, zero_init=True, eta_max=0.5),
}
L, CUT = 23, 9  # row 0 packs [doc1 (9 tokens, ending in EOD) | doc2 (14)]; row 1 is one document


def _slice(t, b, s, e):
    return t[b:b + 1, :, s:e]


@pytest.mark.parametrize("case", list(OPS))
def test_packed_documents_equal_each_document_alone(case):
    cfg = TitansOpConfig(**OPS[case])
    x, q, st, p = make_case(cfg, B=2, H=2, L=L, d=4)
    starts = torch.zeros(2, L, dtype=torch.bool)
    starts[0, CUT] = True
    y = titans_memory_documents(x, q, p, cfg, starts, static=st, impl="chunked")
    parts = [(0, 0, CUT), (0, CUT, L), (1, 0, L)]
    alone = [titans_memory(_slice(x, b, s, e), _slice(q, b, s, e), p, cfg, impl="chunked",
                           static={c: _slice(t, b, s, e) for c, t in st.items()} or None) for b, s, e in parts]
    for (b, s, e), want in zip(parts, alone):
        assert err(y[b:b + 1, :, s:e], want) < 1e-13, (case, b, s, e)
    # the outer gradient of the packed call is the sum over its documents (gather/scatter are exact)
    g_packed = torch.autograd.grad(y.square().sum(), list(p.values()), allow_unused=True)
    g_alone = torch.autograd.grad(sum(a.square().sum() for a in alone), list(p.values()), allow_unused=True)
    for name, a, b in zip(p, g_packed, g_alone):
        assert (a is None) == (b is None) and (a is None or err(a, b) < 1e-12), name


def test_streamed_documents_equal_the_whole_call():
    """Cuts at any token (inside a document, right at a start, right after one) give the whole call's outputs and
    exact per-row final states: a doc-2 state continued in a later call equals doc 2 run alone."""
    cfg = TitansOpConfig(chunk_size=4, proj_chunk_size=3, inner_clip=0.5)
    x, q, _, p = make_case(cfg, B=2, H=2, L=L, d=4)
    starts = torch.zeros(2, L, dtype=torch.bool)
    starts[0, CUT] = True
    starts[1, 5] = True
    whole, whole_state = titans_memory_documents(x, q, p, cfg, starts, return_state=True)
    for cuts in ([0, 7, 9, 16, L], [0, 5, 10, L]):
        state, ys = None, []
        for s, e in zip(cuts[:-1], cuts[1:]):
            y, state = titans_memory_documents(x[:, :, s:e], q[:, :, s:e], p, cfg, starts[:, s:e], state=state,
                                               return_state=True)
            ys.append(y)
        assert isinstance(state, DocumentStates) and len(state) == 2
        assert err(torch.cat(ys, dim=2), whole) < 1e-13, cuts
        for a, b in zip(state, whole_state):
            assert a.position == b.position and err(a.weights["mem"][0], b.weights["mem"][0]) < 1e-13
    _, alone = titans_memory(x[:1, :, CUT:], q[:1, :, CUT:], p, cfg, return_state=True)
    assert whole_state[0].position == L - CUT and err(whole_state[0].weights["mem"][1], alone.weights["mem"][1]) < 1e-13


def test_document_starts_from_tokens():
    tokens = torch.tensor([[5, 2, 7, 2, 2, 9], [1, 1, 1, 1, 1, 2]])
    want = torch.tensor([[0, 0, 1, 0, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(document_starts(tokens, eod=2, first=torch.tensor([False, True])), want)


def test_conv_does_not_look_back_across_a_start_even_across_segments():
    torch.manual_seed(0)
    x, w = torch.randn(2, 12, 3, dtype=F64), torch.randn(3, 4, dtype=F64)
    starts = torch.zeros(2, 12, dtype=torch.bool)
    starts[0, 5] = starts[1, 10] = True
    y, tail = causal_conv1d(x, w, starts=starts)
    for b, s in ((0, 5), (1, 10)):
        before, _ = causal_conv1d(x[b:b + 1, :s], w)
        after, _ = causal_conv1d(x[b:b + 1, s:], w)
        assert torch.allclose(y[b:b + 1], torch.cat([before, after], dim=1), rtol=0, atol=1e-14)
    # pieces with the carried tail: the start at 10 (one token before a cut at 11) must not leak into 11..
    y1, t1 = causal_conv1d(x[:, :11], w, starts=starts[:, :11])
    y2, t2 = causal_conv1d(x[:, 11:], w, tail=t1, starts=starts[:, 11:])
    assert torch.allclose(torch.cat([y1, y2], dim=1), y, rtol=0, atol=1e-14) and torch.equal(t2, tail)
    assert torch.equal(t1[1, :2], torch.zeros(2, 3, dtype=F64))  # tail entries before row 1's start are zeroed


def test_conv_takes_a_zero_length_segment():
    """titans_memory accepts L = 0 (a stream fed an empty piece); the conv must too, and carry its tail on."""
    w, tail = torch.randn(3, 4), torch.randn(2, 3, 3)
    y, new_tail = causal_conv1d(torch.zeros(2, 0, 3), w, tail=tail)
    assert y.shape == (2, 0, 3) and torch.equal(new_tail, tail)
    y, new_tail = causal_conv1d(torch.zeros(2, 0, 3), w)
    assert y.shape == (2, 0, 3) and torch.equal(new_tail, torch.zeros(2, 3, 3))
