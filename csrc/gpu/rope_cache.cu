// Launchers of rotary_embedding, reshape_and_cache and fused_qk_norm_rope_cache (raw pointers in,
// no torch).
#include "../launchers.h"
#include "cache_kernels.cuh"
#include "dispatch.cuh"
#include "pdl.cuh"
#include "qk_norm_rope_cache_kernels.cuh"
#include "rotary_kernels.cuh"

namespace atom::gpu {

namespace {

// True if V-element vectors of `x` (elements of elem_bytes) stay aligned for every head.
bool heads_aligned(const HeadsView& x, int64_t elem_bytes, int64_t v) {
  return x.head_size % v == 0 &&
         vector_aligned(x.data, elem_bytes, v, {x.token_stride, x.head_stride});
}

bool cache_aligned(const PagedCacheView& c, int64_t elem_bytes, int64_t v) {
  return c.head_size % v == 0 &&
         vector_aligned(c.data, elem_bytes, v, {c.block_stride, c.slot_stride, c.head_stride});
}

}  // namespace

void rotary_embedding(const RotaryParams& p, void* stream) {
  if (p.tokens == 0 || p.cos_sin.rot_dim == 0) return;
  dispatch_float(p.dtype, "rotary_embedding", [&](auto t) {
    using T = decltype(t);
    using S = typename T::storage;
    constexpr int N = 16 / sizeof(S);
    const int64_t half = p.cos_sin.rot_dim / 2;
    // 16-byte vectors when every item's vectors are aligned: neox items take N pairs from each
    // half, gpt-j items N / 2 interleaved pairs.
    const int64_t pairs_per_item = p.is_neox ? N : N / 2;
    const bool wide = half % pairs_per_item == 0 &&
                      vector_aligned(p.query.data, sizeof(S), N,
                                     {p.query.token_stride, p.query.head_stride}) &&
                      vector_aligned(p.key.data, sizeof(S), N,
                                     {p.key.token_stride, p.key.head_stride});
    const int64_t heads = p.query.heads > p.key.heads ? p.query.heads : p.key.heads;
    const int threads = block_threads(heads * (wide ? half / pairs_per_item : half), 512);
    const size_t smem = static_cast<size_t>(p.cos_sin.rot_dim) * sizeof(float);
    const auto s = static_cast<gpuStream_t>(stream);
    if (!wide) {
      launch_kernel(rotary_embedding_kernel<T, 0, false>, p.tokens, threads, smem, s, p);
    } else if (p.is_neox) {
      launch_kernel(rotary_embedding_kernel<T, N, true>, p.tokens, threads, smem, s, p);
    } else {
      launch_kernel(rotary_embedding_kernel<T, N, false>, p.tokens, threads, smem, s, p);
    }
  });
  check_launch("rotary_embedding");
}

void reshape_and_cache(const CacheWriteParams& p, void* stream) {
  if (p.slot_mapping.count == 0) return;
  dispatch_cache(p.dtype, p.key_cache.dtype, "reshape_and_cache", [&](auto t, auto c) {
    using T = decltype(t);
    using C = decltype(c);
    using S = typename T::storage;
    using CS = typename C::storage;
    constexpr int V = 16 / sizeof(S);
    const bool wide = heads_aligned(p.key, sizeof(S), V) && heads_aligned(p.value, sizeof(S), V) &&
                      cache_aligned(p.key_cache, sizeof(CS), V) &&
                      cache_aligned(p.value_cache, sizeof(CS), V);
    const int64_t vecs = p.key.heads * (wide ? p.key.head_size / V : p.key.head_size);
    const int threads = block_threads(vecs, 512);
    const auto s = static_cast<gpuStream_t>(stream);
    if (wide) {
      launch_kernel(reshape_and_cache_kernel<T, C, V>, p.slot_mapping.count, threads, 0, s, p);
    } else {
      launch_kernel(reshape_and_cache_kernel<T, C, 1>, p.slot_mapping.count, threads, 0, s, p);
    }
  });
  check_launch("reshape_and_cache");
}

void fused_qk_norm_rope_cache(const QkNormRopeCacheParams& p, void* stream) {
  const int64_t rows = p.tokens * (p.q.heads + 2 * p.k.heads);
  if (rows == 0 || p.q.head_size == 0) return;
  dispatch_cache(p.dtype, p.key_cache.dtype, "fused_qk_norm_rope_cache", [&](auto t, auto c) {
    using T = decltype(t);
    using C = decltype(c);
    using S = typename T::storage;
    using CS = typename C::storage;
    constexpr int V = 16 / sizeof(S);
    const bool wide = heads_aligned(p.q, sizeof(S), V) && heads_aligned(p.k, sizeof(S), V) &&
                      heads_aligned(p.v, sizeof(S), V) &&
                      cache_aligned(p.key_cache, sizeof(CS), V) &&
                      cache_aligned(p.value_cache, sizeof(CS), V);
    const int64_t num_vecs = wide ? p.q.head_size / V : p.q.head_size;
    // G lanes per row: enough for one vector each (up to 32, so a group never spans warps).
    const int group = next_pow2(num_vecs < 32 ? num_vecs : 32);
    constexpr int kThreads = 256;
    const int64_t rows_per_block = kThreads / group;
    const size_t smem = static_cast<size_t>(rows_per_block * p.q.head_size) * sizeof(float);
    if (smem > 48 * 1024) {
      throw std::invalid_argument("atom: fused_qk_norm_rope_cache: head_size " +
                                  std::to_string(p.q.head_size) + " is too large");
    }
    const auto grid = static_cast<unsigned>(ceil_div(rows, rows_per_block));
    const auto s = static_cast<gpuStream_t>(stream);
    if (wide) {
      launch_kernel(qk_norm_rope_cache_kernel<T, C, V>, grid, kThreads, smem, s, p, group);
    } else {
      launch_kernel(qk_norm_rope_cache_kernel<T, C, 1>, grid, kThreads, smem, s, p, group);
    }
  });
  check_launch("fused_qk_norm_rope_cache");
}

}  // namespace atom::gpu
