// CPU twins of rotary_embedding, reshape_and_cache and fused_qk_norm_rope_cache: plain loops over
// tokens, spread over threads with at::parallel_for. Out-of-range positions and slots are
// rejected up front (the GPU kernels cannot raise, so they skip them).
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "../launchers.h"
#include "cpu_types.h"

namespace atom::cpu {

namespace {

// Rotates the first rot_dim features of one head held as fp32 in x (see rotary_kernels.cuh).
void rotate_head(float* x, const float* cos, const float* sin, int64_t half, bool is_neox) {
  for (int64_t i = 0; i < half; ++i) {
    const int64_t ia = is_neox ? i : 2 * i, ib = is_neox ? i + half : 2 * i + 1;
    const float a = x[ia], b = x[ib];
    x[ia] = a * cos[i] - b * sin[i];
    x[ib] = b * cos[i] + a * sin[i];
  }
}

// This token's cos | sin row as fp32, in `out` (rot_dim floats).
void load_cos_sin(const CosSinView& table, int64_t pos, float* out) {
  for (int64_t i = 0; i < table.rot_dim; ++i) {
    out[i] = load_as_float(table.data, pos * table.row_stride + i, table.dtype);
  }
}

template <typename T>
void rotate_heads(const HeadsView& x, int64_t token, const float* cos_sin, int64_t rot_dim,
                  bool is_neox, std::vector<float>& buf) {
  const int64_t half = rot_dim / 2;
  for (int64_t h = 0; h < x.heads; ++h) {
    T* head = static_cast<T*>(x.data) + token * x.token_stride + h * x.head_stride;
    for (int64_t i = 0; i < rot_dim; ++i) buf[i] = static_cast<float>(head[i]);
    rotate_head(buf.data(), cos_sin, cos_sin + half, half, is_neox);
    for (int64_t i = 0; i < rot_dim; ++i) head[i] = static_cast<T>(buf[i]);
  }
}

template <typename T, typename C>
void write_heads(const HeadsView& src, const PagedCacheView& cache, int64_t token, int64_t slot) {
  const float scale = cache.scale != nullptr ? *cache.scale : 1.0f;
  for (int64_t h = 0; h < src.heads; ++h) {
    const T* in = static_cast<const T*>(src.data) + token * src.token_stride + h * src.head_stride;
    C* out = cache_row<C>(cache, slot, h);
    for (int64_t i = 0; i < src.head_size; ++i) out[i] = to_cache<T, C>(in[i], scale);
  }
}

}  // namespace

void rotary_embedding(const RotaryParams& p) {
  check_positions(p.positions, p.tokens, p.cos_sin.max_position);
  dispatch_float(p.dtype, "rotary_embedding", [&](auto t) {
    using T = decltype(t);
    at::parallel_for(0, p.tokens, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> cos_sin(p.cos_sin.rot_dim), buf(p.cos_sin.rot_dim);
      for (int64_t token = begin; token < end; ++token) {
        load_cos_sin(p.cos_sin, load_index(p.positions, token), cos_sin.data());
        rotate_heads<T>(p.query, token, cos_sin.data(), p.cos_sin.rot_dim, p.is_neox, buf);
        rotate_heads<T>(p.key, token, cos_sin.data(), p.cos_sin.rot_dim, p.is_neox, buf);
      }
    });
  });
}

void reshape_and_cache(const CacheWriteParams& p) {
  check_slots(p.slot_mapping, p.slot_mapping.count, p.key_cache);
  dispatch_cache(p.dtype, p.key_cache.dtype, "reshape_and_cache", [&](auto t, auto c) {
    using T = decltype(t);
    using C = decltype(c);
    at::parallel_for(0, p.slot_mapping.count, 16, [&](int64_t begin, int64_t end) {
      for (int64_t token = begin; token < end; ++token) {
        const int64_t slot = load_index(p.slot_mapping, token);
        if (slot < 0) continue;  // padding
        write_heads<T, C>(p.key, p.key_cache, token, slot);
        write_heads<T, C>(p.value, p.value_cache, token, slot);
      }
    });
  });
}

namespace {

// Per-head RMSNorm (rounded to T, as the reference rounds its rms_norm output), then RoPE, of
// every head of one token of x, in place; with `cache`, the result is also written there.
template <typename T, typename C>
void norm_rope_heads(const HeadsView& x, const void* norm_weight, const QkNormRopeCacheParams& p,
                     int64_t token, const float* cos_sin, const PagedCacheView* cache,
                     int64_t slot, std::vector<float>& buf) {
  const int64_t d = x.head_size, half = p.cos_sin.rot_dim / 2;
  const float scale = cache != nullptr && cache->scale != nullptr ? *cache->scale : 1.0f;
  for (int64_t h = 0; h < x.heads; ++h) {
    T* head = static_cast<T*>(x.data) + token * x.token_stride + h * x.head_stride;
    double sum_sq = 0.0;
    for (int64_t i = 0; i < d; ++i) {
      buf[i] = static_cast<float>(head[i]);
      sum_sq += static_cast<double>(buf[i]) * buf[i];
    }
    if (norm_weight != nullptr) {
      const float inv_rms = 1.0f / std::sqrt(static_cast<float>(sum_sq / d) + p.eps);
      for (int64_t i = 0; i < d; ++i) {
        const float w = load_as_float(norm_weight, i, p.weight_dtype);
        buf[i] = static_cast<float>(static_cast<T>(buf[i] * inv_rms * w));
      }
    }
    rotate_head(buf.data(), cos_sin, cos_sin + half, half, p.is_neox);
    C* out = cache != nullptr ? cache_row<C>(*cache, slot, h) : nullptr;
    for (int64_t i = 0; i < d; ++i) {
      head[i] = static_cast<T>(buf[i]);
      if (out != nullptr) out[i] = to_cache<T, C>(head[i], scale);
    }
  }
}

}  // namespace

void fused_qk_norm_rope_cache(const QkNormRopeCacheParams& p) {
  check_positions(p.positions, p.tokens, p.cos_sin.max_position);
  check_slots(p.slot_mapping, p.slot_mapping.count, p.key_cache);
  dispatch_cache(p.dtype, p.key_cache.dtype, "fused_qk_norm_rope_cache", [&](auto t, auto c) {
    using T = decltype(t);
    using C = decltype(c);
    at::parallel_for(0, p.tokens, 8, [&](int64_t begin, int64_t end) {
      std::vector<float> cos_sin(p.cos_sin.rot_dim), buf(p.q.head_size);
      for (int64_t token = begin; token < end; ++token) {
        load_cos_sin(p.cos_sin, load_index(p.positions, token), cos_sin.data());
        const int64_t slot = token < p.slot_mapping.count ? load_index(p.slot_mapping, token) : -1;
        norm_rope_heads<T, C>(p.q, p.q_norm_weight, p, token, cos_sin.data(), nullptr, -1, buf);
        norm_rope_heads<T, C>(p.k, p.k_norm_weight, p, token, cos_sin.data(),
                              slot >= 0 ? &p.key_cache : nullptr, slot, buf);
        if (slot >= 0) write_heads<T, C>(p.v, p.value_cache, token, slot);
      }
    });
  });
}

}  // namespace atom::cpu
