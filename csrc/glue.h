// Helpers of the torch glue: tensor checks that raise ValueError with the offending value, the
// translation of tensors into launch-param views, and the CPU/GPU launch switch.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>

#include <optional>
#include <string>

#include "check.h"
#include "launch_params.h"
#include "launchers.h"

namespace atom {

#if defined(ATOM_WITH_GPU)
#define ATOM_GPU_FN(name) ::atom::gpu::name
#else
#define ATOM_GPU_FN(name) nullptr
#endif

#if defined(ATOM_WITH_GPU)
// The current CUDA/HIP stream of `device`, as a cudaStream_t / hipStream_t (gpu/torch_stream.cpp).
void* current_gpu_stream(const c10::Device& device);
#endif

inline DType to_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kHalf:
      return DType::kFloat16;
    case at::kFloat8_e4m3fn:
      return DType::kFloat8E4M3FN;
    case at::kFloat8_e4m3fnuz:
      return DType::kFloat8E4M3FNUZ;
    default:
      break;
  }
  throw_value_error(::atom::message("atom: ", name, " has unsupported dtype ", t.scalar_type(),
                             " (float32, bfloat16, float16, or fp8 e4m3 for caches)"));
}

// Activations (and weights, RoPE tables) must be float32, bfloat16 or float16.
inline DType float_dtype(const at::Tensor& t, const char* name) {
  const DType d = to_dtype(t, name);
  ATOM_CHECK_VALUE(d == DType::kFloat32 || d == DType::kBFloat16 || d == DType::kFloat16,
                   "atom: ", name, " must be float32, bfloat16 or float16, got ",
                   t.scalar_type());
  return d;
}

inline void check_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                         const char* ref_name) {
  ATOM_CHECK_VALUE(t.device() == ref.device(), "atom: ", name, " is on ", t.device(), " but ",
                   ref_name, " is on ", ref.device());
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim) {
  ATOM_CHECK_VALUE(t.dim() == dim, "atom: ", name, " must have ", dim, " dims, got shape ",
                   t.sizes());
}

// x seen as [rows, x.size(-1)] with one row stride, if its layout allows (last dim contiguous,
// leading dims collapsible); nullopt otherwise (the caller then works on a contiguous copy).
struct Rows {
  int64_t rows, stride;
};

inline std::optional<Rows> as_rows(const at::Tensor& x) {
  const int64_t hidden = x.size(-1);
  if (hidden > 1 && x.stride(-1) != 1) return std::nullopt;
  const int64_t rows = hidden == 0 ? 0 : x.numel() / hidden;
  int64_t stride = -1, expected = 0;
  for (int64_t d = x.dim() - 2; d >= 0; --d) {
    if (x.size(d) == 1) continue;
    if (stride < 0) {
      stride = x.stride(d);
      expected = stride * x.size(d);
    } else if (x.stride(d) != expected) {
      return std::nullopt;
    } else {
      expected *= x.size(d);
    }
  }
  return Rows{rows, stride < 0 ? hidden : stride};
}

// A [T, H, D] tensor (D contiguous) as a HeadsView; the caller guarantees the layout.
inline HeadsView heads_view(const at::Tensor& t) {
  return HeadsView{const_cast<void*>(t.data_ptr()), t.size(1), t.size(2), t.stride(0),
                   t.stride(1)};
}

inline bool heads_contiguous_inner(const at::Tensor& t) { return t.size(2) <= 1 || t.stride(2) == 1; }

// positions / slot_mapping: 1-D int32 or int64 (made contiguous into `holder` if needed).
inline IndexView index_view(const at::Tensor& t, const char* name, at::Tensor& holder) {
  check_dim(t, name, 1);
  ATOM_CHECK_VALUE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, "atom: ", name,
                   " must be int64 or int32, got ", t.scalar_type());
  holder = t.contiguous();
  return IndexView{holder.data_ptr(), holder.size(0), holder.scalar_type() == at::kInt};
}

// cos_sin_cache: [max_position, rot_dim] of any float dtype; rot_dim even and <= head_size.
inline CosSinView cos_sin_view(const at::Tensor& t, int64_t head_size, at::Tensor& holder) {
  check_dim(t, "cos_sin_cache", 2);
  const DType dtype = float_dtype(t, "cos_sin_cache");
  const int64_t rot_dim = t.size(1);
  ATOM_CHECK_VALUE(rot_dim % 2 == 0 && rot_dim <= head_size, "atom: cos_sin_cache rot_dim ",
                   rot_dim, " must be even and <= head_size ", head_size);
  holder = t.stride(1) == 1 ? t : t.contiguous();
  return CosSinView{holder.data_ptr(), holder.size(0), holder.stride(0), rot_dim, dtype};
}

// A paged cache [num_blocks, block_size, heads, head_size] with a contiguous last dim; for fp8
// caches an optional per-tensor scale (one element, made fp32 into `scale_holder`).
inline PagedCacheView cache_view(at::Tensor& cache, const char* name,
                                 const std::optional<at::Tensor>& scale, at::Tensor& scale_holder) {
  check_dim(cache, name, 4);
  ATOM_CHECK_VALUE(cache.size(3) <= 1 || cache.stride(3) == 1, "atom: ", name,
                   " must be contiguous in its last dim, got strides ", cache.strides());
  const DType dtype = to_dtype(cache, name);
  const float* scale_ptr = nullptr;
  const bool fp8 = dtype == DType::kFloat8E4M3FN || dtype == DType::kFloat8E4M3FNUZ;
  if (fp8 && scale.has_value()) {
    ATOM_CHECK_VALUE(scale->numel() == 1, "atom: the scale of ", name,
                     " must have one element, got shape ", scale->sizes());
    check_device(*scale, "scale", cache, name);
    scale_holder = scale->to(at::kFloat).contiguous();
    scale_ptr = scale_holder.const_data_ptr<float>();
  }
  return PagedCacheView{cache.data_ptr(),   cache.size(0),   cache.size(1),
                        cache.size(2),      cache.size(3),   cache.stride(0),
                        cache.stride(1),    cache.stride(2), dtype,
                        scale_ptr};
}

// Runs the CPU twin or the GPU launcher of an op for `like`'s device.
template <typename Params, typename CpuFn, typename GpuFn>
void launch(const at::Tensor& like, const Params& params, CpuFn cpu_fn, GpuFn gpu_fn) {
  if (like.is_cpu()) {
    cpu_fn(params);
    return;
  }
#if defined(ATOM_WITH_GPU)
  const c10::DeviceGuard guard(like.device());
  gpu_fn(params, current_gpu_stream(like.device()));
#else
  (void)gpu_fn;
  throw_value_error(
      ::atom::message("atom: this build of atom._C has no GPU support (device ", like.device(), ")"));
#endif
}

}  // namespace atom
