"""Fused small-batch GEMV for decode steps: out = prologue(x) @ W^T (+ bias) (+ residual).

At decode batch sizes (M = 1..32 rows) a linear layer only streams its weight, and for small models
the step is dominated by launch latency: norm -> GEMM and activation -> GEMM -> add are one kernel
here. Per decoder layer the four calls are
    qkv = fused_gemv(h, W_qkv, norm_weight=w_in, eps=eps)                 (RMSNorm prologue)
    h   = fused_gemv(attn, W_o, residual=h)                               (residual epilogue)
    gu  = fused_gemv(h, W_gu, norm_weight=w_post, eps=eps)                (RMSNorm prologue)
    h   = fused_gemv(gu, W_down, act="silu_and_mul", residual=h)          (SiLU*up prologue)

Math (a = the left operand, rows m < M, columns k < K; fp32 throughout):
    plain: a[m, k] = x[m, k]
    norm:  a[m, k] = round(x[m, k] * rsqrt(sum_j x[m, j]^2 / K + eps) * w_norm[k])
    act:   a[m, k] = round(silu(x[m, k]) * x[m, K + k]),  silu(g) = g * sigmoid(g)
    out[m, n] = round(sum_k a[m, k] W[n, k] + bias[n] + residual[m, n])
round() is to x's dtype, as the unfused ops store their outputs (the last one is to out's dtype:
with ``out_dtype=torch.float32`` the fp32 sum is stored unrounded, the LM head's logits): the left
operand therefore equals what rms_norm / silu_and_mul would have written, up to the summation order
of the norm's sum of squares (SUMSQ_BLOCK chunks) and the GPU's approximate rsqrt / exp (an ulp,
rarely). Where the fused result differs from the unfused sequence: the GEMM result is not rounded
before the residual is added (one rounding of the fp32 sum instead of two), so it is slightly more
accurate.

Layout: x [M, K or 2K] row stride free, last dim contiguous; W [N, K] row-major contiguous (the
nn.Linear layout); residual [M, N] (x's dtype) / out [M, N] (x's dtype or fp32) last dim
contiguous. ``out`` may be ``residual`` (an in-place residual update): each program reads its
[M, BLOCK_N] residual tile before it writes the same tile, and no other program touches it. ``out``
must not overlap x or W (every program reads all of x).

Work split: program i owns output columns [i * BLOCK_N, (i + 1) * BLOCK_N) for all M rows, and loops
over K in BLOCK_K steps: each weight byte is read once, by one program, in 16-byte vector loads along
K; the x rows (a few KB) are re-read by every program from L1/L2. Rows of W past N are clamped to row
N - 1 (read, never stored) so weight loads need no row mask. The norm prologue first sums x^2 over
the whole row (a pass over x only), then runs the main loop. Two ways to form the products:
  - reduce (M <= 4 by default): a [M_PAD, 1, BLOCK_K] * W [1, BLOCK_N, BLOCK_K] on the CUDA cores,
    summed over K each step. M_PAD = next power of two >= M, so M = 1 wastes nothing; the default
    tile keeps the fp32 products in registers (M_PAD * BLOCK_N * BLOCK_K <= 8192: 64 per thread).
    For M = 1: a [BLOCK_N, BLOCK_K] weight tile in registers (16-byte loads) times a broadcast row.
  - dot (M > 4): tensor-core tl.dot with the operands swapped, acc[BLOCK_N, M_PAD] = W . a^T, so the
    weight tile is the MMA's M side (64 rows fill a Hopper warpgroup MMA) and the x rows, padded to
    M_PAD >= 16, are the N side (sm90: wgmma m64n16k16 at BLOCK_N >= 64, mma.sync below); the
    weight tiles are prefetched through shared memory over num_stages (cp.async).
No split-K in this version: the grid is cdiv(N, BLOCK_N), and the default configs shrink BLOCK_N
until the grid gives about 2 (reduce) or 1 (dot) programs per SM (tools/bench_gemv.py sweeps the
alternatives; ``--compile-check`` compiles every config for sm90 without a GPU, no spills).

PDL (programmatic dependent launch, atom.kernels.triton.pdl; on for Hopper+ unless ATOM_PDL=0;
the prefetch below only for weights of at most SMALL_WEIGHT elements, see fused_gemv): each program first does what reads no activation and may overlap the previous kernel's tail: index
math and the loads of its first K step's parameter tiles (W, the norm weight) and of its bias. Then
``gdc_wait`` (the previous kernel has completed and its writes are visible), then everything that
reads x / residual and every store, and ``gdc_launch_dependents`` right after the wait so that the
next kernel can start prefetching its own weights while this one streams. The peeled first step
does the same products in the same order as the loop, so results are bit-identical with PDL on or
off. Contract: weight, bias and norm_weight are parameters, not written by any kernel that may still
be running when this one is launched (they are written at load time; a weight that a kernel just
wrote needs a synchronize, or ATOM_PDL=0, before this kernel reads it).

Under the CPU interpreter bf16 operands are kept as fp32 holding bf16 values and rounding is done
by hand (attention_tile.dot_settings explains why); the kernel then computes what a GPU computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from atom.kernels.reference.gemv import check_gemv_args, compose_gemv, resolve_out_dtype
from atom.kernels.registry import pick, register
from atom.kernels.triton.attention_tile import dot_settings, round_to_bf16_in_fp32, to_output_dtype
from atom.kernels.triton.pdl import launch_options, pdl_enabled

MAX_M = 32  # rows per call; batches above this are GEMMs, not GEMVs
# Weights of at most this many elements are "small": for them the fused kernel beats the unfused
# sequence at every M <= 4 measured; larger ones only at M = 1 (see fused_gemv_registered).
SMALL_WEIGHT = 1 << 22
TARGET_SMS = 132  # the H100's SM count: the default configs aim at >= 2 programs per SM
_PRODUCTS_PER_PROGRAM = 8192  # reduce path: fp32 products per step (64 per thread at 4 warps)


@dataclass(frozen=True)
class GemvConfig:
    block_n: int  # output columns per program (>= 16 for the dot path)
    block_k: int  # reduction step (>= 16 for the dot path)
    num_warps: int = 4
    num_stages: int = 1  # software pipelining of the weight loads (the dot path uses it)
    use_dot: bool = False  # tensor-core tl.dot (rows padded to >= 16) instead of multiply-reduce


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, n))


def rows_padded(m: int, use_dot: bool) -> int:
    return max(16, _pow2(m)) if use_dot else _pow2(m)


def default_gemv_config(m: int, n: int, k: int, dtype: torch.dtype) -> GemvConfig:
    """Heuristics, checked against the sweep of tools/bench_gemv.py on the H100 (bf16; benchmarks/
    results/gemv_nvidia_h100_*.json):
    - M <= 4, multiply-reduce: K in as few steps as the register budget allows (each step is one
      full memory latency, and K <= 2048 then takes one or two), BLOCK_N what is left of the budget,
      halved down to 4 until there are >= 2 * TARGET_SMS programs. At M = 1 this was the sweep's
      winner (or within 3% of it) on all 8 SmolLM2 / Llama-3-8B shapes; at M = 2..4 the sweep
      preferred BLOCK_N 4 with BLOCK_K 1024 on the small (SmolLM2) weights, used here;
    - M > 4, tl.dot: 16..64 weight rows per program (as many as still give one program per SM),
      BLOCK_K 128 (64 for fp32), 4 pipeline stages.
    Large weights at M > 1 do not come here: see ``fused_gemv_registered``."""
    if 1 < m <= 4 and n * k <= SMALL_WEIGHT and dtype != torch.float32:
        return GemvConfig(block_n=4, block_k=min(1024, _pow2(k)), num_warps=4, num_stages=1)
    if m <= 4:
        m_pad = rows_padded(m, False)
        block_k = min(_pow2(k), _PRODUCTS_PER_PROGRAM // (4 * m_pad))
        block_n = max(4, min(64, _PRODUCTS_PER_PROGRAM // (m_pad * block_k)))
        while block_n > 4 and triton.cdiv(n, block_n) < 2 * TARGET_SMS:
            block_n //= 2
        return GemvConfig(block_n=block_n, block_k=block_k, num_warps=4, num_stages=1)
    block_n = 64
    while block_n > 16 and triton.cdiv(n, block_n) < TARGET_SMS:
        block_n //= 2
    block_k = min(max(16, _pow2(k)), 64 if dtype == torch.float32 else 128)
    return GemvConfig(block_n=block_n, block_k=block_k, num_warps=4, num_stages=4, use_dot=True)


def interpreter_config(m: int, n: int, k: int) -> GemvConfig:
    """Few, large programs: the CPU interpreter's cost is per program and per step."""
    use_dot = m > 4
    return GemvConfig(
        block_n=max(16, min(64, _pow2(n))), block_k=max(16, min(128, _pow2(k))), use_dot=use_dot
    )


@triton.jit
def _round(v, dtype: tl.constexpr, CPU_BF16: tl.constexpr):
    """fp32 -> dtype, rounded to nearest even (kept in fp32 under the interpreter's bf16)."""
    if CPU_BF16:
        return round_to_bf16_in_fp32(v)
    return v.to(dtype)


@triton.jit
def _param_tiles(w_rows, norm_w_ptr, kk, K, HAS_NORM: tl.constexpr, EVEN_K: tl.constexpr):
    """The parameter tiles of one K step: W[rows, kk] ([BLOCK_N, BLOCK_K], W's dtype) and, with
    the norm, w_norm[kk] ([BLOCK_K] fp32; else a 0-d placeholder). Columns past K read 0."""
    if EVEN_K:
        w = tl.load(w_rows[:, None] + kk[None, :])
    else:
        w = tl.load(w_rows[:, None] + kk[None, :], mask=(kk < K)[None, :], other=0.0)
    nw = 0.0
    if HAS_NORM:
        if EVEN_K:
            nw = tl.load(norm_w_ptr + kk).to(tl.float32)
        else:
            nw = tl.load(norm_w_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
    return w, nw


@triton.jit
def _left_operand(
    x_rows,  # [M_PAD] pointers to the x rows
    row_ok,  # [M_PAD]
    nw,  # [BLOCK_K] fp32 norm weight (HAS_NORM)
    rstd,  # [M_PAD] fp32 (HAS_NORM)
    kk,  # [BLOCK_K] column indices
    K,
    HAS_NORM: tl.constexpr,
    GATED: tl.constexpr,
    EVEN_K: tl.constexpr,
    CPU_BF16: tl.constexpr,
):
    """[M_PAD, BLOCK_K] slice of the GEMV's left operand (x, its RMSNorm, or silu(gate) * up) in
    x's dtype (fp32 holding the same values under CPU_BF16). Padded rows and columns are 0."""
    if EVEN_K:
        mask = row_ok[:, None]
    else:
        mask = row_ok[:, None] & (kk < K)[None, :]
    ptrs = x_rows[:, None] + kk[None, :]
    a = tl.load(ptrs, mask=mask, other=0.0)
    dtype = a.dtype
    if HAS_NORM:
        a = _round(a.to(tl.float32) * rstd[:, None] * nw[None, :], dtype, CPU_BF16)
    elif GATED:
        gate = a.to(tl.float32)
        up = tl.load(ptrs + K, mask=mask, other=0.0).to(tl.float32)
        a = _round(gate * tl.sigmoid(gate) * up, dtype, CPU_BF16)
    elif CPU_BF16:
        a = a.to(tl.float32)
    return a


@triton.jit
def _gemv_step(
    acc,  # [M_PAD, BLOCK_N] fp32, or its transpose [BLOCK_N, M_PAD] (USE_DOT)
    w,  # [BLOCK_N, BLOCK_K] weight tile
    nw,  # [BLOCK_K] fp32 norm weight tile (HAS_NORM)
    x_rows,
    row_ok,
    rstd,
    kk,
    K,
    HAS_NORM: tl.constexpr,
    GATED: tl.constexpr,
    USE_DOT: tl.constexpr,
    EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    CPU_BF16: tl.constexpr,
):
    """acc + a[:, kk] @ w^T for one K step (a = the left operand, _left_operand)."""
    a = _left_operand(x_rows, row_ok, nw, rstd, kk, K, HAS_NORM, GATED, EVEN_K, CPU_BF16)
    if USE_DOT:
        if CPU_BF16:
            w = w.to(tl.float32)
        acc = tl.dot(w, tl.trans(a), acc, input_precision=DOT_PRECISION)
    else:
        prod = a.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
        acc += tl.sum(prod, 2)
    return acc


@triton.jit(do_not_specialize=["eps"])
def _gemv_kernel(
    x_ptr,  # [M, K] or [M, 2K] (GATED)
    w_ptr,  # [N, K] contiguous
    bias_ptr,  # [N] (HAS_BIAS)
    norm_w_ptr,  # [K] (HAS_NORM)
    res_ptr,  # [M, N] (HAS_RESIDUAL)
    out_ptr,  # [M, N]; may be res_ptr
    M,
    N,
    K,
    stride_xm,
    stride_rm,
    stride_om,
    eps,
    M_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SUMSQ_BLOCK: tl.constexpr,  # step of the norm's sum-of-squares pass
    HAS_BIAS: tl.constexpr,
    HAS_NORM: tl.constexpr,
    GATED: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    USE_DOT: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no column masks in the main loop
    DOT_PRECISION: tl.constexpr,
    CPU_BF16: tl.constexpr,
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (module docstring)
    PREFETCH: tl.constexpr = False,  # with USE_PDL: first parameter tiles before the wait
):
    pid = tl.program_id(0)
    rows = tl.arange(0, M_PAD)
    row_ok = rows < M
    x_rows = x_ptr + rows.to(tl.int64) * stride_xm
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    w_rows = w_ptr + tl.minimum(offs_n, N - 1).to(tl.int64) * K
    offs_k = tl.arange(0, BLOCK_K)

    # With PDL, parameters only until the wait: they overlap the previous kernel's tail.
    bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    if PREFETCH:
        w_first, nw_first = _param_tiles(w_rows, norm_w_ptr, offs_k, K, HAS_NORM, EVEN_K)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()  # x and the residual may be the previous kernel's output
        tl.extra.cuda.gdc_launch_dependents()

    rstd = tl.zeros([M_PAD], dtype=tl.float32)
    if HAS_NORM:  # sum of squares of each whole x row first (x is tiny and cached)
        sumsq = tl.zeros([M_PAD], dtype=tl.float32)
        for k0 in range(0, K, SUMSQ_BLOCK):
            kk = k0 + tl.arange(0, SUMSQ_BLOCK)
            xs = tl.load(
                x_rows[:, None] + kk[None, :], mask=row_ok[:, None] & (kk < K)[None, :], other=0.0
            ).to(tl.float32)
            sumsq += tl.sum(xs * xs, 1)
        rstd = tl.rsqrt(sumsq / K + eps)

    if USE_DOT:
        acc = tl.zeros([BLOCK_N, M_PAD], dtype=tl.float32)  # out^T: weight rows on the MMA's M
    else:
        acc = tl.zeros([M_PAD, BLOCK_N], dtype=tl.float32)
    # With PREFETCH, step 0 uses the prefetched tiles and the loop does the rest: the same products
    # in the same order as the plain loop, so the result does not depend on it.
    k_begin = 0
    if PREFETCH:
        acc = _gemv_step(
            acc, w_first, nw_first, x_rows, row_ok, rstd, offs_k, K,
            HAS_NORM, GATED, USE_DOT, EVEN_K, DOT_PRECISION, CPU_BF16,
        )  # fmt: skip
        k_begin = BLOCK_K
    for k0 in range(k_begin, K, BLOCK_K):
        kk = k0 + offs_k
        w, nw = _param_tiles(w_rows, norm_w_ptr, kk, K, HAS_NORM, EVEN_K)
        acc = _gemv_step(
            acc, w, nw, x_rows, row_ok, rstd, kk, K,
            HAS_NORM, GATED, USE_DOT, EVEN_K, DOT_PRECISION, CPU_BF16,
        )  # fmt: skip
    if USE_DOT:
        acc = tl.trans(acc)

    if HAS_BIAS and not PREFETCH:
        bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += bias[None, :]
    tile_mask = row_ok[:, None] & n_ok[None, :]
    rows64 = rows.to(tl.int64)
    if HAS_RESIDUAL:  # read before the store below: out may be this same tile
        res = tl.load(res_ptr + rows64[:, None] * stride_rm + offs_n[None, :], mask=tile_mask)
        acc += res.to(tl.float32)
    if out_ptr.dtype.element_ty == tl.float32:  # fp32 x, or out_dtype=fp32: the sum as it is
        out = acc
    else:
        out = to_output_dtype(acc, out_ptr.dtype.element_ty, CPU_BF16)
    tl.store(out_ptr + rows64[:, None] * stride_om + offs_n[None, :], out, mask=tile_mask)


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the byte ranges spanned by two tensors intersect (a conservative alias test)."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t):
        last = sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
        start = t.data_ptr()
        return start, start + (last + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def _check_layout(x, weight, bias, norm_weight, residual, out) -> None:
    for name, t in (("x", x), ("residual", residual), ("out", out)):
        if t is not None and t.shape[1] > 1 and t.stride(1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim, got strides {t.stride()}")
    for name, t in (("weight", weight), ("bias", bias), ("norm_weight", norm_weight)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous, got strides {t.stride()}")
    if out is None:
        return
    for name, t in (("x", x), ("weight", weight)):
        if _overlaps(out, t):
            raise ValueError(f"out overlaps {name}: every program reads all of {name}")
    if residual is not None and _overlaps(out, residual):
        same = out.data_ptr() == residual.data_ptr() and out.stride() == residual.stride()
        same = same and out.dtype == residual.dtype
        if not same:
            raise ValueError("out partially overlaps residual: pass residual itself or no alias")


def fused_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    act: str | None = None,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: GemvConfig | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """prologue(x) @ weight^T (+ bias) (+ residual) -> out [M, N] in ``out_dtype`` (None: x's
    dtype; fp32: the accumulator unrounded) (module docstring). x [M, K] (or [M, 2K] with
    act="silu_and_mul"), M <= MAX_M; ``config`` overrides the blocks. One launch, no host reads
    of device values: safe to capture in a CUDA graph."""
    m, n, k = check_gemv_args(x, weight, bias, norm_weight, act, residual, out, out_dtype)
    if m > MAX_M:
        raise ValueError(f"x has M={m} rows; fused_gemv takes at most MAX_M={MAX_M}")
    if k == 0 or n == 0:
        raise ValueError(f"empty weight {tuple(weight.shape)}")
    _check_layout(x, weight, bias, norm_weight, residual, out)
    if out is None:
        out = torch.empty(m, n, dtype=resolve_out_dtype(x, out_dtype), device=x.device)
    if m == 0:
        return out
    if config is None:
        interpreted = x.device.type == "cpu"
        config = (
            interpreter_config(m, n, k) if interpreted else default_gemv_config(m, n, k, x.dtype)
        )
    if config.use_dot and min(config.block_n, config.block_k) < 16:
        raise ValueError(f"{config}: the dot path needs block_n and block_k >= 16")
    m_pad = rows_padded(m, config.use_dot)
    dot_precision, cpu_bf16 = dot_settings(x)
    # The first-tile prefetch only for small weights (measured on the H100, batch-1 decode): for
    # them launch latency is the cost and the prefetch hides it (SmolLM2: 0.76 -> 0.59 ms a step,
    # with PDL in the other kernels too); for large ones the peeled first step cost 0.25 ms a step
    # (Llama-3-8B, 5.83 -> 6.08 ms), while PDL with the plain loop gains 0.1 ms (5.85 -> 5.75).
    pdl = pdl_enabled(x.device)
    prefetch = pdl and weight.numel() <= SMALL_WEIGHT
    dummy = weight  # never read when the matching flag is off
    _gemv_kernel[(triton.cdiv(n, config.block_n),)](
        x, weight,
        dummy if bias is None else bias,
        dummy if norm_weight is None else norm_weight,
        dummy if residual is None else residual,
        out,
        m, n, k, x.stride(0),
        0 if residual is None else residual.stride(0),
        out.stride(0), float(eps),
        M_PAD=m_pad, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        SUMSQ_BLOCK=min(_pow2(k), max(config.block_k, 8192 // m_pad)),
        HAS_BIAS=bias is not None, HAS_NORM=norm_weight is not None, GATED=act is not None,
        HAS_RESIDUAL=residual is not None, USE_DOT=config.use_dot, EVEN_K=k % config.block_k == 0,
        DOT_PRECISION=dot_precision, CPU_BF16=cpu_bf16, USE_PDL=pdl, PREFETCH=prefetch,
        num_warps=config.num_warps, num_stages=config.num_stages, **launch_options(pdl),
    )  # fmt: skip
    return out


@register("fused_gemv", "triton", devices=("cuda",))
def fused_gemv_registered(
    x, weight, bias=None, *, norm_weight=None, eps=1e-6, act=None, residual=None, out=None,
    out_dtype=None,
) -> torch.Tensor:  # fmt: skip
    """The registry's entry: the kernel where it is the faster way, else the unfused sequence
    with the registry's rms_norm / silu_and_mul and a cuBLAS GEMM (same result up to rounding):
    above MAX_M rows (prefill), and for a large weight at more than one row. On the H100 (bf16,
    tools/bench_gemv.py) the kernel beat the unfused sequence on every shape at M = 1 (1.09-2.2x)
    and on the SmolLM2 weights at M = 4 (1.3-1.6x at the best config), but at M = 4 lost to
    cuBLAS on the Llama-3-8B weights (4096 x 6144 and up: 0.78-0.94x the unfused sequence even at
    the sweep's best config)."""
    rows = x.shape[0] if x.dim() == 2 else 0
    if rows > MAX_M or (rows > 1 and weight.numel() > SMALL_WEIGHT):
        check_gemv_args(x, weight, bias, norm_weight, act, residual, out, out_dtype)
        dev = x.device.type
        return compose_gemv(
            x, weight, bias, norm_weight, eps, act, residual, out,
            rms_norm=pick("rms_norm", dev), silu_and_mul=pick("silu_and_mul", dev),
            out_dtype=out_dtype,
        )  # fmt: skip
    return fused_gemv(
        x, weight, bias, norm_weight=norm_weight, eps=eps, act=act, residual=residual, out=out,
        out_dtype=out_dtype,
    )  # fmt: skip
