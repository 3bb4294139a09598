// Host harness for csrc/gpu/numerics.cuh (built by test_gpu_numerics.py with the host compiler):
// reads fp32 values from stdin and writes, for each, the codes the GPU kernels would store:
//   uint16 bf16, uint8 e4m3fn cache value, uint8 e4m3fnuz cache value (x / scale, clamped).
// Usage: numerics_harness SCALE < floats.bin > codes.bin
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "gpu/numerics.cuh"

int main(int argc, char** argv) {
  using namespace atom::gpu;
  const float scale = argc > 1 ? std::strtof(argv[1], nullptr) : 1.0f;
  std::vector<float> xs;
  float x;
  while (std::fread(&x, sizeof(x), 1, stdin) == 1) xs.push_back(x);
  for (const float v : xs) {
    const uint16_t bf16 = bf16_from_float(v);
    const uint8_t fn = to_cache<F32, F8E4M3FN>(v, scale);
    const uint8_t fnuz = to_cache<F32, F8E4M3FNUZ>(v, scale);
    std::fwrite(&bf16, sizeof(bf16), 1, stdout);
    std::fwrite(&fn, sizeof(fn), 1, stdout);
    std::fwrite(&fnuz, sizeof(fnuz), 1, stdout);
  }
  return 0;
}
