// Programmatic dependent launch (PDL, Hopper and later): a kernel may start before the kernel
// before it on the stream has finished, so that the launch and this kernel's prologue overlap the
// previous kernel's tail. A decode step is ~200 short kernels in a CUDA graph; their boundaries
// are a large share of its time. (python/atom/kernels/triton/pdl.py does the same for Triton.)
//
// The rule every kernel launched with launch_kernel() follows, so that chains stay correct
// whatever runs before or after it (a plain torch / cuBLAS kernel, a Triton PDL kernel, another
// native one):
//   * every block calls pdl_wait() before it reads anything an earlier kernel may have written
//     (activations, caches, positions, slots, and weights too: the glue may convert a weight's
//     dtype in the kernel right before), before any global store and before any early return.
//     griddepcontrol.wait returns once the previous grid has completed and its writes are
//     visible; a grid completes only after all its blocks passed their wait, so completion still
//     implies that every earlier kernel completed (by induction);
//   * pdl_launch_dependents() may come anywhere (a hint); right after the wait lets the next
//     kernel's blocks take the SMs that this kernel's last wave leaves idle.
// Both are no-ops in a kernel launched without PDL, and compile to nothing before sm_90 and on AMD.
//
// ATOM_PDL: unset or one of 1 / true / yes / on (any case, surrounding blanks ignored) -> PDL on
// sm_90+ NVIDIA GPUs; anything else (ATOM_PDL=0) -> plain launches. Read once per process, with
// the same meaning as atom.envs.pdl() on the Python side.
#pragma once

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>

#include "compat.h"

namespace atom::gpu {

// Blocks until the grids this one depends on have completed and their memory is visible.
__device__ __forceinline__ void pdl_wait() {
#if !defined(ATOM_HIP) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel (if launched with PDL) be scheduled once every block of this grid has
// called this or exited. It does not make this block's later writes visible to that kernel: its
// pdl_wait() still waits for this whole grid to complete.
__device__ __forceinline__ void pdl_launch_dependents() {
#if !defined(ATOM_HIP) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether ATOM_PDL allows PDL (default on), read once.
inline bool pdl_env_enabled() {
  static const bool enabled = [] {
    const char* raw = std::getenv("ATOM_PDL");
    if (raw == nullptr) return true;
    std::string v(raw);
    const auto blank = [](unsigned char c) { return std::isspace(c) != 0; };
    v.erase(v.begin(), std::find_if_not(v.begin(), v.end(), blank));
    v.erase(std::find_if_not(v.rbegin(), v.rend(), blank).base(), v.end());
    for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return v == "1" || v == "true" || v == "yes" || v == "on";
  }();
  return enabled;
}

#if !defined(ATOM_HIP)

// Compute capability >= 9, and `kernel`'s image for the current device compiled for compute_90+
// (so that it contains the griddepcontrol instructions at all: a build for compute_80 only,
// JIT-compiled on an H100, has no pdl_wait(), and launching it with PDL would be a race). Every
// kernel of the extension is built with the same arch flags, so any one of them answers for all.
inline bool pdl_query_device(int device, const void* kernel) {
  int major = 0;
  cudaFuncAttributes attr{};
  const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) ==
                      cudaSuccess &&
                  major >= 9 && cudaFuncGetAttributes(&attr, kernel) == cudaSuccess;
  if (!ok) (void)cudaGetLastError();  // a failed query means "no PDL", not a launch error
  return ok && attr.ptxVersion >= 90;
}

// Whether launches on the current device use PDL: the env switch, then a per-device answer
// cached on first use (`kernel`: the kernel about to be launched; a benign race, every thread
// computes the same value).
inline bool pdl_enabled(const void* kernel) {
  if (!pdl_env_enabled()) return false;
  constexpr int kMaxDevices = 64;
  static std::atomic<int8_t> cached[kMaxDevices];  // 0 unknown, 1 off, 2 on (zero-initialized)
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    (void)cudaGetLastError();
    return false;
  }
  int8_t state = cached[device].load(std::memory_order_relaxed);
  if (state == 0) {
    state = pdl_query_device(device, kernel) ? 2 : 1;
    cached[device].store(state, std::memory_order_relaxed);
  }
  return state == 2;
}

#else

inline bool pdl_enabled(const void*) { return false; }

#endif

// kernel<<<grid, block, smem, stream>>>(args...), launched with PDL when pdl_enabled(kernel)
// (then the kernel must follow the rule above). Errors of a plain launch are left for
// check_launch(); a failed cudaLaunchKernelEx throws here (and clears the runtime's last error).
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                   gpuStream_t stream, Args&&... args) {
#if !defined(ATOM_HIP)
  if (pdl_enabled(reinterpret_cast<const void*>(kernel))) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = attr;
    config.numAttrs = 1;
    const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      throw std::runtime_error(std::string("atom: launching a kernel with PDL failed: ") +
                               cudaGetErrorString(err));
    }
    return;
  }
#endif
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
}

}  // namespace atom::gpu
