// The `atom` op namespace: schemas (mutated arguments marked `!`), the CPU twins, and the GPU
// kernels when the build has them. Fake (meta) implementations for torch.compile live in Python
// (atom/kernels/native_fake.py, named below so torch can point at it). Importing the Python module
// atom._C runs these registrations; it holds no functions, only build facts.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

namespace atom {

const char* gpu_backend() {
#if defined(ATOM_WITH_GPU) && defined(USE_ROCM)
  return "hip";
#elif defined(ATOM_WITH_GPU)
  return "cuda";
#else
  return "";
#endif
}

}  // namespace atom

TORCH_LIBRARY(atom, m) {
  m.set_python_module("atom.kernels.native_fake");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("fused_add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.def(
      "rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!) key, int head_size, "
      "Tensor cos_sin_cache, bool is_neox) -> ()");
  m.def(
      "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
      "Tensor slot_mapping, Tensor? k_scale=None, Tensor? v_scale=None) -> ()");
  m.def(
      "fused_qk_norm_rope_cache(Tensor(a!) q, Tensor(b!) k, Tensor v, Tensor? q_norm_weight, "
      "Tensor? k_norm_weight, float eps, Tensor positions, Tensor cos_sin_cache, bool is_neox, "
      "Tensor(c!) key_cache, Tensor(d!) value_cache, Tensor slot_mapping, Tensor? k_scale=None, "
      "Tensor? v_scale=None) -> ()");
}

// The same glue serves both devices: it switches on the tensors' device (glue.h).
#define ATOM_IMPL_ALL(m)                                               \
  m.impl("rms_norm", &atom::rms_norm);                                 \
  m.impl("fused_add_rms_norm", &atom::fused_add_rms_norm);             \
  m.impl("silu_and_mul", &atom::silu_and_mul);                         \
  m.impl("rotary_embedding", &atom::rotary_embedding);                 \
  m.impl("reshape_and_cache", &atom::reshape_and_cache);               \
  m.impl("fused_qk_norm_rope_cache", &atom::fused_qk_norm_rope_cache)

TORCH_LIBRARY_IMPL(atom, CPU, m) { ATOM_IMPL_ALL(m); }

#if defined(ATOM_WITH_GPU)
TORCH_LIBRARY_IMPL(atom, CUDA, m) { ATOM_IMPL_ALL(m); }  // ROCm tensors are "cuda" in torch too
#endif

// A plain extension module (no pybind11): `import atom._C` loads this library, which registers
// the ops above, and exposes what the build targets.
static PyModuleDef atom_c_module = {PyModuleDef_HEAD_INIT,
                                    "_C",
                                    "ATOM's compiled ops, registered as torch.ops.atom.*",
                                    -1,
                                    nullptr,
                                    nullptr,
                                    nullptr,
                                    nullptr,
                                    nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  // `import atom._C` on its own still initializes torch's Python side (torch.ops, and the
  // translation of c10::ValueError into ValueError) before anyone can call our ops.
  PyObject* torch = PyImport_ImportModule("torch");
  if (torch == nullptr) return nullptr;
  Py_DECREF(torch);
  PyObject* module = PyModule_Create(&atom_c_module);
  if (module == nullptr) return nullptr;
  if (PyModule_AddStringConstant(module, "gpu_backend", atom::gpu_backend()) < 0 ||
      PyModule_AddStringConstant(module, "gpu_archs", ATOM_GPU_ARCHS) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
