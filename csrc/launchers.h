// Launchers: one per op and device, taking the raw-pointer params of launch_params.h. The torch
// glue (ops.cpp) validates tensors, fills the params, and calls the twin for the tensor's device.
#pragma once

#include "launch_params.h"

namespace atom::cpu {
void rms_norm(const RmsNormParams& p);
void fused_add_rms_norm(const FusedAddRmsNormParams& p);
void silu_and_mul(const SiluAndMulParams& p);
void rotary_embedding(const RotaryParams& p);
void reshape_and_cache(const CacheWriteParams& p);
void fused_qk_norm_rope_cache(const QkNormRopeCacheParams& p);
}  // namespace atom::cpu

// Compiled only when the build has a GPU toolchain (ATOM_WITH_GPU). `stream` is a cudaStream_t or
// hipStream_t; launch errors throw std::runtime_error.
namespace atom::gpu {
void rms_norm(const RmsNormParams& p, void* stream);
void fused_add_rms_norm(const FusedAddRmsNormParams& p, void* stream);
void silu_and_mul(const SiluAndMulParams& p, void* stream);
void rotary_embedding(const RotaryParams& p, void* stream);
void reshape_and_cache(const CacheWriteParams& p, void* stream);
void fused_qk_norm_rope_cache(const QkNormRopeCacheParams& p, void* stream);
}  // namespace atom::gpu
