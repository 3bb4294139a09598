// ATOM_CHECK_VALUE(cond, parts...): if cond is false, throws std::invalid_argument (a Python
// ValueError) whose message is the parts joined, like TORCH_CHECK_VALUE. The parts may be
// strings, integers, floating-point numbers, a c10::ScalarType, a c10::Device or an IntArrayRef
// (sizes and strides); atom::message(parts...) builds the same text for other throws.
//
// Why neither c10's errors nor c10::str: on the H100 machine (torch 2.11+cu130, extensions
// built there with GCC 13.3) tools/gpu/error_probe.py showed that every error whose message
// was built with c10::str inside an extension killed the process with SIGSEGV (a
// TORCH_CHECK_VALUE, and a std::invalid_argument carrying a c10::str message), while a
// c10::ValueError or std::invalid_argument whose message was a plain std::string reached Python
// fine, as did errors raised inside libtorch itself. c10::str streams into a std::ostringstream
// instantiated in the extension; the message here is built by std::string appends and
// std::to_string only, so no iostream code of ours runs on an error path. torch.ops.* calls are
// pybind11 functions, and pybind11 turns std::invalid_argument into ValueError (other
// std::exceptions into RuntimeError). The Python wrappers (atom/kernels/native_checks.py) also
// check every argument before the op runs, so a user mistake rarely reaches this at all.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>

#include <stdexcept>
#include <string>
#include <type_traits>

namespace atom {
namespace detail {

inline void append(std::string& out, const char* s) { out += s; }
inline void append(std::string& out, const std::string& s) { out += s; }
inline void append(std::string& out, char c) { out += c; }
inline void append(std::string& out, c10::ScalarType t) { out += c10::toString(t); }
inline void append(std::string& out, const c10::Device& d) { out += d.str(); }

inline void append(std::string& out, c10::IntArrayRef values) {
  out += '[';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(values[i]);
  }
  out += ']';
}

template <typename T, std::enable_if_t<std::is_arithmetic_v<T>, int> = 0>
void append(std::string& out, T value) {
  out += std::to_string(value);
}

}  // namespace detail

template <typename... Parts>
std::string message(const Parts&... parts) {
  std::string out;
  (detail::append(out, parts), ...);
  return out;
}

[[noreturn]] inline void throw_value_error(const std::string& text) {
  throw std::invalid_argument(text);
}

}  // namespace atom

#define ATOM_CHECK_VALUE(cond, ...)                               \
  do {                                                            \
    if (C10_UNLIKELY(!(cond))) {                                  \
      ::atom::throw_value_error(::atom::message(__VA_ARGS__));    \
    }                                                             \
  } while (false)
