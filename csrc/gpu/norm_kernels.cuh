// RMSNorm and fused residual-add + RMSNorm: one block per row, 16-byte vector loads, fp32 math.
//
//   y = x * rsqrt(sum(x^2) / hidden + eps) * w
//
// Memory-bound, so the kernel is organized around latency: every thread issues all of its loads
// (x, the residual, and the weight) up front and keeps them in registers across the block
// reduction, so the only things on a row's critical path are one DRAM round trip and the
// reduction; the stores then go out without another read. The launcher sizes the block so a row
// fits in kCached vectors per thread (hidden <= kCached * V * 1024, e.g. 32768 bf16); longer rows
// re-read the remainder, which is still in L1/L2.
#pragma once

#include "numerics.cuh"
#include "reduce.cuh"

namespace atom::gpu {

constexpr int kNormCachedVectors = 4;

// T: element traits of x (F32 / BF16 / F16); W: of the weight (T or F32); V: elements per vector
// (16 bytes of T, or 1 when pointers/strides are not aligned for that).
template <typename T, typename W, int V>
__global__ void rms_norm_kernel(RmsNormParams p) {
  using S = typename T::storage;
  using VecT = Vec<S, V>;
  using VecW = Vec<typename W::storage, V>;
  constexpr int kCached = kNormCachedVectors;
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const VecT* x = reinterpret_cast<const VecT*>(static_cast<const S*>(p.x) + row * p.x_row_stride);
  const VecW* weight = static_cast<const VecW*>(p.weight);
  VecT* out = reinterpret_cast<VecT*>(static_cast<S*>(p.out) + row * p.out_row_stride);
  const int64_t num_vecs = p.hidden / V;

  VecT xs[kCached];
  VecW ws[kCached];
#pragma unroll
  for (int j = 0; j < kCached; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    if (i < num_vecs) {
      xs[j] = x[i];
      ws[j] = weight[i];
    }
  }
  float sum_sq = 0.0f;
#pragma unroll
  for (int j = 0; j < kCached; ++j) {
    if (threadIdx.x + static_cast<int64_t>(j) * blockDim.x < num_vecs) {
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float f = T::to_float(xs[j].v[e]);
        sum_sq += f * f;
      }
    }
  }
  for (int64_t i = threadIdx.x + static_cast<int64_t>(kCached) * blockDim.x; i < num_vecs;
       i += blockDim.x) {
    const VecT xv = x[i];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float f = T::to_float(xv.v[e]);
      sum_sq += f * f;
    }
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) / static_cast<float>(p.hidden) + p.eps);

  auto normalize = [&](const VecT& xv, const VecW& wv) {
    VecT yv;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      yv.v[e] = T::from_float(T::to_float(xv.v[e]) * inv_rms * W::to_float(wv.v[e]));
    }
    return yv;
  };
#pragma unroll
  for (int j = 0; j < kCached; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    if (i < num_vecs) out[i] = normalize(xs[j], ws[j]);
  }
  for (int64_t i = threadIdx.x + static_cast<int64_t>(kCached) * blockDim.x; i < num_vecs;
       i += blockDim.x) {
    out[i] = normalize(x[i], weight[i]);
  }
}

// residual <- round(x + residual) (rounded to the storage dtype, as the reference does), then
// x <- rms_norm(residual). The norm reads the rounded sum, again as the reference does.
template <typename T, typename W, int V>
__global__ void fused_add_rms_norm_kernel(FusedAddRmsNormParams p) {
  using S = typename T::storage;
  using VecT = Vec<S, V>;
  using VecW = Vec<typename W::storage, V>;
  constexpr int kCached = kNormCachedVectors;
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  VecT* x = reinterpret_cast<VecT*>(static_cast<S*>(p.x) + row * p.x_row_stride);
  VecT* residual =
      reinterpret_cast<VecT*>(static_cast<S*>(p.residual) + row * p.residual_row_stride);
  const VecW* weight = static_cast<const VecW*>(p.weight);
  const int64_t num_vecs = p.hidden / V;

  // The rounded sum of one vector pair; its squares go into sum_sq.
  auto add = [&](const VecT& xv, const VecT& rv, float& sum_sq) {
    VecT sv;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      sv.v[e] = T::from_float(T::to_float(xv.v[e]) + T::to_float(rv.v[e]));
      const float f = T::to_float(sv.v[e]);
      sum_sq += f * f;
    }
    return sv;
  };

  VecT sums[kCached], rs[kCached];
  VecW ws[kCached];
#pragma unroll
  for (int j = 0; j < kCached; ++j) {  // all loads first: one DRAM round trip per row
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    if (i < num_vecs) {
      sums[j] = x[i];
      rs[j] = residual[i];
      ws[j] = weight[i];
    }
  }
  float sum_sq = 0.0f;
#pragma unroll
  for (int j = 0; j < kCached; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    if (i < num_vecs) {
      sums[j] = add(sums[j], rs[j], sum_sq);
      residual[i] = sums[j];
    }
  }
  for (int64_t i = threadIdx.x + static_cast<int64_t>(kCached) * blockDim.x; i < num_vecs;
       i += blockDim.x) {
    residual[i] = add(x[i], residual[i], sum_sq);
  }
  // The uncached tail is re-read from `residual` below: each thread re-reads only what it wrote
  // itself, so program order makes that safe.
  const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) / static_cast<float>(p.hidden) + p.eps);

  auto normalize = [&](const VecT& sv, const VecW& wv) {
    VecT yv;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      yv.v[e] = T::from_float(T::to_float(sv.v[e]) * inv_rms * W::to_float(wv.v[e]));
    }
    return yv;
  };
#pragma unroll
  for (int j = 0; j < kCached; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    if (i < num_vecs) x[i] = normalize(sums[j], ws[j]);
  }
  for (int64_t i = threadIdx.x + static_cast<int64_t>(kCached) * blockDim.x; i < num_vecs;
       i += blockDim.x) {
    x[i] = normalize(residual[i], weight[i]);
  }
}

}  // namespace atom::gpu
