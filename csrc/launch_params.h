// The contract between the torch glue (ops.cpp) and the launchers (cpu/, gpu/): plain structs of raw
// pointers, sizes and strides. Nothing here depends on torch or on a GPU runtime, so the GPU
// launchers compile with nvcc/hipcc alone and the CPU twins with the host compiler.
//
// Conventions: strides count elements (not bytes); the innermost dimension (hidden / head_size) is
// always contiguous (the glue checks it); math is fp32 whatever the storage dtype.
#pragma once

#include <cstdint>

namespace atom {

// Storage dtypes of activations, weights and caches.
enum class DType : int32_t {
  kFloat32,
  kBFloat16,
  kFloat16,
  kFloat8E4M3FN,    // OCP fp8 (NVIDIA, MI350): bias 7, max 448, has -0
  kFloat8E4M3FNUZ,  // MI300 fp8: bias 8, max 240, no -0, NaN = 0x80
};

// rms_norm: out[r, :] = x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * weight.
struct RmsNormParams {
  void* out;  // [rows, hidden], dtype
  int64_t out_row_stride;
  const void* x;  // [rows, hidden], dtype
  int64_t x_row_stride;
  const void* weight;  // [hidden], weight_dtype (any float dtype)
  int64_t rows, hidden;
  DType dtype, weight_dtype;
  float eps;
};

// fused_add_rms_norm, in place: residual <- round(x + residual); x <- rms_norm(residual).
struct FusedAddRmsNormParams {
  void* x;  // [rows, hidden], dtype
  int64_t x_row_stride;
  void* residual;  // [rows, hidden], dtype
  int64_t residual_row_stride;
  const void* weight;  // [hidden], weight_dtype
  int64_t rows, hidden;
  DType dtype, weight_dtype;
  float eps;
};

// silu_and_mul: out[r, i] = silu(x[r, i]) * x[r, d + i].
struct SiluAndMulParams {
  void* out;  // [rows, d]
  int64_t out_row_stride;
  const void* x;  // [rows, 2 * d] = [gate | up]
  int64_t x_row_stride;
  int64_t rows, d;
  DType dtype;
};

// A [tokens, heads, head_size] tensor whose head_size dimension is contiguous.
struct HeadsView {
  void* data;
  int64_t heads, head_size, token_stride, head_stride;
};

// RoPE table: row p = [cos(p * inv_freq_0..rot_dim/2-1) | sin(...)], rot_dim = 2 * half.
struct CosSinView {
  const void* data;  // [max_position, rot_dim], dtype
  int64_t max_position, row_stride, rot_dim;
  DType dtype;
};

// Token positions / cache slots: int64 or int32 indices.
struct IndexView {
  const void* data;  // [count]
  int64_t count;
  bool is_int32;
};

// rotary_embedding, in place on query and key (same dtype). Tokens whose position lies outside
// [0, max_position) are left untouched (the CPU twin rejects them instead).
struct RotaryParams {
  IndexView positions;  // [tokens]
  HeadsView query, key;
  CosSinView cos_sin;
  int64_t tokens;
  DType dtype;
  bool is_neox;  // pairs (i, i + rot_dim/2) if true, else (2i, 2i + 1)
};

// A paged KV cache [num_blocks, block_size, heads, head_size]: slot s is row s / block_size,
// column s % block_size. An fp8 cache stores clamp(x / scale) with a per-tensor scale.
struct PagedCacheView {
  void* data;
  int64_t num_blocks, block_size, heads, head_size;
  int64_t block_stride, slot_stride, head_stride;
  DType dtype;
  const float* scale;  // [1] fp32 on the cache's device; nullptr means 1
};

// reshape_and_cache: cache[slot_mapping[t]] = key[t] (likewise value) for t < slot_mapping.count;
// negative slots are skipped (padding). Slots past the cache end are skipped on the GPU (the CPU
// twin rejects them).
struct CacheWriteParams {
  HeadsView key, value;  // read only
  PagedCacheView key_cache, value_cache;
  IndexView slot_mapping;
  DType dtype;  // of key and value
};

// fused_qk_norm_rope_cache, one pass over every head of every token:
//   q <- rope(rms_norm_per_head(q) if q_norm_weight else q)   (in place)
//   k <- rope(rms_norm_per_head(k) if k_norm_weight else k)   (in place)
//   key_cache[slot] <- k, value_cache[slot] <- v               (tokens t < slot_mapping.count)
// Intermediate values are rounded to dtype where the torch reference rounds them (after the
// norm), so the result matches the reference's sequence of ops.
struct QkNormRopeCacheParams {
  HeadsView q, k, v;  // same head_size, same dtype; v read only
  const void* q_norm_weight;  // [head_size] or nullptr
  const void* k_norm_weight;  // [head_size] or nullptr
  DType weight_dtype;
  float eps;
  IndexView positions;  // [tokens]
  CosSinView cos_sin;
  bool is_neox;
  PagedCacheView key_cache, value_cache;
  IndexView slot_mapping;
  int64_t tokens;
  DType dtype;
};

}  // namespace atom
