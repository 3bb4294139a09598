// CPU twins of rms_norm, fused_add_rms_norm and silu_and_mul: plain loops over rows, rows spread
// over threads with at::parallel_for.
#include <ATen/Parallel.h>

#include <cmath>

#include "../launchers.h"
#include "cpu_types.h"

namespace atom::cpu {

namespace {

// Rows per parallel task: about 16k elements each.
int64_t grain(int64_t row_len) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_len)); }

// Sum of squares with 8 independent fp32 accumulators (so the compiler vectorizes it and no
// long dependency chain stalls it), combined in double: as accurate as torch's own reduction.
template <typename T>
double sum_of_squares(const T* x, int64_t n) {
  constexpr int kLanes = 8;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float f = static_cast<float>(x[i + l]);
      acc[l] += f * f;
    }
  }
  double total = 0.0;
  for (; i < n; ++i) total += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  for (const float a : acc) total += a;
  return total;
}

template <typename T>
void normalize_row(const T* x, T* out, const RmsNormParams& p) {
  const double sum_sq = sum_of_squares(x, p.hidden);
  const float inv_rms = 1.0f / std::sqrt(static_cast<float>(sum_sq / p.hidden) + p.eps);
  for (int64_t i = 0; i < p.hidden; ++i) {
    out[i] = static_cast<T>(static_cast<float>(x[i]) * inv_rms *
                            load_as_float(p.weight, i, p.weight_dtype));
  }
}

}  // namespace

void rms_norm(const RmsNormParams& p) {
  dispatch_float(p.dtype, "rms_norm", [&](auto t) {
    using T = decltype(t);
    at::parallel_for(0, p.rows, grain(p.hidden), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        normalize_row(static_cast<const T*>(p.x) + r * p.x_row_stride,
                      static_cast<T*>(p.out) + r * p.out_row_stride, p);
      }
    });
  });
}

void fused_add_rms_norm(const FusedAddRmsNormParams& p) {
  const RmsNormParams norm{nullptr, 0, nullptr, 0, p.weight, 1, p.hidden, p.dtype, p.weight_dtype,
                           p.eps};
  dispatch_float(p.dtype, "fused_add_rms_norm", [&](auto t) {
    using T = decltype(t);
    at::parallel_for(0, p.rows, grain(p.hidden), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        T* x = static_cast<T*>(p.x) + r * p.x_row_stride;
        T* residual = static_cast<T*>(p.residual) + r * p.residual_row_stride;
        // residual' = round(x + residual); the norm reads the rounded sum, like the reference.
        for (int64_t i = 0; i < p.hidden; ++i) {
          residual[i] = static_cast<T>(static_cast<float>(x[i]) + static_cast<float>(residual[i]));
        }
        normalize_row(static_cast<const T*>(residual), x, norm);
      }
    });
  });
}

void silu_and_mul(const SiluAndMulParams& p) {
  dispatch_float(p.dtype, "silu_and_mul", [&](auto t) {
    using T = decltype(t);
    at::parallel_for(0, p.rows, grain(p.d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* gate = static_cast<const T*>(p.x) + r * p.x_row_stride;
        const T* up = gate + p.d;
        T* out = static_cast<T*>(p.out) + r * p.out_row_stride;
        for (int64_t i = 0; i < p.d; ++i) {
          const float g = static_cast<float>(gate[i]);
          out[i] = static_cast<T>(g / (1.0f + std::exp(-g)) * static_cast<float>(up[i]));
        }
      }
    });
  });
}

}  // namespace atom::cpu
