// Storage types and their fp32 conversions, written by hand so that one source serves CUDA and
// HIP (including old HIP releases without hip_bf16.h / fp8 headers). The bf16 and fp8 encoders
// are also plain host C++ (no GPU compiler needed), so a host harness checks them bit for bit
// against torch (tests/build/test_gpu_numerics.py).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../launch_params.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#include "compat.h"
#define ATOM_HD __host__ __device__ __forceinline__
#define ATOM_GPU_COMPILER 1
#else
#define ATOM_HD inline
#endif

namespace atom::gpu {

ATOM_HD uint32_t bits_of(float f) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

ATOM_HD float float_of(uint32_t u) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// bf16 = the top 16 bits of fp32, rounded to nearest even; every NaN becomes 0x7FC0 (as in c10).
ATOM_HD uint16_t bf16_from_float(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // Ampere and later round in one instruction (the same round to nearest even, subnormals kept);
  // its NaN is the canonical 0x7FFF, so NaN is mapped to c10's 0x7FC0 here.
  uint16_t h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return f != f ? static_cast<uint16_t>(0x7fc0u) : h;
#endif
  uint32_t u = bits_of(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

ATOM_HD float float_from_bf16(uint16_t h) { return float_of(static_cast<uint32_t>(h) << 16); }

// fp8 e4m3 with exponent bias kBias: 7 = e4m3fn (max 448, NaN = S.1111.111, has -0),
// 8 = e4m3fnuz (max 240, NaN = 0x80, no -0). Round to nearest even, saturating at the largest
// finite value (callers clamp first, like the torch reference). Code layout: S EEEE MMM.
template <int kBias>
ATOM_HD uint8_t e4m3_from_float(float f) {
  constexpr bool kFnuz = kBias == 8;
  constexpr uint32_t kMaxCode = kFnuz ? 0x7fu : 0x7eu;
  const uint32_t u = bits_of(f);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u) return kFnuz ? 0x80u : static_cast<uint8_t>(0x7fu | sign);
  uint32_t code;
  if (mag < static_cast<uint32_t>(127 + 1 - kBias) << 23) {
    // Below the smallest normal 2^(1-bias): subnormals are m * 2^(-bias-2), m = 0..7. Scaling by
    // a power of two is exact, so rintf (round half to even) gives m; m = 8 is the smallest
    // normal, whose code is also 8.
    code = static_cast<uint32_t>(rintf(float_of(mag) * static_cast<float>(1 << (kBias + 2))));
  } else {
    // Normal: keep 3 of fp32's 23 mantissa bits, round to nearest even by adding 0x7ffff plus
    // the lowest kept bit; a mantissa carry correctly bumps the exponent. Then rebias.
    const uint32_t rounded = mag + 0x7ffffu + ((mag >> 20) & 1u);
    code = (rounded >> 20) - (static_cast<uint32_t>(127 - kBias) << 3);
  }
  if (code > kMaxCode) code = kMaxCode;
  if (kFnuz && code == 0) return 0;  // no negative zero in fnuz
  return static_cast<uint8_t>(code | sign);
}

// Element traits: storage type and fp32 conversions. Math is always fp32.
struct F32 {
  using storage = float;
  static ATOM_HD float to_float(float s) { return s; }
  static ATOM_HD float from_float(float f) { return f; }
};

struct BF16 {
  using storage = uint16_t;
  static ATOM_HD float to_float(uint16_t s) { return float_from_bf16(s); }
  static ATOM_HD uint16_t from_float(float f) { return bf16_from_float(f); }
};

#if defined(ATOM_GPU_COMPILER)
struct F16 {
  using storage = uint16_t;
  static __device__ __forceinline__ float to_float(uint16_t s) {
    return __half2float(__ushort_as_half(s));
  }
  static __device__ __forceinline__ uint16_t from_float(float f) {
    return __half_as_ushort(__float2half_rn(f));
  }
};
#endif

struct F8E4M3FN {
  using storage = uint8_t;
  static constexpr float kMax = 448.0f;
  static ATOM_HD uint8_t from_float(float f) { return e4m3_from_float<7>(f); }
};

struct F8E4M3FNUZ {
  using storage = uint8_t;
  static constexpr float kMax = 240.0f;
  static ATOM_HD uint8_t from_float(float f) { return e4m3_from_float<8>(f); }
};

template <typename T>
constexpr bool kIsFp8 = sizeof(typename T::storage) == 1;

// The value a cache of element type C stores for source element s of type T: the same bits when
// C == T, else (fp8) clamp(x / scale, -max, max) rounded to fp8. The clamp keeps NaN, like
// torch.clamp, so that NaN in means NaN in the cache.
template <typename T, typename C>
ATOM_HD typename C::storage to_cache(typename T::storage s, float scale) {
  if constexpr (kIsFp8<C>) {
    float f = T::to_float(s) / scale;
    f = f < -C::kMax ? -C::kMax : (f > C::kMax ? C::kMax : f);
    return C::from_float(f);
  } else {
    static_assert(sizeof(typename C::storage) == sizeof(typename T::storage), "same dtype only");
    return s;
  }
}

// N elements moved as one aligned load/store (16 bytes for the wide paths).
template <typename S, int N>
struct alignas(sizeof(S) * N) Vec {
  S v[N];
};

#if defined(ATOM_GPU_COMPILER)
// Weights and RoPE tables are small and cached; reading them with a runtime dtype (a uniform
// branch) keeps the number of kernel instantiations down.
__device__ __forceinline__ float load_as_float(const void* p, int64_t i, DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
      return BF16::to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kFloat16:
      return F16::to_float(static_cast<const uint16_t*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ int64_t load_index(const IndexView& idx, int64_t i) {
  return idx.is_int32 ? static_cast<int64_t>(static_cast<const int32_t*>(idx.data)[i])
                      : static_cast<const int64_t*>(idx.data)[i];
}
#endif

}  // namespace atom::gpu
