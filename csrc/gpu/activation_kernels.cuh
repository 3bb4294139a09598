// Gated activation: out[r, i] = silu(gate) * up with x[r] = [gate | up], silu(g) = g / (1 + e^-g).
#pragma once

#include "numerics.cuh"
#include "pdl.cuh"

namespace atom::gpu {

// grid = (rows, ceil(d / (V * blockDim))): one V-element vector of gate and of up per thread.
// Launched with launch_kernel (PDL).
template <typename T, int V>
__global__ void silu_and_mul_kernel(SiluAndMulParams p) {
  using S = typename T::storage;
  using VecT = Vec<S, V>;
  pdl_wait();  // before the early return too: see pdl.cuh
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;  // vector index
  if (i >= p.d / V) return;
  const S* x = static_cast<const S*>(p.x) + row * p.x_row_stride;
  const VecT gate = reinterpret_cast<const VecT*>(x)[i];
  const VecT up = reinterpret_cast<const VecT*>(x + p.d)[i];
  VecT out;
#pragma unroll
  for (int e = 0; e < V; ++e) {
    const float g = T::to_float(gate.v[e]);
    out.v[e] = T::from_float(g / (1.0f + expf(-g)) * T::to_float(up.v[e]));
  }
  reinterpret_cast<VecT*>(static_cast<S*>(p.out) + row * p.out_row_stride)[i] = out;
}

}  // namespace atom::gpu
