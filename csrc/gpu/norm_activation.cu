// Launchers of rms_norm, fused_add_rms_norm and silu_and_mul (raw pointers in, no torch).
#include <type_traits>

#include "../launchers.h"
#include "activation_kernels.cuh"
#include "dispatch.cuh"
#include "norm_kernels.cuh"
#include "pdl.cuh"

namespace atom::gpu {

namespace {

// Calls fn(W{}) with the weight's element traits: the activations' or fp32 (the glue converts
// any other weight dtype to fp32).
template <typename T, typename Fn>
void dispatch_weight(DType weight_dtype, DType dtype, const char* op, Fn&& fn) {
  if (weight_dtype == dtype) {
    fn(T{});
  } else if (weight_dtype == DType::kFloat32) {
    fn(F32{});
  } else {
    throw std::invalid_argument(std::string("atom: ") + op +
                                ": the weight must have x's dtype or be float32");
  }
}

template <int N>
using Int = std::integral_constant<int, N>;

// Picks the vector width (16 bytes of T when x, out / residual and the weight allow it, else 1
// element) and the block shape (norm_shape), then calls launch(Int<V>{}, Int<kVecs>{}, shape).
template <typename T, typename W, typename Params, typename Launch>
void launch_norm(const Params& p, bool rows_aligned, const char* op, Launch&& launch) {
  // The kernels index within a row in 32 bits (with room for the last stride step).
  if (p.hidden >= (int64_t{1} << 30)) {
    throw std::invalid_argument(std::string("atom: ") + op + ": hidden size " +
                                std::to_string(p.hidden) + " is too large (>= 2^30)");
  }
  constexpr int V = 16 / sizeof(typename T::storage);
  const bool wide = rows_aligned && p.hidden % V == 0 &&
                    vector_aligned(p.weight, sizeof(typename W::storage), V, {});
  const NormShape shape = norm_shape(wide ? p.hidden / V : p.hidden);
  if (wide) {
    if (shape.vecs_per_thread == 2) {
      launch(Int<V>{}, Int<2>{}, shape);
    } else {
      launch(Int<V>{}, Int<4>{}, shape);
    }
  } else if (shape.vecs_per_thread == 2) {
    launch(Int<1>{}, Int<2>{}, shape);
  } else {
    launch(Int<1>{}, Int<4>{}, shape);
  }
}

}  // namespace

void rms_norm(const RmsNormParams& p, void* stream) {
  if (p.rows == 0 || p.hidden == 0) return;
  dispatch_float(p.dtype, "rms_norm", [&](auto t) {
    using T = decltype(t);
    using S = typename T::storage;
    constexpr int V = 16 / sizeof(S);
    dispatch_weight<T>(p.weight_dtype, p.dtype, "rms_norm", [&](auto w) {
      using W = decltype(w);
      const bool aligned = vector_aligned(p.x, sizeof(S), V, {p.x_row_stride}) &&
                           vector_aligned(p.out, sizeof(S), V, {p.out_row_stride});
      launch_norm<T, W>(p, aligned, "rms_norm", [&](auto v, auto vecs, NormShape shape) {
        constexpr int kV = decltype(v)::value, kVecs = decltype(vecs)::value;
        const auto s = static_cast<gpuStream_t>(stream);
        // Loading the weight before the reduction pays up to 256 threads a row and not beyond
        // (tools/gpu/norm_sweep.cu on the H100, bf16: 99% vs 94% of copy at 4096 wide, 99% vs
        // 89% at 2048, but 88% vs 96% at 8192, 512 threads). Not with 4 vectors a thread: their
        // fp32 weights would not fit in the registers that 1024-thread launch bounds leave.
        if constexpr (kVecs == 2) {
          if (shape.threads <= 256) {
            launch_kernel(rms_norm_kernel<T, W, kV, 1, kVecs, true>, p.rows, shape.threads, 0, s,
                          p);
            return;
          }
        }
        launch_kernel(rms_norm_kernel<T, W, kV, 1, kVecs, false>, p.rows, shape.threads, 0, s, p);
      });
    });
  });
  check_launch("rms_norm");
}

void fused_add_rms_norm(const FusedAddRmsNormParams& p, void* stream) {
  if (p.rows == 0 || p.hidden == 0) return;
  dispatch_float(p.dtype, "fused_add_rms_norm", [&](auto t) {
    using T = decltype(t);
    using S = typename T::storage;
    constexpr int V = 16 / sizeof(S);
    dispatch_weight<T>(p.weight_dtype, p.dtype, "fused_add_rms_norm", [&](auto w) {
      using W = decltype(w);
      const bool aligned = vector_aligned(p.x, sizeof(S), V, {p.x_row_stride}) &&
                           vector_aligned(p.residual, sizeof(S), V, {p.residual_row_stride});
      launch_norm<T, W>(p, aligned, "fused_add_rms_norm", [&](auto v, auto vecs, NormShape shape) {
        constexpr int kV = decltype(v)::value, kVecs = decltype(vecs)::value;
        launch_kernel(fused_add_rms_norm_kernel<T, W, kV, 1, kVecs, false>, p.rows, shape.threads,
                      0, static_cast<gpuStream_t>(stream), p);
      });
    });
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
      launch_kernel(silu_and_mul_kernel<T, V>, grid, kThreads, 0, s, p);
    } else {
      launch_kernel(silu_and_mul_kernel<T, 1>, grid, kThreads, 0, s, p);
    }
  });
  check_launch("silu_and_mul");
}

}  // namespace atom::gpu
