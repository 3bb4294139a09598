// RMSNorm and fused residual-add + RMSNorm: one block per row, 16-byte vector loads, fp32 math.
//
//   y = x * rsqrt(sum(x^2) / hidden + eps) * w
//
// A row is read once: each thread keeps its first kCached vectors in registers across the block
// reduction (hidden <= kCached * V * blockDim, e.g. 32768 bf16 at 1024 threads); longer rows
// re-read the remainder, which is still in L1/L2.
#pragma once

#include "numerics.cuh"
#include "reduce.cuh"

namespace atom::gpu {

constexpr int kNormCachedVectors = 4;

// T: element traits (F32 / BF16 / F16); V: elements per vector (16 bytes, or 1 when unaligned).
template <typename T, int V>
__global__ void rms_norm_kernel(RmsNormParams p) {
  using S = typename T::storage;
  using VecT = Vec<S, V>;
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const VecT* x = reinterpret_cast<const VecT*>(static_cast<const S*>(p.x) + row * p.x_row_stride);
  VecT* out = reinterpret_cast<VecT*>(static_cast<S*>(p.out) + row * p.out_row_stride);
  const int64_t num_vecs = p.hidden / V;

  VecT cached[kNormCachedVectors];
  float sum_sq = 0.0f;
#pragma unroll
  for (int j = 0; j < kNormCachedVectors; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    if (i < num_vecs) {
      cached[j] = x[i];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float f = T::to_float(cached[j].v[e]);
        sum_sq += f * f;
      }
    }
  }
  for (int64_t i = threadIdx.x + static_cast<int64_t>(kNormCachedVectors) * blockDim.x;
       i < num_vecs; i += blockDim.x) {
    const VecT xv = x[i];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float f = T::to_float(xv.v[e]);
      sum_sq += f * f;
    }
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) / static_cast<float>(p.hidden) + p.eps);

  auto write = [&](int64_t i, const VecT& xv) {
    VecT yv;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float w = load_as_float(p.weight, i * V + e, p.weight_dtype);
      yv.v[e] = T::from_float(T::to_float(xv.v[e]) * inv_rms * w);
    }
    out[i] = yv;
  };
#pragma unroll
  for (int j = 0; j < kNormCachedVectors; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    if (i < num_vecs) write(i, cached[j]);
  }
  for (int64_t i = threadIdx.x + static_cast<int64_t>(kNormCachedVectors) * blockDim.x;
       i < num_vecs; i += blockDim.x) {
    write(i, x[i]);
  }
}

// residual <- round(x + residual) (rounded to the storage dtype, as the reference does), then
// x <- rms_norm(residual). The norm reads the rounded sum, again as the reference does.
template <typename T, int V>
__global__ void fused_add_rms_norm_kernel(FusedAddRmsNormParams p) {
  using S = typename T::storage;
  using VecT = Vec<S, V>;
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  VecT* x = reinterpret_cast<VecT*>(static_cast<S*>(p.x) + row * p.x_row_stride);
  VecT* residual =
      reinterpret_cast<VecT*>(static_cast<S*>(p.residual) + row * p.residual_row_stride);
  const int64_t num_vecs = p.hidden / V;

  // Adds one vector, stores the rounded sum to `residual`, returns it and accumulates its squares.
  auto add = [&](int64_t i, float& sum_sq) {
    const VecT xv = x[i];
    const VecT rv = residual[i];
    VecT sv;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      sv.v[e] = T::from_float(T::to_float(xv.v[e]) + T::to_float(rv.v[e]));
      const float f = T::to_float(sv.v[e]);
      sum_sq += f * f;
    }
    residual[i] = sv;
    return sv;
  };

  VecT cached[kNormCachedVectors];
  float sum_sq = 0.0f;
#pragma unroll
  for (int j = 0; j < kNormCachedVectors; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    if (i < num_vecs) cached[j] = add(i, sum_sq);
  }
  for (int64_t i = threadIdx.x + static_cast<int64_t>(kNormCachedVectors) * blockDim.x;
       i < num_vecs; i += blockDim.x) {
    add(i, sum_sq);
  }
  // The uncached tail is re-read from `residual` below: each thread re-reads only what it wrote
  // itself, so program order makes that safe.
  const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) / static_cast<float>(p.hidden) + p.eps);

  auto write = [&](int64_t i, const VecT& sv) {
    VecT yv;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float w = load_as_float(p.weight, i * V + e, p.weight_dtype);
      yv.v[e] = T::from_float(T::to_float(sv.v[e]) * inv_rms * w);
    }
    x[i] = yv;
  };
#pragma unroll
  for (int j = 0; j < kNormCachedVectors; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    if (i < num_vecs) write(i, cached[j]);
  }
  for (int64_t i = threadIdx.x + static_cast<int64_t>(kNormCachedVectors) * blockDim.x;
       i < num_vecs; i += blockDim.x) {
    write(i, residual[i]);
  }
}

}  // namespace atom::gpu
