// Host-side helpers of the GPU launchers: dtype dispatch and launch-shape arithmetic.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "numerics.cuh"

namespace atom::gpu {

// Calls fn(T{}) with the element traits of an activation dtype.
template <typename Fn>
void dispatch_float(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      fn(F32{});
      break;
    case DType::kBFloat16:
      fn(BF16{});
      break;
    case DType::kFloat16:
      fn(F16{});
      break;
    default:
      throw std::invalid_argument(std::string("atom: ") + op + ": unsupported activation dtype");
  }
}

// Calls fn(T{}, C{}) for activations of `dtype` written to a cache of `cache_dtype`, which is
// either the same dtype or fp8.
template <typename Fn>
void dispatch_cache(DType dtype, DType cache_dtype, const char* op, Fn&& fn) {
  dispatch_float(dtype, op, [&](auto t) {
    using T = decltype(t);
    if (cache_dtype == dtype) {
      fn(t, T{});
    } else if (cache_dtype == DType::kFloat8E4M3FN) {
      fn(t, F8E4M3FN{});
    } else if (cache_dtype == DType::kFloat8E4M3FNUZ) {
      fn(t, F8E4M3FNUZ{});
    } else {
      throw std::invalid_argument(std::string("atom: ") + op +
                                  ": the cache must have the activations' dtype or be fp8");
    }
  });
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads for a block that walks `work` items: a multiple of 64 (a whole wavefront on AMD, two
// warps on NVIDIA) between 64 and max_threads.
inline int block_threads(int64_t work, int max_threads) {
  const int64_t t = ceil_div(work, 64) * 64;
  return static_cast<int>(t < 64 ? 64 : (t > max_threads ? max_threads : t));
}

// True if a pointer and its strides (in elements of elem_bytes) allow V-element vector access.
inline bool vector_aligned(const void* ptr, int64_t elem_bytes, int64_t v,
                           std::initializer_list<int64_t> strides) {
  if (reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(elem_bytes * v) != 0) return false;
  for (const int64_t s : strides) {
    if (s % v != 0) return false;
  }
  return true;
}

inline int next_pow2(int64_t x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

}  // namespace atom::gpu
