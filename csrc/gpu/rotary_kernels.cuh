// Rotary position embedding, in place. For each token t at position p and each rotated pair
// (a, b) of a head, with c = cos(p * inv_freq_i), s = sin(p * inv_freq_i):
//     (a, b) <- (a c - b s, b c + a s)
// neox pairs elements (i, i + rot_dim/2), gpt-j pairs (2i, 2i + 1); features past rot_dim pass
// through (partial rotary).
#pragma once

#include "numerics.cuh"
#include "pdl.cuh"

namespace atom::gpu {

// One token of `x` with 16-byte vectors of N elements: neox work items are N consecutive pairs
// (a vector from each half of the rotated part), gpt-j items are N / 2 pairs (one vector of
// interleaved pairs). The launcher checks that half is a multiple of the pairs per item and that
// the data and strides are N-aligned. Threads stride over (head, item); 32-bit indices.
template <typename T, int N, bool kNeox>
__device__ __forceinline__ void rotate_token_vec(const HeadsView& x, int64_t token,
                                                 const float* cos, const float* sin, int half) {
  using S = typename T::storage;
  using VecT = Vec<S, N>;
  constexpr int kPairs = kNeox ? N : N / 2;
  const int items = half / kPairs;  // per head
  const int total = static_cast<int>(x.heads) * items;
  S* base = static_cast<S*>(x.data) + token * x.token_stride;
  for (int w = threadIdx.x; w < total; w += blockDim.x) {
    const int head = w / items;
    const int i0 = (w - head * items) * kPairs;  // this item's first pair
    S* h = base + head * x.head_stride;
    if constexpr (kNeox) {
      VecT* pa = reinterpret_cast<VecT*>(h + i0);
      VecT* pb = reinterpret_cast<VecT*>(h + half + i0);
      const VecT va = *pa, vb = *pb;
      VecT ra, rb;
#pragma unroll
      for (int e = 0; e < N; ++e) {
        const float a = T::to_float(va.v[e]), b = T::to_float(vb.v[e]);
        ra.v[e] = T::from_float(a * cos[i0 + e] - b * sin[i0 + e]);
        rb.v[e] = T::from_float(b * cos[i0 + e] + a * sin[i0 + e]);
      }
      *pa = ra;
      *pb = rb;
    } else {
      VecT* p = reinterpret_cast<VecT*>(h + 2 * i0);
      const VecT v = *p;
      VecT r;
#pragma unroll
      for (int e = 0; e < kPairs; ++e) {
        const float a = T::to_float(v.v[2 * e]), b = T::to_float(v.v[2 * e + 1]);
        r.v[2 * e] = T::from_float(a * cos[i0 + e] - b * sin[i0 + e]);
        r.v[2 * e + 1] = T::from_float(b * cos[i0 + e] + a * sin[i0 + e]);
      }
      *p = r;
    }
  }
}

// Any layout: one pair per work item, scalar accesses. Threads stride over (head, pair).
template <typename T>
__device__ __forceinline__ void rotate_token(const HeadsView& x, int64_t token, const float* cos,
                                             const float* sin, int half, bool is_neox) {
  using S = typename T::storage;
  S* base = static_cast<S*>(x.data) + token * x.token_stride;
  const int total = static_cast<int>(x.heads) * half;
  for (int w = threadIdx.x; w < total; w += blockDim.x) {
    const int head = w / half, i = w - head * half;
    const int ia = is_neox ? i : 2 * i;
    const int ib = is_neox ? i + half : 2 * i + 1;
    S* h = base + head * x.head_stride;
    const float a = T::to_float(h[ia]), b = T::to_float(h[ib]);
    h[ia] = T::from_float(a * cos[i] - b * sin[i]);
    h[ib] = T::from_float(b * cos[i] + a * sin[i]);
  }
}

// grid = tokens; dynamic shared memory = rot_dim floats (this token's cos | sin row).
// kVec: 0 = scalar path, else the vector width N with kNeox as in rotate_token_vec. Launched
// with launch_kernel (PDL).
template <typename T, int kVec, bool kNeox>
__global__ void rotary_embedding_kernel(RotaryParams p) {
  extern __shared__ float cos_sin[];
  pdl_wait();  // before reading positions (and before the early return): see pdl.cuh
  pdl_launch_dependents();
  const int64_t token = blockIdx.x;
  const int64_t pos = load_index(p.positions, token);
  if (pos < 0 || pos >= p.cos_sin.max_position) return;  // uniform over the block
  const int half = static_cast<int>(p.cos_sin.rot_dim / 2);
  for (int i = threadIdx.x; i < 2 * half; i += blockDim.x) {
    cos_sin[i] = load_as_float(p.cos_sin.data, pos * p.cos_sin.row_stride + i, p.cos_sin.dtype);
  }
  __syncthreads();
  if constexpr (kVec == 0) {
    rotate_token<T>(p.query, token, cos_sin, cos_sin + half, half, p.is_neox);
    rotate_token<T>(p.key, token, cos_sin, cos_sin + half, half, p.is_neox);
  } else {
    rotate_token_vec<T, kVec, kNeox>(p.query, token, cos_sin, cos_sin + half, half);
    rotate_token_vec<T, kVec, kNeox>(p.key, token, cos_sin, cos_sin + half, half);
  }
}

}  // namespace atom::gpu
