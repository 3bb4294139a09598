// Torch glue of rms_norm, fused_add_rms_norm and silu_and_mul.
#include <ATen/ops/empty.h>

#include "glue.h"
#include "ops.h"

namespace atom {

namespace {

// weight: [hidden] of any float dtype on x's device. Returned contiguous, in x's dtype or fp32
// (the two the kernels specialize for; any other float dtype converts to fp32 exactly).
at::Tensor checked_weight(const at::Tensor& weight, const at::Tensor& x, const char* name) {
  check_dim(weight, name, 1);
  ATOM_CHECK_VALUE(weight.size(0) == x.size(-1), "atom: ", name, " has ", weight.size(0),
                   " elements but the hidden size is ", x.size(-1));
  check_device(weight, name, x, "x");
  float_dtype(weight, name);
  if (weight.scalar_type() != x.scalar_type() && weight.scalar_type() != at::kFloat) {
    return weight.to(at::kFloat).contiguous();
  }
  return weight.contiguous();
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  ATOM_CHECK_VALUE(x.dim() >= 1, "atom: rms_norm needs x with at least one dim");
  const DType dtype = float_dtype(x, "x");
  const at::Tensor w = checked_weight(weight, x, "weight");
  const at::Tensor input = as_rows(x) ? x : x.contiguous();
  const Rows rows = *as_rows(input);
  at::Tensor out = at::empty(x.sizes(), x.options());
  const RmsNormParams p{out.data_ptr(), x.size(-1), input.const_data_ptr(), rows.stride,
                        w.const_data_ptr(), rows.rows, x.size(-1), dtype,
                        to_dtype(w, "weight"), static_cast<float>(eps)};
  launch(x, p, cpu::rms_norm, ATOM_GPU_FN(rms_norm));
  return out;
}

void fused_add_rms_norm(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                        double eps) {
  ATOM_CHECK_VALUE(x.dim() >= 1, "atom: fused_add_rms_norm needs x with at least one dim");
  ATOM_CHECK_VALUE(x.sizes() == residual.sizes(), "atom: x has shape ", x.sizes(),
                   " but residual has shape ", residual.sizes());
  ATOM_CHECK_VALUE(x.scalar_type() == residual.scalar_type(), "atom: x is ", x.scalar_type(),
                   " but residual is ", residual.scalar_type(), " (the kernel needs one dtype)");
  check_device(residual, "residual", x, "x");
  const DType dtype = float_dtype(x, "x");
  const at::Tensor w = checked_weight(weight, x, "weight");
  // A layout the kernel cannot address directly is processed in a contiguous copy, copied back.
  const bool direct = as_rows(x) && as_rows(residual);
  at::Tensor xs = direct ? x : x.contiguous();
  at::Tensor rs = direct ? residual : residual.contiguous();
  const Rows x_rows = *as_rows(xs), r_rows = *as_rows(rs);
  const FusedAddRmsNormParams p{xs.data_ptr(), x_rows.stride, rs.data_ptr(), r_rows.stride,
                                w.const_data_ptr(), x_rows.rows, x.size(-1), dtype,
                                to_dtype(w, "weight"), static_cast<float>(eps)};
  launch(x, p, cpu::fused_add_rms_norm, ATOM_GPU_FN(fused_add_rms_norm));
  if (!direct) {
    x.copy_(xs);
    residual.copy_(rs);
  }
}

at::Tensor silu_and_mul(const at::Tensor& x) {
  ATOM_CHECK_VALUE(x.dim() >= 1 && x.size(-1) % 2 == 0,
                   "atom: silu_and_mul needs x [..., 2 * d], got shape ", x.sizes());
  const DType dtype = float_dtype(x, "x");
  const at::Tensor input = as_rows(x) ? x : x.contiguous();
  const Rows rows = *as_rows(input);
  const int64_t d = x.size(-1) / 2;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = d;
  at::Tensor out = at::empty(out_shape, x.options());
  const SiluAndMulParams p{out.data_ptr(), d, input.const_data_ptr(), rows.stride, rows.rows, d,
                           dtype};
  launch(x, p, cpu::silu_and_mul, ATOM_GPU_FN(silu_and_mul));
  return out;
}

}  // namespace atom
