// The handful of GPU runtime names the kernels use, mapped once for CUDA (nvcc) and HIP (hipcc or
// clang -x hip). Kernel headers include only this file and numerics.cuh: no torch, no CUDA-only
// libraries, so the same source builds for NVIDIA and AMD.
#pragma once

#if defined(__HIPCC__) || defined(__HIP_PLATFORM_AMD__) || defined(USE_ROCM)
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
#define ATOM_HIP 1
using gpuStream_t = hipStream_t;
using gpuError_t = hipError_t;
#define gpuSuccess hipSuccess
#define gpuGetLastError hipGetLastError
#define gpuGetErrorString hipGetErrorString
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
using gpuStream_t = cudaStream_t;
using gpuError_t = cudaError_t;
#define gpuSuccess cudaSuccess
#define gpuGetLastError cudaGetLastError
#define gpuGetErrorString cudaGetErrorString
#endif

#include <stdexcept>
#include <string>

namespace atom::gpu {

// Butterfly exchange inside aligned groups of `width` lanes (a power of two <= the warp size).
// Every lane of the warp must call it (CUDA's full mask); AMD wavefronts run in lockstep.
__device__ __forceinline__ float shfl_xor(float v, int lane_mask, int width) {
#if defined(ATOM_HIP)
  return __shfl_xor(v, lane_mask, width);
#else
  return __shfl_xor_sync(0xffffffffu, v, lane_mask, width);
#endif
}

// Throws if the last launch failed (bad configuration, missing kernel image for this GPU, ...).
inline void check_launch(const char* what) {
  const gpuError_t err = gpuGetLastError();
  if (err != gpuSuccess) {
    throw std::runtime_error(std::string("atom: launching ") + what +
                             " failed: " + gpuGetErrorString(err));
  }
}

}  // namespace atom::gpu
