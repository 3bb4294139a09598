// Writing K/V rows into the paged cache (see launch_params.h for the layout and slot rules).
#pragma once

#include "numerics.cuh"
#include "pdl.cuh"

namespace atom::gpu {

// Whether a slot is written: negative slots are padding; slots past the end are skipped rather
// than written out of bounds (the glue checks that key and value caches have the same shape).
__device__ __forceinline__ bool slot_in_cache(const PagedCacheView& cache, int64_t slot) {
  return slot >= 0 && slot < cache.num_blocks * cache.block_size;
}

// Where (slot, head) starts in the cache; slot must satisfy slot_in_cache.
template <typename C>
__device__ __forceinline__ typename C::storage* cache_row(const PagedCacheView& cache,
                                                          int64_t slot, int64_t head) {
  const int64_t block = slot / cache.block_size, offset = slot % cache.block_size;
  return static_cast<typename C::storage*>(cache.data) + block * cache.block_stride +
         offset * cache.slot_stride + head * cache.head_stride;
}

__device__ __forceinline__ float cache_scale(const PagedCacheView& cache) {
  return cache.scale != nullptr ? *cache.scale : 1.0f;
}

// Copies (and for fp8 quantizes) one token's heads of `src` into `cache`; threads stride over
// V-element vectors of (head, feature).
template <typename T, typename C, int V>
__device__ __forceinline__ void write_token(const HeadsView& src, const PagedCacheView& cache,
                                            int64_t token, int64_t slot) {
  using S = typename T::storage;
  using CS = typename C::storage;
  const float scale = cache_scale(cache);
  const int64_t vecs_per_head = src.head_size / V;
  for (int64_t w = threadIdx.x; w < src.heads * vecs_per_head; w += blockDim.x) {
    const int64_t head = w / vecs_per_head, i = w % vecs_per_head;
    CS* dst = cache_row<C>(cache, slot, head);
    const S* in = static_cast<const S*>(src.data) + token * src.token_stride + head * src.head_stride;
    const Vec<S, V> x = reinterpret_cast<const Vec<S, V>*>(in)[i];
    Vec<CS, V> y;
#pragma unroll
    for (int e = 0; e < V; ++e) y.v[e] = to_cache<T, C>(x.v[e], scale);
    reinterpret_cast<Vec<CS, V>*>(dst)[i] = y;
  }
}

// grid = number of slots; one block per token. Launched with launch_kernel (PDL).
template <typename T, typename C, int V>
__global__ void reshape_and_cache_kernel(CacheWriteParams p) {
  pdl_wait();  // before reading the slot (and before the early return): see pdl.cuh
  pdl_launch_dependents();
  const int64_t token = blockIdx.x;
  const int64_t slot = load_index(p.slot_mapping, token);
  if (!slot_in_cache(p.key_cache, slot)) return;  // uniform over the block
  write_token<T, C, V>(p.key, p.key_cache, token, slot);
  write_token<T, C, V>(p.value, p.value_cache, token, slot);
}

}  // namespace atom::gpu
