// The torch-level ops, registered in torch_bindings.cpp. Each validates its tensors (shape, dtype,
// device, strides) with a clear error, fills the launch params and calls the CPU twin or the GPU
// launcher for the tensors' device. Semantics: atom/kernels/reference/ (the torch references).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace atom {

// x: [..., hidden]; weight: [hidden]. Returns a new contiguous tensor like x.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// In place: residual <- x + residual, x <- rms_norm(residual). x and residual: same shape/dtype.
void fused_add_rms_norm(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight, double eps);

// x: [..., 2 * d] = [gate | up]. Returns silu(gate) * up: [..., d].
at::Tensor silu_and_mul(const at::Tensor& x);

// In place. query: [T, Hq * head_size] or [T, Hq, head_size] (key likewise); positions: [T];
// cos_sin_cache: [max_position, rot_dim], rot_dim <= head_size.
void rotary_embedding(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                      int64_t head_size, const at::Tensor& cos_sin_cache, bool is_neox);

// key/value: [>= T, Hkv, D]; caches: [num_blocks, block_size, Hkv, D]; slot_mapping: [T].
void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                       at::Tensor& value_cache, const at::Tensor& slot_mapping,
                       const std::optional<at::Tensor>& k_scale,
                       const std::optional<at::Tensor>& v_scale);

// In place on q [T, Hq, D] and k [T, Hkv, D]; writes (k, v) to the caches for the first
// slot_mapping.size(0) tokens.
void fused_qk_norm_rope_cache(at::Tensor& q, at::Tensor& k, const at::Tensor& v,
                              const std::optional<at::Tensor>& q_norm_weight,
                              const std::optional<at::Tensor>& k_norm_weight, double eps,
                              const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                              bool is_neox, at::Tensor& key_cache, at::Tensor& value_cache,
                              const at::Tensor& slot_mapping,
                              const std::optional<at::Tensor>& k_scale,
                              const std::optional<at::Tensor>& v_scale);

// "cuda", "hip" or "" (CPU only): what this build of the extension can run on.
const char* gpu_backend();

}  // namespace atom
