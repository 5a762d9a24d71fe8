"""Triton kernels for the dual-anchor token score on CUDA: one read of the features, float32 math.

torch would need three passes over the (T, N, D) features for the score (norms, dots, and a float32
copy or a matmul); these kernels read them once after the mean. They run where Triton runs (CUDA,
or Triton's CPU interpreter with TRITON_INTERPRET=1, which the tests use); `vcast.core` falls back
to plain torch elsewhere.

Triton compiles a kernel anew for every new value of a `tl.constexpr` and, unless told otherwise, for
every integer argument that becomes 1 or a multiple of 16: with sizes per video (tokens per group,
groups) that was a compilation of one to three seconds at the first request of each new video size
(measured on an H200, docs/BENCHMARKS.md section 11). Sizes are therefore not specialised on, and the
per-group block is at least `_MIN_BLOCK` tokens: one compiled kernel serves every video whose groups
hold up to 1024 tokens, compiled by the app's warm-up.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_BLOCK_N = 16  # tokens per program: T * N / 16 programs keep every SM busy even at T = 16
_BLOCK_D = 256  # feature columns per step: 16 x 256 half-precision values = 8 KB in flight
_MIN_BLOCK = 1024  # tokens per group the one-program-per-group kernels hold at least (one compilation)


_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter compiles nothing


def _group_block(n: int) -> int:
    """The block of a one-program-per-group kernel for groups of n tokens: a power of two, at least _MIN_BLOCK
    (in the interpreter, where nothing is compiled, just enough: it sorts a 1024 block a hundred times slower)."""
    return triton.next_power_of_2(n) if _INTERPRETED else max(_MIN_BLOCK, triton.next_power_of_2(n))


@triton.jit(do_not_specialize=["N", "D", "stride_t", "stride_n"])
def _token_stats_kernel(
    x_ptr, m_ptr, sq_ptr, dot_ptr, N, D, stride_t, stride_n, eps, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr
):
    """Per token: sum of squares, and dot with its group's anchor made unit length, in float32."""
    t = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    dot = tl.zeros([BLOCK_N], dtype=tl.float32)
    m_sq = tl.zeros([BLOCK_D], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        offsets = t * stride_t + rows[:, None] * stride_n + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        m = tl.load(m_ptr + t * D + cols, mask=col_ok, other=0.0)
        sq += tl.sum(x * x, axis=1)
        dot += tl.sum(x * m[None, :], axis=1)
        m_sq += m * m
    m_norm = tl.maximum(tl.sqrt(tl.sum(m_sq, axis=0)), eps)  # as F.normalize(m, eps)
    tl.store(sq_ptr + t * N + rows, sq, mask=row_ok)
    tl.store(dot_ptr + t * N + rows, dot / m_norm, mask=row_ok)


@triton.jit(do_not_specialize=["N"])
def _finish_scores_kernel(sq_ptr, dot_ptr, out_ptr, N, eps, BLOCK: tl.constexpr):
    """Per group: score = (1 - cos(x, m)) + minmax(||x||), m already unit length."""
    t = tl.program_id(0)
    idx = tl.arange(0, BLOCK)
    ok = idx < N
    norms = tl.sqrt(tl.load(sq_ptr + t * N + idx, mask=ok, other=0.0))
    dots = tl.load(dot_ptr + t * N + idx, mask=ok, other=0.0)
    lo = tl.min(tl.where(ok, norms, float("inf")), axis=0)
    hi = tl.max(tl.where(ok, norms, float("-inf")), axis=0)
    cos = dots / tl.maximum(norms, eps)
    spread = (norms - lo) / tl.maximum(hi - lo, eps)
    tl.store(out_ptr + t * N + idx, (1.0 - cos) + spread, mask=ok)


def token_scores_triton(features: torch.Tensor, means: torch.Tensor, eps: float) -> torch.Tensor:
    """(T, N, D) float16/bfloat16/float32, (T, D) group anchors (any length) -> (T, N) float32 scores."""
    T, N, D = features.shape
    if features.stride(-1) != 1:
        features = features.contiguous()
    means = means.float().contiguous()
    sq = torch.empty(T, N, dtype=torch.float32, device=features.device)
    dot = torch.empty_like(sq)
    grid = (T, triton.cdiv(N, _BLOCK_N))
    _token_stats_kernel[grid](
        features, means, sq, dot, N, D, features.stride(0), features.stride(1), eps, BLOCK_N=_BLOCK_N, BLOCK_D=_BLOCK_D
    )
    scores = torch.empty_like(sq)
    _finish_scores_kernel[(T,)](sq, dot, scores, N, eps, BLOCK=_group_block(N))
    return scores


@triton.jit(do_not_specialize=["T", "D"])
def _curvature_kernel(m_ptr, out_ptr, T, D, eps, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """c_t = 1 - cos(u_t - u_{t-1}, u_{t+1} - u_t), u = m / |m|, for interior t; 1 at the ends."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    interior = (t >= 1) & (t < T - 1)
    # Pass 1: the norms of the three rows around each t (T x D floats: served from cache).
    sq_prev = tl.zeros([BLOCK_T], dtype=tl.float32)
    sq_cur = tl.zeros([BLOCK_T], dtype=tl.float32)
    sq_next = tl.zeros([BLOCK_T], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = interior[:, None] & (cols < D)[None, :]
        prev = tl.load(m_ptr + (t[:, None] - 1) * D + cols[None, :], mask=ok, other=0.0)
        cur = tl.load(m_ptr + t[:, None] * D + cols[None, :], mask=ok, other=0.0)
        nxt = tl.load(m_ptr + (t[:, None] + 1) * D + cols[None, :], mask=ok, other=0.0)
        sq_prev += tl.sum(prev * prev, axis=1)
        sq_cur += tl.sum(cur * cur, axis=1)
        sq_next += tl.sum(nxt * nxt, axis=1)
    inv_prev = 1.0 / tl.maximum(tl.sqrt(sq_prev), eps)
    inv_cur = 1.0 / tl.maximum(tl.sqrt(sq_cur), eps)
    inv_next = 1.0 / tl.maximum(tl.sqrt(sq_next), eps)
    # Pass 2: the two steps between unit vectors, formed element by element (no cancellation).
    ab = tl.zeros([BLOCK_T], dtype=tl.float32)
    aa = tl.zeros([BLOCK_T], dtype=tl.float32)
    bb = tl.zeros([BLOCK_T], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = interior[:, None] & (cols < D)[None, :]
        prev = tl.load(m_ptr + (t[:, None] - 1) * D + cols[None, :], mask=ok, other=0.0) * inv_prev[:, None]
        cur = tl.load(m_ptr + t[:, None] * D + cols[None, :], mask=ok, other=0.0) * inv_cur[:, None]
        nxt = tl.load(m_ptr + (t[:, None] + 1) * D + cols[None, :], mask=ok, other=0.0) * inv_next[:, None]
        a = cur - prev
        b = nxt - cur
        ab += tl.sum(a * b, axis=1)
        aa += tl.sum(a * a, axis=1)
        bb += tl.sum(b * b, axis=1)
    cos = ab / tl.maximum(tl.sqrt(aa) * tl.sqrt(bb), eps)
    tl.store(out_ptr + t, tl.where(interior, 1.0 - cos, 1.0), mask=t < T)


def curvature_triton(means: torch.Tensor, eps: float) -> torch.Tensor:
    """(T, D) group means (any length) -> (T,) float32 curvature, in one launch."""
    T, D = means.shape
    means = means.float().contiguous()
    out = torch.empty(T, dtype=torch.float32, device=means.device)
    _curvature_kernel[(triton.cdiv(T, 16),)](means, out, T, D, eps, BLOCK_T=16, BLOCK_D=128)
    return out


@triton.jit(do_not_specialize=["N"])
def _keep_kernel(scores_ptr, budgets_ptr, offsets_ptr, mask_ptr, keep_ptr, N, BLOCK: tl.constexpr):
    """Per group: mark its top budgets[t] tokens by score (ties to the lower index), and write
    their flat indices, ascending, to keep[offsets[t] : offsets[t] + budgets[t]]."""
    t = tl.program_id(0)
    idx = tl.arange(0, BLOCK)
    ok = idx < N
    s = tl.load(scores_ptr + t * N + idx, mask=ok, other=float("-inf"))
    bits = s.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # int32 order == float order
    # One int64 key per token: descending score in the high word, ascending index in the low word.
    key = ((-ordered.to(tl.int64)) << 32) | idx.to(tl.int64)
    by_score = (tl.sort(key) & 0xFFFFFFFF).to(tl.int32)  # token indices, best first
    budget = tl.load(budgets_ptr + t).to(tl.int32)
    kept = idx < budget  # position in by_score -> kept?
    tl.store(mask_ptr + t * N + by_score, kept.to(tl.uint8), mask=ok)
    # The kept indices in ascending order: sort them with the dropped ones pushed past the end.
    ascending = tl.sort(tl.where(kept, by_score, BLOCK + by_score))
    offset = tl.load(offsets_ptr + t)
    tl.store(keep_ptr + offset + idx, (t * N + ascending).to(tl.int64), mask=kept)


def keep_triton(
    scores: torch.Tensor, budgets: torch.Tensor, offsets: torch.Tensor, total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, N) float32 scores, (T,) int64 budgets and first slots -> (T, N) bool mask, (K,) int64 keep."""
    T, N = scores.shape
    mask = torch.empty(T, N, dtype=torch.uint8, device=scores.device)
    keep = torch.empty(total, dtype=torch.int64, device=scores.device)
    _keep_kernel[(T,)](scores.contiguous(), budgets, offsets, mask, keep, N, BLOCK=_group_block(N))
    return mask.view(torch.bool), keep
