// The one place where the glue touches torch's GPU runtime: the current stream, so the kernels
// run in order with torch's own work (and inside CUDA/HIP graph capture).
#include <c10/core/Device.h>

#if defined(USE_ROCM)
#include <c10/hip/HIPStream.h>
#else
#include <c10/cuda/CUDAStream.h>
#endif

namespace atom {

void* current_gpu_stream(const c10::Device& device) {
#if defined(USE_ROCM)
  return c10::hip::getCurrentHIPStream(device.index()).stream();
#else
  return c10::cuda::getCurrentCUDAStream(device.index()).stream();
#endif
}

}  // namespace atom
