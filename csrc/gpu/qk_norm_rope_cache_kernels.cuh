// Fused per-head RMSNorm (Qwen3's q_norm / k_norm) + RoPE + paged KV-cache write, one pass.
//
// Work item = one head of one token ("row"): token t owns Hq q rows, Hkv k rows and Hkv v rows.
// A group of G lanes (a power of two <= 32, so it fits in a warp on NVIDIA and AMD) handles a row
// with V-element (16-byte) vectors. Per q/k row:
//   1. load the row into shared memory as fp32 and sum its squares (group shuffle reduction);
//   2. normalize in place in shared memory, rounding to the storage dtype like the reference;
//   3. after a barrier, rotate: each element reads its RoPE partner from shared memory, then the
//      row is stored back (in place) and, for k, into the cache.
// v rows skip shared memory: a straight vector copy (or fp8 quantization) into the value cache.
// q, k and v may be strided views of one fused qkv projection output.
#pragma once

#include "cache_kernels.cuh"
#include "numerics.cuh"
#include "pdl.cuh"
#include "reduce.cuh"

namespace atom::gpu {

// The rotated value of element i of a row (x = the row in fp32, cos/sin of this token's
// position). Pairs: neox (j, j + half), gpt-j (2j, 2j + 1); (a, b) -> (a c - b s, b c + a s).
__device__ __forceinline__ float rope_element(const float* x, int64_t i, int64_t half,
                                              bool is_neox, const CosSinView& table, int64_t pos) {
  const bool first = is_neox ? i < half : (i % 2 == 0);
  const int64_t j = is_neox ? (first ? i : i - half) : i / 2;
  const int64_t partner = is_neox ? (first ? i + half : i - half) : (first ? i + 1 : i - 1);
  const float c = load_as_float(table.data, pos * table.row_stride + j, table.dtype);
  const float s = load_as_float(table.data, pos * table.row_stride + half + j, table.dtype);
  return first ? x[i] * c - x[partner] * s : x[i] * c + x[partner] * s;
}

// Launch: blockDim.x = G * rows_per_block, dynamic shared memory = rows_per_block * head_size
// floats, grid = ceil(tokens * (Hq + 2 Hkv) / rows_per_block). Launched with launch_kernel (PDL).
template <typename T, typename C, int V>
__global__ void qk_norm_rope_cache_kernel(QkNormRopeCacheParams p, int group_size) {
  using S = typename T::storage;
  using CS = typename C::storage;
  using VecT = Vec<S, V>;
  extern __shared__ float rows_smem[];
  pdl_wait();  // before reading slots, q/k/v or the cache: see pdl.cuh
  pdl_launch_dependents();

  const int64_t head_size = p.q.head_size;
  const int64_t num_vecs = head_size / V;
  const int lane = threadIdx.x % group_size;
  const int64_t rows_per_block = blockDim.x / group_size;
  const int64_t local_row = threadIdx.x / group_size;
  float* row_buf = rows_smem + local_row * head_size;

  const int64_t heads_per_token = p.q.heads + 2 * p.k.heads;
  const int64_t row = blockIdx.x * rows_per_block + local_row;
  const bool active = row < p.tokens * heads_per_token;
  const int64_t token = row / heads_per_token;
  const int64_t head_in_token = row % heads_per_token;
  const bool is_q = head_in_token < p.q.heads;
  const bool is_v = head_in_token >= p.q.heads + p.k.heads;
  const int64_t head = is_q ? head_in_token
                            : (is_v ? head_in_token - p.q.heads - p.k.heads
                                    : head_in_token - p.q.heads);
  const int64_t slot = active && token < p.slot_mapping.count ? load_index(p.slot_mapping, token)
                                                              : -1;
  const bool write_cache = !is_q && slot_in_cache(p.key_cache, slot);

  // v rows: copy (or quantize) straight into the value cache.
  if (active && is_v && write_cache) {
    const float scale = cache_scale(p.value_cache);
    const VecT* src = reinterpret_cast<const VecT*>(static_cast<const S*>(p.v.data) +
                                                    token * p.v.token_stride +
                                                    head * p.v.head_stride);
    Vec<CS, V>* dst = reinterpret_cast<Vec<CS, V>*>(cache_row<C>(p.value_cache, slot, head));
    for (int64_t c = lane; c < num_vecs; c += group_size) {
      const VecT x = src[c];
      Vec<CS, V> y;
#pragma unroll
      for (int e = 0; e < V; ++e) y.v[e] = to_cache<T, C>(x.v[e], scale);
      dst[c] = y;
    }
  }

  // q/k rows, step 1: load into shared memory, sum of squares.
  const HeadsView& view = is_q ? p.q : p.k;
  S* row_ptr = static_cast<S*>(view.data) + token * view.token_stride + head * view.head_stride;
  const bool is_qk = active && !is_v;
  float sum_sq = 0.0f;
  if (is_qk) {
    for (int64_t c = lane; c < num_vecs; c += group_size) {
      const VecT x = reinterpret_cast<const VecT*>(row_ptr)[c];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float f = T::to_float(x.v[e]);
        row_buf[c * V + e] = f;
        sum_sq += f * f;
      }
    }
  }
  sum_sq = group_sum(sum_sq, group_size);  // every lane calls: the shuffle needs the full warp

  // Step 2: per-head RMSNorm, rounded to the storage dtype (the reference's rms_norm returns it).
  const void* norm_weight = is_q ? p.q_norm_weight : p.k_norm_weight;
  if (is_qk && norm_weight != nullptr) {
    const float inv_rms = rsqrtf(sum_sq / static_cast<float>(head_size) + p.eps);
    for (int64_t c = lane; c < num_vecs; c += group_size) {
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const int64_t i = c * V + e;
        const float w = load_as_float(norm_weight, i, p.weight_dtype);
        row_buf[i] = T::to_float(T::from_float(row_buf[i] * inv_rms * w));
      }
    }
  }
  __syncthreads();  // RoPE partners live in other lanes' part of row_buf

  // Step 3: RoPE, store in place, and k into the cache.
  if (is_qk) {
    const int64_t pos = load_index(p.positions, token);
    const bool rotate = pos >= 0 && pos < p.cos_sin.max_position;
    const int64_t rot_dim = p.cos_sin.rot_dim, half = rot_dim / 2;
    const float scale = cache_scale(p.key_cache);
    Vec<CS, V>* cache_dst =
        write_cache ? reinterpret_cast<Vec<CS, V>*>(cache_row<C>(p.key_cache, slot, head))
                    : nullptr;
    for (int64_t c = lane; c < num_vecs; c += group_size) {
      VecT y;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const int64_t i = c * V + e;
        const float f =
            rotate && i < rot_dim ? rope_element(row_buf, i, half, p.is_neox, p.cos_sin, pos)
                                  : row_buf[i];
        y.v[e] = T::from_float(f);
      }
      reinterpret_cast<VecT*>(row_ptr)[c] = y;
      if (cache_dst != nullptr) {
        Vec<CS, V> q;
#pragma unroll
        for (int e = 0; e < V; ++e) q.v[e] = to_cache<T, C>(y.v[e], scale);
        cache_dst[c] = q;
      }
    }
  }
}

}  // namespace atom::gpu
