// Sum reductions for warps of any width (32 on NVIDIA, 64 on AMD CDNA) and any block size that is
// a multiple of the warp size.
#pragma once

#include "compat.h"

namespace atom::gpu {

// Sum over aligned groups of `width` lanes (a power of two <= warpSize); every lane of a group gets
// its group's total. All lanes of the warp must call it.
__device__ __forceinline__ float group_sum(float v, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2) v += shfl_xor(v, offset, width);
  return v;
}

// Sum over the whole block; every thread gets the total. `scratch` is __shared__ float[32] (enough
// for 1024 threads of 32-wide warps). Every thread of the block must call it. Partials are added
// in a fixed order, so the result is deterministic.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % warpSize;
  const int warp = threadIdx.x / warpSize;
  const int num_warps = (blockDim.x + warpSize - 1) / warpSize;
  v = group_sum(v, warpSize);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < num_warps; ++w) total += scratch[w];
  __syncthreads();  // scratch may be reused by the caller's next reduction
  return total;
}

// N sums over the whole block with one pair of barriers for all of them: v[n] becomes the block's
// total of v[n], in every thread. `scratch` is __shared__ float[N][32]; as block_sum otherwise.
template <int N>
__device__ __forceinline__ void block_sums(float (&v)[N], float (*scratch)[32]) {
  const int lane = threadIdx.x % warpSize;
  const int warp = threadIdx.x / warpSize;
  const int num_warps = (blockDim.x + warpSize - 1) / warpSize;
#pragma unroll
  for (int n = 0; n < N; ++n) {
    v[n] = group_sum(v[n], warpSize);
    if (lane == 0) scratch[n][warp] = v[n];
  }
  __syncthreads();
#pragma unroll
  for (int n = 0; n < N; ++n) {
    float total = 0.0f;
    for (int w = 0; w < num_warps; ++w) total += scratch[n][w];
    v[n] = total;
  }
  __syncthreads();  // scratch may be reused by the caller's next reduction
}

}  // namespace atom::gpu
