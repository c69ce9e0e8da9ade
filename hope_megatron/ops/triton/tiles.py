"""Tile I/O of the Titans kernels (kernels.py): masked loads and stores of row-major matrices, token rows and vectors
at padded block sizes, the copy of one program's state between buffers, and each program's coordinates. The math on the
tiles is chunk_math.py; the chunk loops that string both together are kernels.py."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(ptr, O, I, BO: tl.constexpr, BI: tl.constexpr):
    """[BO, BI] tile of a row-major [O, I] matrix, zero-padded."""
    o = tl.arange(0, BO)
    i = tl.arange(0, BI)
    return tl.load(ptr + o[:, None] * I + i[None, :], mask=(o[:, None] < O) & (i[None, :] < I), other=0.0)


@triton.jit
def _put(ptr, x, O, I, BO: tl.constexpr, BI: tl.constexpr):
    o = tl.arange(0, BO)
    i = tl.arange(0, BI)
    tl.store(ptr + o[:, None] * I + i[None, :], x.to(ptr.dtype.element_ty), mask=(o[:, None] < O) & (i[None, :] < I))


@triton.jit
def _rows(ptr, n, W, BC: tl.constexpr, BW: tl.constexpr, CDT: tl.constexpr):
    """Rows 0..n−1 of a row-major [*, W] block starting at ptr, as a [BC, BW] tile in the compute dtype."""
    t = tl.arange(0, BC)
    c = tl.arange(0, BW)
    return tl.load(ptr + t[:, None] * W + c[None, :], mask=(t[:, None] < n) & (c[None, :] < W), other=0).to(CDT)


@triton.jit
def _put_rows(ptr, x, n, W, BC: tl.constexpr, BW: tl.constexpr):
    t = tl.arange(0, BC)
    c = tl.arange(0, BW)
    tl.store(ptr + t[:, None] * W + c[None, :], x.to(ptr.dtype.element_ty), mask=(t[:, None] < n) & (c[None, :] < W))


@triton.jit
def _vec(ptr, n, BC: tl.constexpr, CDT: tl.constexpr):
    t = tl.arange(0, BC)
    return tl.load(ptr + t, mask=t < n, other=0).to(CDT)


@triton.jit
def _put_vec(ptr, x, n, BC: tl.constexpr):
    t = tl.arange(0, BC)
    tl.store(ptr + t, x.to(ptr.dtype.element_ty), mask=t < n)


@triton.jit
def _copy_state(w1_src, w2_src, m1_src, m2_src, w1_dst, w2_dst, m1_dst, m2_dst,
                D, R, G: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr, DEPTH: tl.constexpr):
    """Copy one program's state (every memory of the group) between buffers of the same per-program layout."""
    for g in range(G):
        if DEPTH == 2:
            _put(w1_dst + g * D * R, _tile(w1_src + g * D * R, D, R, BD, BR), D, R, BD, BR)
            _put(w2_dst + g * R * D, _tile(w2_src + g * R * D, R, D, BR, BD), R, D, BR, BD)
            _put(m1_dst + g * D * R, _tile(m1_src + g * D * R, D, R, BD, BR), D, R, BD, BR)
            _put(m2_dst + g * R * D, _tile(m2_src + g * R * D, R, D, BR, BD), R, D, BR, BD)
        else:
            _put(w1_dst + g * D * D, _tile(w1_src + g * D * D, D, D, BD, BD), D, D, BD, BD)
            _put(m1_dst + g * D * D, _tile(m1_src + g * D * D, D, D, BD, BD), D, D, BD, BD)


@triton.jit
def _program(H, L, D, R, DEPTH: tl.constexpr):
    """This program's (sequence, head): (program id, head, per-memory sizes of the W₁ and W₂ state buffers, offset of
    its tokens in [P, L, D] inputs, stride between the update-dropout keep-masks of two memories)."""
    pid = tl.program_id(0).to(tl.int64)
    msz1 = D * R if DEPTH == 2 else D * D
    msz2 = R * D if DEPTH == 2 else 1
    return pid, pid % H, msz1, msz2, pid * L * D, L * D * tl.num_programs(0).to(tl.int64)
