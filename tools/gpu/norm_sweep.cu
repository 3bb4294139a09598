// Block-shape sweep of the RMSNorm kernels (csrc/gpu/norm_kernels.cuh) on the GPU, without torch:
// each (rows per block, vectors per thread, weight prefetch) variant of rms_norm and
// fused_add_rms_norm on bf16 rows, timed against a device-to-device copy of the same bytes, with
// the launcher's choice (norm_shape) marked. It tells which shape to make the default.
//
//   nvcc -std=c++17 -O3 -arch=native -I csrc tools/gpu/norm_sweep.cu -o build/norm_sweep
//   build/norm_sweep [results.json]
//
// Timing as tools/bench_ops.py: every call starts with a cold L2 (a 256 MiB memset before it),
// CUDA events around the call, median of 50. Each variant's output is also compared with the
// first variant's (max |difference|: only the reduction order differs, so about a bf16 ulp).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "gpu/norm_kernels.cuh"

namespace {

using atom::gpu::BF16;

#define CHECK(call)                                                                 \
  do {                                                                              \
    const cudaError_t err_ = (call);                                                \
    if (err_ != cudaSuccess) {                                                      \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call,             \
                   cudaGetErrorString(err_));                                       \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (false)

struct Variant {
  int rows_per_block, vecs, threads;
  bool prefetch;
  void (*rms)(const atom::RmsNormParams&, int, int);
  void (*fused)(const atom::FusedAddRmsNormParams&, int, int);
};

template <int kRows, int kVecs, bool kPrefetch>
void launch_rms(const atom::RmsNormParams& p, int blocks, int threads) {
  atom::gpu::rms_norm_kernel<BF16, BF16, 8, kRows, kVecs, kPrefetch><<<blocks, threads>>>(p);
}

template <int kRows, int kVecs, bool kPrefetch>
void launch_fused(const atom::FusedAddRmsNormParams& p, int blocks, int threads) {
  atom::gpu::fused_add_rms_norm_kernel<BF16, BF16, 8, kRows, kVecs, kPrefetch>
      <<<blocks, threads>>>(p);
}

template <int kRows, int kVecs, bool kPrefetch>
Variant variant(int64_t num_vecs) {
  const int64_t threads = std::min<int64_t>(
      atom::gpu::kNormMaxThreads, ((num_vecs + kVecs - 1) / kVecs + 63) / 64 * 64);
  return {kRows, kVecs, static_cast<int>(threads), kPrefetch, launch_rms<kRows, kVecs, kPrefetch>,
          launch_fused<kRows, kVecs, kPrefetch>};
}

std::vector<Variant> variants(int64_t num_vecs) {
  return {variant<1, 1, false>(num_vecs), variant<1, 2, false>(num_vecs),
          variant<1, 2, true>(num_vecs),  variant<1, 4, false>(num_vecs),
          variant<1, 4, true>(num_vecs),  variant<2, 1, false>(num_vecs),
          variant<2, 2, false>(num_vecs), variant<2, 2, true>(num_vecs),
          variant<4, 1, false>(num_vecs)};
}

// Median time in microseconds of fn() with a cold L2.
template <typename Fn>
float time_us(Fn&& fn, void* flush, size_t flush_bytes) {
  cudaEvent_t start, end;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&end));
  for (int i = 0; i < 5; ++i) fn();
  std::vector<float> times;
  for (int i = 0; i < 50; ++i) {
    CHECK(cudaMemsetAsync(flush, 0, flush_bytes));
    CHECK(cudaEventRecord(start));
    fn();
    CHECK(cudaEventRecord(end));
    CHECK(cudaEventSynchronize(end));
    float ms = 0.0f;
    CHECK(cudaEventElapsedTime(&ms, start, end));
    times.push_back(ms * 1e3f);
  }
  CHECK(cudaGetLastError());
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(end));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

std::vector<uint16_t> random_bf16(size_t n, unsigned seed) {
  std::vector<uint16_t> v(n);
  srand(seed);
  for (auto& e : v) {
    const float f = (static_cast<float>(rand()) / RAND_MAX - 0.5f) * 4.0f;
    e = atom::gpu::bf16_from_float(f);
  }
  return v;
}

float max_diff(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
  float d = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::fabs(atom::gpu::float_from_bf16(a[i]) - atom::gpu::float_from_bf16(b[i])));
  }
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("RMSNorm block-shape sweep on %s (sm_%d%d, %d SMs), bf16 rows and weight\n",
              prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  const size_t flush_bytes = 256u << 20;
  void* flush;
  CHECK(cudaMalloc(&flush, flush_bytes));
  FILE* json = argc > 1 ? std::fopen(argv[1], "w") : nullptr;
  if (json) std::fprintf(json, "{\"device\": \"%s\", \"results\": [\n", prop.name);
  bool first_json = true;

  const int64_t shapes[][2] = {{4096, 4096}, {4096, 8192}, {64, 4096}, {4096, 2048}};
  std::printf("\n%-20s %-11s %8s %8s %8s %7s %8s %7s %6s %9s\n", "kernel", "rows x hid",
              "rows/blk", "vecs/thr", "prefetch", "threads", "us", "GB/s", "%copy", "max diff");
  for (const auto& shape : shapes) {
    const int64_t rows = shape[0], hidden = shape[1], n = rows * hidden;
    const size_t bytes = n * sizeof(uint16_t);
    uint16_t *x, *r, *w, *out;
    CHECK(cudaMalloc(&x, bytes));
    CHECK(cudaMalloc(&r, bytes));
    CHECK(cudaMalloc(&out, bytes));
    CHECK(cudaMalloc(&w, hidden * sizeof(uint16_t)));
    const auto hx = random_bf16(n, 1), hr = random_bf16(n, 2), hw = random_bf16(hidden, 3);
    CHECK(cudaMemcpy(x, hx.data(), bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(w, hw.data(), hidden * sizeof(uint16_t), cudaMemcpyHostToDevice));
    const int64_t num_vecs = hidden / 8;
    const atom::gpu::NormShape chosen = atom::gpu::norm_shape(num_vecs);
    // The bytes rms_norm moves (read x, write out) and twice that (fused: x and the residual).
    auto copy = [&] { CHECK(cudaMemcpyAsync(out, x, bytes, cudaMemcpyDeviceToDevice)); };
    const float copy1 = time_us(copy, flush, flush_bytes);
    const float copy2 = time_us(
        [&] {
          copy();
          CHECK(cudaMemcpyAsync(r, x, bytes, cudaMemcpyDeviceToDevice));
        },
        flush, flush_bytes);
    std::vector<uint16_t> reference_rms, reference_fused;
    for (int fused = 0; fused < 2; ++fused) {
      for (const Variant& v : variants(num_vecs)) {
        const int blocks = static_cast<int>((rows + v.rows_per_block - 1) / v.rows_per_block);
        const bool is_default = v.rows_per_block == 1 && v.vecs == chosen.vecs_per_thread &&
                                v.threads == chosen.threads && !v.prefetch;
        float us;
        std::vector<uint16_t> result(n);
        if (fused) {
          const atom::FusedAddRmsNormParams p{out, hidden, r, hidden, w, rows, hidden,
                                              atom::DType::kBFloat16, atom::DType::kBFloat16,
                                              1e-6f};
          // The op is in place: each timed call starts from the same x and residual.
          auto reset = [&] {
            CHECK(cudaMemcpy(out, x, bytes, cudaMemcpyDeviceToDevice));
            CHECK(cudaMemcpy(r, hr.data(), bytes, cudaMemcpyHostToDevice));
          };
          reset();
          v.fused(p, blocks, v.threads);
          CHECK(cudaMemcpy(result.data(), out, bytes, cudaMemcpyDeviceToHost));
          us = time_us([&] { v.fused(p, blocks, v.threads); }, flush, flush_bytes);
        } else {
          const atom::RmsNormParams p{out, hidden, x, hidden, w, rows, hidden,
                                      atom::DType::kBFloat16, atom::DType::kBFloat16, 1e-6f};
          v.rms(p, blocks, v.threads);
          CHECK(cudaMemcpy(result.data(), out, bytes, cudaMemcpyDeviceToHost));
          us = time_us([&] { v.rms(p, blocks, v.threads); }, flush, flush_bytes);
        }
        CHECK(cudaGetLastError());
        auto& reference = fused ? reference_fused : reference_rms;
        if (reference.empty()) reference = result;
        const float diff = max_diff(result, reference);
        const double moved = (fused ? 4.0 : 2.0) * bytes;
        const float copy_us = fused ? copy2 : copy1;
        const char* name = fused ? "fused_add_rms_norm" : "rms_norm";
        std::printf("%-20s %5lldx%-5lld %8d %8d %8s %7d %8.1f %7.0f %5.0f%% %9.3g%s\n", name,
                    static_cast<long long>(rows), static_cast<long long>(hidden),
                    v.rows_per_block, v.vecs, v.prefetch ? "yes" : "no", v.threads, us,
                    moved / us / 1e3, 100.0 * copy_us / us, diff, is_default ? "  <- default" : "");
        if (json) {
          std::fprintf(json,
                       "%s  {\"kernel\": \"%s\", \"rows\": %lld, \"hidden\": %lld, "
                       "\"rows_per_block\": %d, \"vecs_per_thread\": %d, \"prefetch\": %s, "
                       "\"threads\": %d, \"us\": %.2f, \"copy_us\": %.2f, \"default\": %s, "
                       "\"max_diff\": %g}",
                       first_json ? "" : ",\n", name, static_cast<long long>(rows),
                       static_cast<long long>(hidden), v.rows_per_block, v.vecs,
                       v.prefetch ? "true" : "false", v.threads, us, copy_us,
                       is_default ? "true" : "false", diff);
          first_json = false;
        }
      }
    }
    CHECK(cudaFree(x));
    CHECK(cudaFree(r));
    CHECK(cudaFree(out));
    CHECK(cudaFree(w));
  }
  if (json) {
    std::fprintf(json, "\n]}\n");
    std::fclose(json);
  }
  CHECK(cudaFree(flush));
  return 0;
}
