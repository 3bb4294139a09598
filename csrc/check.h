// ATOM_CHECK_VALUE(cond, parts...): if cond is false, throws std::invalid_argument (a Python
// ValueError) whose message is the parts streamed together, like TORCH_CHECK_VALUE.
//
// Why not a c10::Error (TORCH_CHECK_VALUE, or c10::ValueError built without a backtrace): on the
// H100 machine (torch 2.11+cu130, extensions built there with GCC 13.3) a TORCH_CHECK_VALUE
// thrown from a tiny extension, and any c10::ValueError thrown from atom._C, killed the process
// with SIGSEGV, while a std::runtime_error thrown from the same atom._C (a failed kernel launch)
// reached Python fine (tools/gpu/error_probe.py; benchmarks/results/error_probe_h100_*.json).
// A standard exception keeps c10's error machinery (stack capture, c10::Error's vtable and
// what()) out of the path entirely. torch.ops.* calls are pybind11 functions, and pybind11
// turns std::invalid_argument into ValueError (std::out_of_range into IndexError; other
// std::exceptions into RuntimeError). The Python wrappers (atom/kernels/native_checks.py) also
// check every argument before the op runs, so a user mistake never reaches this at all.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/StringUtil.h>

#include <stdexcept>
#include <string>

namespace atom {

[[noreturn]] inline void throw_value_error(const std::string& message) {
  throw std::invalid_argument(message);
}

}  // namespace atom

#define ATOM_CHECK_VALUE(cond, ...)                                  \
  do {                                                               \
    if (C10_UNLIKELY(!(cond))) {                                     \
      ::atom::throw_value_error(::c10::str(__VA_ARGS__));            \
    }                                                                \
  } while (false)
