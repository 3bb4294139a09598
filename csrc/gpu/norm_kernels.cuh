// RMSNorm and fused residual-add + RMSNorm: 16-byte vector loads, fp32 math.
//
//   y = x * rsqrt(sum(x^2) / hidden + eps) * w
//
// Memory-bound, so the kernels are organized around latency: every thread issues all of its row
// loads up front and keeps them in registers across the block reduction, so the only things on a
// row's critical path are one DRAM round trip and the reduction; the stores then go out without
// another read of the row. A block handles kRows rows (one reduction for all of them); thread t
// covers vectors t, t + blockDim, ..., t + (kVecs - 1) * blockDim of each (coalesced). The
// launcher sizes the block so that a row fits in kVecs vectors per thread; only rows longer than
// kVecs * kNormMaxThreads vectors (> 32768 bf16 with kVecs = 4) re-read the rest, which is still
// in L1/L2.
//
// Register budget: the launcher may use up to kNormMaxThreads threads for any instantiation, so
// every kernel carries that launch bound (at most 65536 / 1024 = 64 registers a thread on
// NVIDIA). Without it nvcc gave the 16-bit fused kernel 80-122 registers, and every launch with
// more than ~512 threads (rows wider than 16384 bf16) failed: "too many resources requested".
#pragma once

#include "numerics.cuh"
#include "pdl.cuh"
#include "reduce.cuh"

namespace atom::gpu {

constexpr int kNormMaxThreads = 1024;

// Block shape of a norm over rows of num_vecs vectors (one row per block): 2 vectors a thread
// while that takes at most kNormMaxThreads threads (4096 bf16 = 512 vectors -> 256 threads, the
// shape torch.compile's Triton kernel uses too), then 4 (up to 4096 vectors: 32768 bf16, 16384
// fp32); longer rows also take 4 and re-read the rest. Threads are a multiple of 64 (a whole AMD
// wavefront, two NVIDIA warps).
struct NormShape {
  int threads;
  int vecs_per_thread;  // 2 or 4: the kernels' kVecs
};

inline NormShape norm_shape(int64_t num_vecs) {
  const int vecs = num_vecs <= 2 * kNormMaxThreads ? 2 : 4;
  const int64_t threads = (num_vecs + vecs - 1) / vecs;
  const int64_t rounded = (threads + 63) / 64 * 64;
  return {static_cast<int>(rounded > kNormMaxThreads ? kNormMaxThreads : rounded), vecs};
}

// Sum of squares of one vector in fp32. Callers add it to their running sum, so a thread's
// rounding chain grows by one add per vector rather than one per element.
template <typename T, typename VecT>
__device__ __forceinline__ float vec_sum_sq(const VecT& v) {
  float s = 0.0f;
#pragma unroll
  for (int e = 0; e < static_cast<int>(sizeof(v.v) / sizeof(v.v[0])); ++e) {
    const float f = T::to_float(v.v[e]);
    s += f * f;
  }
  return s;
}

// y = x * inv_rms * w per element, rounded to T (the reference's order of operations).
template <typename T, typename W, typename VecT, typename VecW>
__device__ __forceinline__ VecT normalize_vec(const VecT& xv, const VecW& wv, float inv_rms) {
  VecT yv;
#pragma unroll
  for (int e = 0; e < static_cast<int>(sizeof(xv.v) / sizeof(xv.v[0])); ++e) {
    yv.v[e] = T::from_float(T::to_float(xv.v[e]) * inv_rms * W::to_float(wv.v[e]));
  }
  return yv;
}

// T: element traits of x (F32 / BF16 / F16); W: of the weight (T or F32); V: elements per vector
// (16 bytes of T, or 1 when pointers/strides are not aligned for that); kRows: rows per block;
// kVecs: vectors of each row a thread keeps in registers; kPrefetchWeight: load the weight with
// the rows (its L1/L2 latency hidden behind theirs, at the cost of registers held across the
// reduction) instead of after the reduction. grid = ceil(rows / kRows), blockDim <=
// kNormMaxThreads (a multiple of the warp size). Launched with launch_kernel (PDL).
template <typename T, typename W, int V, int kRows, int kVecs, bool kPrefetchWeight>
__global__ void __launch_bounds__(kNormMaxThreads) rms_norm_kernel(RmsNormParams p) {
  using S = typename T::storage;
  using VecT = Vec<S, V>;
  using VecW = Vec<typename W::storage, V>;
  __shared__ float scratch[kRows][32];
  // Before every load, the weight's too (the glue may have just converted it): see pdl.cuh.
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const VecW* weight = static_cast<const VecW*>(p.weight);
  // Within a row, 32-bit indices (the launcher rejects rows of 2^30 elements or more).
  const int num_vecs = static_cast<int>(p.hidden / V);
  const int tid = threadIdx.x, stride = blockDim.x;
  auto x_row = [&](int r) {
    return reinterpret_cast<const VecT*>(static_cast<const S*>(p.x) + (row0 + r) * p.x_row_stride);
  };
  auto out_row = [&](int r) {
    return reinterpret_cast<VecT*>(static_cast<S*>(p.out) + (row0 + r) * p.out_row_stride);
  };
  auto has_row = [&](int r) { return row0 + r < p.rows; };  // uniform over the block

  VecT xs[kRows][kVecs];
  VecW ws[kPrefetchWeight ? kVecs : 1];
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int i = tid + j * stride;
    if (i >= num_vecs) continue;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (has_row(r)) xs[r][j] = x_row(r)[i];
    }
    if constexpr (kPrefetchWeight) ws[j] = weight[i];
  }
  float sum_sq[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    sum_sq[r] = 0.0f;
    if (!has_row(r)) continue;
#pragma unroll
    for (int j = 0; j < kVecs; ++j) {
      if (tid + j * stride < num_vecs) sum_sq[r] += vec_sum_sq<T>(xs[r][j]);
    }
    for (int i = tid + kVecs * stride; i < num_vecs; i += stride) {
      sum_sq[r] += vec_sum_sq<T>(x_row(r)[i]);
    }
  }
  block_sums<kRows>(sum_sq, scratch);

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (!has_row(r)) continue;
    const float inv_rms = rsqrtf(sum_sq[r] / static_cast<float>(p.hidden) + p.eps);
    VecT* out = out_row(r);
#pragma unroll
    for (int j = 0; j < kVecs; ++j) {
      const int i = tid + j * stride;
      if (i >= num_vecs) continue;
      if constexpr (kPrefetchWeight) {
        out[i] = normalize_vec<T, W>(xs[r][j], ws[j], inv_rms);
      } else {
        out[i] = normalize_vec<T, W>(xs[r][j], weight[i], inv_rms);
      }
    }
    const VecT* x = x_row(r);
    for (int i = tid + kVecs * stride; i < num_vecs; i += stride) {
      out[i] = normalize_vec<T, W>(x[i], weight[i], inv_rms);
    }
  }
}

// residual <- round(x + residual) (rounded to the storage dtype, as the reference does), then
// x <- rms_norm(residual). The norm reads the rounded sum, again as the reference does. Template
// parameters and launch shape as for rms_norm_kernel.
template <typename T, typename W, int V, int kRows, int kVecs, bool kPrefetchWeight>
__global__ void __launch_bounds__(kNormMaxThreads) fused_add_rms_norm_kernel(
    FusedAddRmsNormParams p) {
  using S = typename T::storage;
  using VecT = Vec<S, V>;
  using VecW = Vec<typename W::storage, V>;
  __shared__ float scratch[kRows][32];
  pdl_wait();  // before every load and store: see pdl.cuh
  pdl_launch_dependents();
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const VecW* weight = static_cast<const VecW*>(p.weight);
  const int num_vecs = static_cast<int>(p.hidden / V);
  const int tid = threadIdx.x, stride = blockDim.x;
  auto x_row = [&](int r) {
    return reinterpret_cast<VecT*>(static_cast<S*>(p.x) + (row0 + r) * p.x_row_stride);
  };
  auto residual_row = [&](int r) {
    return reinterpret_cast<VecT*>(static_cast<S*>(p.residual) +
                                   (row0 + r) * p.residual_row_stride);
  };
  auto has_row = [&](int r) { return row0 + r < p.rows; };
  // The rounded sum of one vector pair.
  auto add = [](const VecT& xv, const VecT& rv) {
    VecT sv;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      sv.v[e] = T::from_float(T::to_float(xv.v[e]) + T::to_float(rv.v[e]));
    }
    return sv;
  };

  VecT sums[kRows][kVecs], rs[kRows][kVecs];
  VecW ws[kPrefetchWeight ? kVecs : 1];
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {  // all loads first: one DRAM round trip per row
    const int i = tid + j * stride;
    if (i >= num_vecs) continue;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (!has_row(r)) continue;
      sums[r][j] = x_row(r)[i];
      rs[r][j] = residual_row(r)[i];
    }
    if constexpr (kPrefetchWeight) ws[j] = weight[i];
  }
  float sum_sq[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    sum_sq[r] = 0.0f;
    if (!has_row(r)) continue;
    VecT* residual = residual_row(r);
#pragma unroll
    for (int j = 0; j < kVecs; ++j) {
      const int i = tid + j * stride;
      if (i >= num_vecs) continue;
      sums[r][j] = add(sums[r][j], rs[r][j]);
      sum_sq[r] += vec_sum_sq<T>(sums[r][j]);
      residual[i] = sums[r][j];
    }
    // Rows past the register cache: the sum goes to `residual` now and is re-read below. Each
    // thread re-reads only the vectors it wrote itself, so program order makes that safe.
    const VecT* x = x_row(r);
    for (int i = tid + kVecs * stride; i < num_vecs; i += stride) {
      const VecT sv = add(x[i], residual[i]);
      sum_sq[r] += vec_sum_sq<T>(sv);
      residual[i] = sv;
    }
  }
  block_sums<kRows>(sum_sq, scratch);

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (!has_row(r)) continue;
    const float inv_rms = rsqrtf(sum_sq[r] / static_cast<float>(p.hidden) + p.eps);
    VecT* x = x_row(r);
#pragma unroll
    for (int j = 0; j < kVecs; ++j) {
      const int i = tid + j * stride;
      if (i >= num_vecs) continue;
      if constexpr (kPrefetchWeight) {
        x[i] = normalize_vec<T, W>(sums[r][j], ws[j], inv_rms);
      } else {
        x[i] = normalize_vec<T, W>(sums[r][j], weight[i], inv_rms);
      }
    }
    const VecT* residual = residual_row(r);
    for (int i = tid + kVecs * stride; i < num_vecs; i += stride) {
      x[i] = normalize_vec<T, W>(residual[i], weight[i], inv_rms);
    }
  }
}

}  // namespace atom::gpu
