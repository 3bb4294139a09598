// Element types of the CPU twins: torch's own c10 scalar types, so that every conversion (bf16,
// fp16, fp8 rounding) is bit-identical to what the torch reference does on the CPU.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e4m3fnuz.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "../check.h"
#include "../launch_params.h"

namespace atom::cpu {

// Calls fn(T{}) for the c10 scalar type of an activation dtype.
template <typename Fn>
void dispatch_float(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      fn(float{});
      break;
    case DType::kBFloat16:
      fn(c10::BFloat16{});
      break;
    case DType::kFloat16:
      fn(c10::Half{});
      break;
    default:
      throw_value_error(::atom::message("atom: ", op, ": unsupported activation dtype"));
  }
}

// Calls fn(T{}, C{}) for activations of `dtype` written to a cache of `cache_dtype` (the same dtype
// or fp8).
template <typename Fn>
void dispatch_cache(DType dtype, DType cache_dtype, const char* op, Fn&& fn) {
  dispatch_float(dtype, op, [&](auto t) {
    using T = decltype(t);
    if (cache_dtype == dtype) {
      fn(t, T{});
    } else if (cache_dtype == DType::kFloat8E4M3FN) {
      fn(t, c10::Float8_e4m3fn{});
    } else if (cache_dtype == DType::kFloat8E4M3FNUZ) {
      fn(t, c10::Float8_e4m3fnuz{});
    } else {
      throw_value_error(
          ::atom::message("atom: ", op, ": the cache must have the activations' dtype or be fp8"));
    }
  });
}

template <typename C>
constexpr bool kIsFp8 =
    std::is_same_v<C, c10::Float8_e4m3fn> || std::is_same_v<C, c10::Float8_e4m3fnuz>;

// Weights and RoPE tables may have any float dtype.
inline float load_as_float(const void* p, int64_t i, DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
      return static_cast<float>(static_cast<const c10::BFloat16*>(p)[i]);
    case DType::kFloat16:
      return static_cast<float>(static_cast<const c10::Half*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

inline int64_t load_index(const IndexView& idx, int64_t i) {
  return idx.is_int32 ? static_cast<int64_t>(static_cast<const int32_t*>(idx.data)[i])
                      : static_cast<const int64_t*>(idx.data)[i];
}

// The cache value of x: the same value for a cache of the activations' dtype, else (fp8)
// clamp(x / scale, -max, max) rounded to fp8 (NaN stays NaN, as with torch.clamp).
template <typename T, typename C>
C to_cache(T x, float scale) {
  if constexpr (kIsFp8<C>) {
    const float max = static_cast<float>(std::numeric_limits<C>::max());
    float f = static_cast<float>(x) / scale;
    f = f < -max ? -max : (f > max ? max : f);
    return C(f);
  } else {
    return x;
  }
}

// Rejects a slot past the end of the cache (the GPU kernels skip it instead).
inline void check_slots(const IndexView& slots, int64_t count, const PagedCacheView& cache) {
  const int64_t capacity = cache.num_blocks * cache.block_size;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t s = load_index(slots, t);
    ATOM_CHECK_VALUE(s < capacity, "atom: slot_mapping[", t, "] = ", s,
                     " is past the end of the cache (", capacity, " slots)");
  }
}

inline void check_positions(const IndexView& positions, int64_t count, int64_t max_position) {
  for (int64_t t = 0; t < count; ++t) {
    const int64_t pos = load_index(positions, t);
    ATOM_CHECK_VALUE(pos >= 0 && pos < max_position, "atom: positions[", t, "] = ", pos,
                     " is outside the cos_sin_cache (", max_position, " positions)");
  }
}

template <typename T>
T* cache_row(const PagedCacheView& cache, int64_t slot, int64_t head) {
  return static_cast<T*>(cache.data) + (slot / cache.block_size) * cache.block_stride +
         (slot % cache.block_size) * cache.slot_stride + head * cache.head_stride;
}

}  // namespace atom::cpu
