// A tiny torch extension that only throws, for tools/gpu/error_probe.py: which kinds of C++
// error reach Python from an extension built on this machine, and which crash it. Built two ways
// from this one source: by the probe script with a plain compiler command, and as the CMake
// target atom_error_probe with exactly atom._C's compile and link setup (CMakeLists.txt), so a
// difference between the two builds points at a flag. Its ops live in their own namespace
// (atom_probe / atom_probe_cmake, from ATOM_PROBE_NAMESPACE) so it loads next to atom._C.
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>
#include <torch/library.h>

#include <stdexcept>
#include <string>

#include "check.h"

#ifndef ATOM_PROBE_NAMESPACE
#define ATOM_PROBE_NAMESPACE atom_probe
#endif

namespace {

// mode: what to throw (see error_probe.py's MODES); anything else returns x.
at::Tensor raise_error(const at::Tensor& x, int64_t mode) {
  switch (mode) {
    case 0:  // c10::ValueError with the C++ stack captured (c10's source-location constructor)
      TORCH_CHECK_VALUE(false, "probe: TORCH_CHECK_VALUE, size ", x.size(0));
      break;
    case 1:  // c10::ValueError without the stack capture (atom._C's check before this probe)
      throw c10::ValueError(std::string("probe: c10::ValueError without a stack"), {});
    case 2:  // what atom._C's checks throw now (check.h)
      ATOM_CHECK_VALUE(false, "probe: ATOM_CHECK_VALUE, size ", x.size(0));
      break;
    case 3:  // what atom._C's kernel launchers throw on a failed launch
      throw std::runtime_error("probe: std::runtime_error");
    case 4:  // a c10::Error raised inside libtorch while this extension's frames are on the stack
      return x.view({-1, 3});
    case 5:  // a standard exception whose message c10::str built (atom._C's check until now)
      throw std::invalid_argument(c10::str("probe: c10::str message, size ", x.size(0)));
    default:
      break;
  }
  return x;
}

}  // namespace

TORCH_LIBRARY(ATOM_PROBE_NAMESPACE, m) { m.def("raise_error(Tensor x, int mode) -> Tensor"); }
TORCH_LIBRARY_IMPL(ATOM_PROBE_NAMESPACE, CPU, m) { m.impl("raise_error", &raise_error); }
