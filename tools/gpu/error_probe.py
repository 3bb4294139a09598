"""Does a C++ error thrown from a torch extension built on this machine reach Python, or crash it?

The first H100 run (torch 2.11+cu130) died with SIGSEGV inside torch.ops.atom.rms_norm when a
TORCH_CHECK_VALUE fired in atom._C, while a std::runtime_error from the same library (a failed
kernel launch) reached Python fine. atom._C now raises its bad-input errors without the C++ stack
capture of c10::Error's source-location constructor (csrc/check.h). This probe tells, each in a
fresh interpreter (so a crash is an exit signal, not the end of the run):

  torch      an error raised inside torch itself (c10::Error from libtorch_cpu)
  check      TORCH_CHECK_VALUE thrown from a tiny extension built here like atom._C
  no-stack   c10::ValueError without the stack capture (what atom._C does now), same extension
  cuda+check TORCH_CHECK_VALUE as above, after CUDA work in the same process (as in the tests)
  atom       a bad input to torch.ops.atom.rms_norm (the built atom._C)
  cuda+atom  the same after CUDA work

plus the compiler and the C++ runtime libraries the process loaded. Run from the repo root:
    python tools/gpu/error_probe.py   # a table; JSON to $OUT/error_probe.json if set; exit 1
                                      # if atom._C's own cases do not raise ValueError
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

PROBE_SOURCE = r"""
#include <torch/library.h>
#include <c10/util/Exception.h>
#include <stdexcept>
#include <string>

at::Tensor raise_error(const at::Tensor& x, int64_t mode) {
  if (mode == 0) TORCH_CHECK_VALUE(false, "probe: TORCH_CHECK_VALUE, size ", x.size(0));
  if (mode == 1) throw c10::ValueError(std::string("probe: ValueError without a stack"), {});
  if (mode == 2) throw std::runtime_error("probe: std::runtime_error");
  return x;
}

TORCH_LIBRARY(atom_probe, m) { m.def("raise_error(Tensor x, int mode) -> Tensor"); }
TORCH_LIBRARY_IMPL(atom_probe, CPU, m) { m.impl("raise_error", &raise_error); }
"""

CASES = {
    "torch": "torch.ones(2) + torch.ones(3)",
    "check": "torch.ops.atom_probe.raise_error(torch.ones(2), 0)",
    "no-stack": "torch.ops.atom_probe.raise_error(torch.ones(2), 1)",
    "cuda+check": "torch.ones(8, device='cuda').sum().item(); "
    "torch.ops.atom_probe.raise_error(torch.ones(2), 0)",
    "atom": "torch.ops.atom.rms_norm(torch.ones(4, 16), torch.ones(8), 1e-6)",
    "cuda+atom": "torch.ones(8, device='cuda').sum().item(); "
    "torch.ops.atom.rms_norm(torch.ones(4, 16), torch.ones(8), 1e-6)",
}

CHILD = """
import sys, torch
if sys.argv[2]:
    torch.ops.load_library(sys.argv[2])
import atom.kernels.native  # noqa: F401  (loads atom._C)
try:
    {call}
except Exception as e:
    print(f"{{type(e).__name__}}: {{str(e).splitlines()[0][:80]}}")
else:
    print("no error")
"""


def build_probe(workdir: Path) -> tuple[Path | None, str]:
    """The probe extension, compiled with the flags CMakeLists.txt gives atom._C's host code."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return None, "no C++ compiler"
    root = Path(torch.__file__).parent
    src, lib = workdir / "probe.cpp", workdir / "libatom_probe.so"
    src.write_text(PROBE_SOURCE)
    command = [
        compiler, "-O3", "-DNDEBUG", "-std=gnu++20", "-fPIC", "-shared",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{root / 'include'}", str(src), "-o", str(lib),
        str(root / "lib" / "libc10.so"), str(root / "lib" / "libtorch_cpu.so"),
        f"-Wl,-rpath,{root / 'lib'}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return None, f"probe build failed: {result.stderr[-600:]}"
    return lib, "built"


def run_case(call: str, probe: Path | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "python"), env.get("PYTHONPATH")]))
    code = CHILD.format(call=call)
    result = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code, "-", str(probe or "")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    rc = result.returncode
    return {
        "exit": rc,
        "outcome": f"killed by signal {-rc}" if rc < 0 else (result.stdout.strip() or "no output"),
        "stderr_tail": result.stderr[-1500:] if rc != 0 else "",
    }


def runtime_facts() -> dict:
    """Compiler and the C++ runtime libraries a process with torch and atom._C has loaded."""
    code = (
        "import torch, atom.kernels.native\n"
        "libs = set()\n"
        "for line in open('/proc/self/maps'):\n"
        "    p = line.split()[-1]\n"
        "    if any(k in p for k in ('libstdc++', 'libgcc_s', 'libgomp', 'libc10.so', '_C.')):\n"
        "        libs.add(p)\n"
        "print('\\n'.join(sorted(libs)))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "python"), env.get("PYTHONPATH")]))
    maps = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    compiler = shutil.which("c++") or ""
    version = (
        subprocess.run([compiler, "--version"], capture_output=True, text=True)
        if compiler
        else None
    )
    return {
        "torch": torch.__version__,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "compiler": (version.stdout.splitlines() or [""])[0] if version else "none",
        "loaded_libraries": maps.stdout.split() if maps.returncode == 0 else [maps.stderr[-300:]],
        "TORCH_SHOW_CPP_STACKTRACES": os.environ.get("TORCH_SHOW_CPP_STACKTRACES", ""),
    }


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        probe, build = build_probe(Path(tmp))
        results = {}
        # Each case in its own interpreter, all at once (each is mostly `import torch`).
        with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
            futures = {}
            for name, call in CASES.items():
                skip = (
                    build if probe is None and "atom_probe" in call
                    else "no GPU" if "cuda" in name and not torch.cuda.is_available()
                    else None
                )  # fmt: skip
                if skip:
                    results[name] = {
                        "exit": None,
                        "outcome": f"skipped ({skip})",
                        "stderr_tail": "",
                    }
                else:
                    futures[name] = pool.submit(run_case, call, probe)
            facts_future = pool.submit(runtime_facts)
            for name, future in futures.items():
                results[name] = future.result()
            facts = facts_future.result()
    print(f"error probe: torch {facts['torch']}, {facts['compiler']}")
    for lib in facts["loaded_libraries"]:
        print(f"  loaded {lib}")
    results = {name: results[name] for name in CASES}
    for name, r in results.items():
        print(f"  {name:10s} {r['outcome']}")
        if r["stderr_tail"]:
            print("    " + r["stderr_tail"].replace("\n", "\n    "))
    report = {"probe_build": build, "facts": facts, "cases": results}
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "error_probe.json"
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
    # The exit status judges atom._C only; the other cases describe the machine.
    ours = [r for n, r in results.items() if "atom" in n and r["exit"] is not None]
    return 0 if all(r["outcome"].startswith("ValueError") for r in ours) else 1


if __name__ == "__main__":
    sys.exit(main())
