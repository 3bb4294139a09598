// Launchers of rms_norm, fused_add_rms_norm and silu_and_mul (raw pointers in, no torch).
#include "../launchers.h"
#include "activation_kernels.cuh"
#include "dispatch.cuh"
#include "norm_kernels.cuh"

namespace atom::gpu {

namespace {

// Enough threads that each holds ~2 vectors of the row, so the row stays in registers.
int norm_threads(int64_t num_vecs) { return block_threads(ceil_div(num_vecs, 2), 1024); }

}  // namespace

void rms_norm(const RmsNormParams& p, void* stream) {
  if (p.rows == 0 || p.hidden == 0) return;
  dispatch_float(p.dtype, "rms_norm", [&](auto t) {
    using T = decltype(t);
    using S = typename T::storage;
    constexpr int V = 16 / sizeof(S);
    const bool wide = p.hidden % V == 0 && vector_aligned(p.x, sizeof(S), V, {p.x_row_stride}) &&
                      vector_aligned(p.out, sizeof(S), V, {p.out_row_stride});
    const int64_t num_vecs = wide ? p.hidden / V : p.hidden;
    const auto s = static_cast<gpuStream_t>(stream);
    if (wide) {
      rms_norm_kernel<T, V><<<p.rows, norm_threads(num_vecs), 0, s>>>(p);
    } else {
      rms_norm_kernel<T, 1><<<p.rows, norm_threads(num_vecs), 0, s>>>(p);
    }
  });
  check_launch("rms_norm");
}

void fused_add_rms_norm(const FusedAddRmsNormParams& p, void* stream) {
  if (p.rows == 0 || p.hidden == 0) return;
  dispatch_float(p.dtype, "fused_add_rms_norm", [&](auto t) {
    using T = decltype(t);
    using S = typename T::storage;
    constexpr int V = 16 / sizeof(S);
    const bool wide = p.hidden % V == 0 && vector_aligned(p.x, sizeof(S), V, {p.x_row_stride}) &&
                      vector_aligned(p.residual, sizeof(S), V, {p.residual_row_stride});
    const int64_t num_vecs = wide ? p.hidden / V : p.hidden;
    const auto s = static_cast<gpuStream_t>(stream);
    if (wide) {
      fused_add_rms_norm_kernel<T, V><<<p.rows, norm_threads(num_vecs), 0, s>>>(p);
    } else {
      fused_add_rms_norm_kernel<T, 1><<<p.rows, norm_threads(num_vecs), 0, s>>>(p);
    }
  });
  check_launch("fused_add_rms_norm");
}

void silu_and_mul(const SiluAndMulParams& p, void* stream) {
  if (p.rows == 0 || p.d == 0) return;
  dispatch_float(p.dtype, "silu_and_mul", [&](auto t) {
    using T = decltype(t);
    using S = typename T::storage;
    constexpr int V = 16 / sizeof(S);
    // The up half starts d elements into the row, so d itself must keep vectors aligned.
    const bool wide = p.d % V == 0 && vector_aligned(p.x, sizeof(S), V, {p.x_row_stride}) &&
                      vector_aligned(p.out, sizeof(S), V, {p.out_row_stride});
    const int64_t num_vecs = wide ? p.d / V : p.d;
    constexpr int kThreads = 256;
    const dim3 grid(static_cast<unsigned>(p.rows), static_cast<unsigned>(ceil_div(num_vecs, kThreads)));
    const auto s = static_cast<gpuStream_t>(stream);
    if (wide) {
      silu_and_mul_kernel<T, V><<<grid, kThreads, 0, s>>>(p);
    } else {
      silu_and_mul_kernel<T, 1><<<grid, kThreads, 0, s>>>(p);
    }
  });
  check_launch("silu_and_mul");
}

}  // namespace atom::gpu
