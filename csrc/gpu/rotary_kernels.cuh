// Rotary position embedding, in place. For each token t at position p and each rotated pair
// (a, b) of a head, with c = cos(p * inv_freq_i), s = sin(p * inv_freq_i):
//     (a, b) <- (a c - b s, b c + a s)
// neox pairs elements (i, i + rot_dim/2), gpt-j pairs (2i, 2i + 1); features past rot_dim pass
// through (partial rotary).
#pragma once

#include "numerics.cuh"

namespace atom::gpu {

// Index within a head of the two elements of pair i (0 <= i < rot_dim/2).
__device__ __forceinline__ void rope_pair(int64_t i, int64_t half, bool is_neox, int64_t& a,
                                          int64_t& b) {
  a = is_neox ? i : 2 * i;
  b = is_neox ? i + half : 2 * i + 1;
}

// Rotates every pair of every head of one token of `x`; threads stride over (head, pair).
template <typename T>
__device__ __forceinline__ void rotate_token(const HeadsView& x, int64_t token, const float* cos,
                                             const float* sin, int64_t half, bool is_neox) {
  using S = typename T::storage;
  S* base = static_cast<S*>(x.data) + token * x.token_stride;
  for (int64_t w = threadIdx.x; w < x.heads * half; w += blockDim.x) {
    const int64_t head = w / half, i = w % half;
    int64_t ia, ib;
    rope_pair(i, half, is_neox, ia, ib);
    S* h = base + head * x.head_stride;
    const float a = T::to_float(h[ia]), b = T::to_float(h[ib]);
    h[ia] = T::from_float(a * cos[i] - b * sin[i]);
    h[ib] = T::from_float(b * cos[i] + a * sin[i]);
  }
}

// grid = tokens; dynamic shared memory = rot_dim floats (this token's cos | sin row).
template <typename T>
__global__ void rotary_embedding_kernel(RotaryParams p) {
  extern __shared__ float cos_sin[];
  const int64_t token = blockIdx.x;
  const int64_t pos = load_index(p.positions, token);
  if (pos < 0 || pos >= p.cos_sin.max_position) return;  // uniform over the block
  const int64_t half = p.cos_sin.rot_dim / 2;
  for (int64_t i = threadIdx.x; i < p.cos_sin.rot_dim; i += blockDim.x) {
    cos_sin[i] = load_as_float(p.cos_sin.data, pos * p.cos_sin.row_stride + i, p.cos_sin.dtype);
  }
  __syncthreads();
  rotate_token<T>(p.query, token, cos_sin, cos_sin + half, half, p.is_neox);
  rotate_token<T>(p.key, token, cos_sin, cos_sin + half, half, p.is_neox);
}

}  // namespace atom::gpu
