// ATOM_CHECK_VALUE(cond, parts...): if cond is false, raises c10::ValueError (a Python ValueError)
// whose message is the parts streamed together, like TORCH_CHECK_VALUE.
//
// Why not TORCH_CHECK_VALUE itself: its c10::Error constructor (the one taking a source location)
// also captures the C++ stack through torch's stack-trace fetcher, walking every frame of the
// thread up to the interpreter's. On the H100 machine (torch 2.11, our .so built there) the
// first such error thrown from atom._C killed the process with SIGSEGV, while a
// std::runtime_error thrown from deeper in the same extension (a failed kernel launch) reached
// Python fine: the unwinding itself works, the stack capture is the suspect. A bad-input error
// needs no C++ backtrace (torch prints it only under TORCH_SHOW_CPP_STACKTRACES=1; the message
// names the offending value), so these errors are built with the constructor that takes none.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <string>
#include <utility>

namespace atom {

// `{}` is the "no backtrace" value of c10::Error's second constructor argument in every torch
// version (a std::string in older releases, a lazily computed backtrace pointer in newer ones).
[[noreturn]] inline void throw_value_error(std::string message) {
  throw c10::ValueError(std::move(message), {});
}

}  // namespace atom

#define ATOM_CHECK_VALUE(cond, ...)                                  \
  do {                                                               \
    if (C10_UNLIKELY(!(cond))) {                                     \
      ::atom::throw_value_error(::c10::str(__VA_ARGS__));            \
    }                                                                \
  } while (false)
