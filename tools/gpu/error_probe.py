"""Do C++ errors thrown from torch extensions built on this machine reach Python, or crash it?

History (benchmarks/results/error_probe_h100_20261125.json, torch 2.11+cu130, GCC 13.3): a
TORCH_CHECK_VALUE thrown from a tiny extension built here with a plain compiler command killed
the process (SIGSEGV); a c10::ValueError built without the stack capture, from the same
extension, raised ValueError; the same construct thrown from atom._C (built by CMake) crashed;
a std::runtime_error from atom._C raised RuntimeError. The next run (21:45 UTC, same machine)
had atom._C throwing std::invalid_argument: still SIGSEGV from its C++ checks, while a
std::invalid_argument from its .cu launchers (message built with std::string +) raised
ValueError. Common to every crashing case: the message was built with c10::str (an
std::ostringstream) in extension code. atom._C's messages are now built without iostreams
(atom::message in csrc/check.h); case c10-str below checks that cause directly.

One run settles which of these is true, each case in a fresh interpreter (a crash is an exit
signal, not the end of the run), with torch's fatal-signal handler printing native frames:
  - the probe extension (csrc/probe/error_probe.cpp) built TWO ways: `gcc` (a plain compiler
    command, as before) and `cmake` (target atom_error_probe of CMakeLists.txt in atom._C's own
    build dir: exactly atom._C's compile and link flags). Each throws every kind of error:
      check     TORCH_CHECK_VALUE (c10::ValueError, C++ stack captured)
      no-stack  c10::ValueError without the stack capture (atom._C's check until now)
      atom-chk  ATOM_CHECK_VALUE from csrc/check.h (std::invalid_argument, message built
                without iostreams: atom._C's check now)
      c10-str   std::invalid_argument whose message c10::str built (atom._C's check before)
      runtime   std::runtime_error (what a failed kernel launch throws)
      in-torch  a c10::Error raised inside libtorch (Tensor.view) under the extension's frames
    Same outcome for both builds: the flags are not the cause. Different: they are (the JSON has
    both compile commands and atom._C's link line to compare).
  - atom._C itself: the direct op (its C++ check), the Python wrapper (native_checks.py), an
    error inside the CPU twin's parallel_for, and on a GPU a launcher error (.cu code) and the
    direct op on CUDA tensors;
  - which c10 error entry points atom._C imports (nm -D): a c10::Error constructor there means
    some TORCH_CHECK-style path is still compiled in (or the build is stale).
If gdb is installed, the first crashing case is re-run under it for a native backtrace.

Run from the repo root after `pip install -e .` (tools/gpu/ops.sh does):
    python tools/gpu/error_probe.py   # table; JSON to $OUT/error_probe.json if set; exit 1 if
                                      # any of atom._C's cases does not raise ValueError
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
PROBE_SOURCE = REPO / "csrc" / "probe" / "error_probe.cpp"
MODES = {"check": 0, "no-stack": 1, "atom-chk": 2, "runtime": 3, "in-torch": 4, "c10-str": 5}
GPU = torch.cuda.is_available()
CUDA_WORK = "torch.ones(8, device='cuda').sum().item(); "

# A bad call to atom._C's ops: the direct op reaches the C++ check, the wrapper the Python one.
BAD_RMS = "(torch.ones(4, 16{dev}), torch.ones(8{dev}), 1e-6)"
BAD_SLOT = (
    "(torch.ones(4, 1, 8), torch.ones(4, 1, 8), torch.zeros(2, 4, 1, 8), torch.zeros(2, 4, 1, 8),"
    " torch.tensor([0, 1, 2, 8]))"
)
# head_size 2048 passes the glue but not the GPU launcher (shared memory): thrown from .cu code.
BIG_HEAD = (
    "(torch.ones(1, 1, 2048, device='cuda'), torch.ones(1, 1, 2048, device='cuda'),"
    " torch.ones(1, 1, 2048, device='cuda'), None, None, 1e-6,"
    " torch.zeros(1, dtype=torch.long, device='cuda'), torch.ones(4, 2048, device='cuda'), True,"
    " torch.zeros(1, 1, 1, 2048, device='cuda'), torch.zeros(1, 1, 1, 2048, device='cuda'),"
    " torch.zeros(1, dtype=torch.long, device='cuda'))"
)

CHILD = """
import sys, torch
if hasattr(torch._C, "_set_print_stack_traces_on_fatal_signal"):  # native frames on a crash
    torch._C._set_print_stack_traces_on_fatal_signal(True)
for lib in sys.argv[2:]:
    torch.ops.load_library(lib)
import atom.kernels.native as native  # loads atom._C
try:
    {call}
except Exception as e:
    print(f"{{type(e).__name__}}: {{str(e).splitlines()[0][:90]}}")
else:
    print("no error")
"""


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "python"), env.get("PYTHONPATH")]))
    return env


def build_gcc(workdir: Path) -> tuple[Path | None, dict]:
    """The probe with a plain compiler command (what the first H100 runs used)."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return None, {"status": "no C++ compiler"}
    root = Path(torch.__file__).parent
    lib = workdir / "libatom_probe_gcc.so"
    command = [
        compiler, "-O3", "-DNDEBUG", "-std=gnu++20", "-fPIC", "-shared",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{REPO / 'csrc'}", f"-I{root / 'include'}", str(PROBE_SOURCE), "-o", str(lib),
        str(root / "lib" / "libc10.so"), str(root / "lib" / "libtorch_cpu.so"),
        f"-Wl,-rpath,{root / 'lib'}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    info = {"command": " ".join(command)}
    if result.returncode != 0:
        return None, {**info, "status": f"build failed: {result.stderr[-800:]}"}
    return lib, {**info, "status": "built"}


def atom_build_dir() -> Path | None:
    """atom._C's CMake build dir (pyproject: build/{wheel_tag}) for this interpreter."""
    soabi = sysconfig.get_config_var("SOABI") or ""
    dirs = [Path(p).parent for p in glob.glob(str(REPO / "build" / "*" / "CMakeCache.txt"))]
    ours = [d for d in dirs if any(soabi in p.name for p in d.glob("_C*.so"))]
    return max(ours or dirs, key=lambda d: d.stat().st_mtime, default=None)


def build_cmake() -> tuple[Path | None, dict]:
    """The probe as CMake target atom_error_probe: atom._C's exact flags."""
    build = atom_build_dir()
    if build is None:
        return None, {"status": "no CMake build dir under build/ (run pip install -e . first)"}
    cmake = shutil.which("cmake")
    if cmake is None:
        return None, {"status": "no cmake on PATH", "build_dir": str(build)}
    result = subprocess.run(
        [cmake, "--build", str(build), "--target", "atom_error_probe", "--verbose"],
        capture_output=True, text=True,
    )  # fmt: skip
    info = {"build_dir": str(build), "build_log_tail": result.stdout[-3000:]}
    libs = sorted(build.glob("atom_error_probe*.so"))
    if result.returncode != 0 or not libs:
        return None, {**info, "status": f"build failed: {(result.stderr or result.stdout)[-800:]}"}
    return libs[0], {**info, "status": "built", **compile_facts(build)}


def compile_facts(build: Path) -> dict:
    """The compile commands of atom._C's glue and of the probe, and _C's link line."""
    facts: dict = {}
    commands = build / "compile_commands.json"
    if commands.exists():
        for entry in json.loads(commands.read_text()):
            name = Path(entry["file"]).name
            if name in ("ops_norm_activation.cpp", "error_probe.cpp", "norm_activation.cu"):
                facts[f"compile {name}"] = entry.get("command") or " ".join(entry["arguments"])
    ninja = build / "build.ninja"
    if ninja.exists():
        lines, keep = ninja.read_text().splitlines(), False
        for line in lines:
            if line.startswith("build "):
                keep = "_C." in line.split(":")[0] or "atom_error_probe" in line.split(":")[0]
                target = line.split(":")[0].removeprefix("build ")
            elif keep and line.strip().startswith(("LINK_FLAGS", "LINK_LIBRARIES")):
                facts[f"link {Path(target).name} {line.split('=')[0].strip()}"] = line.strip()
    return facts


def run_case(call: str, libs: list[Path], under_gdb: bool = False) -> dict:
    argv = [sys.executable, "-X", "faulthandler", "-c", CHILD.format(call=call), "-"]
    argv += [str(lib) for lib in libs]
    if under_gdb:
        argv = ["gdb", "-batch", "-ex", "run", "-ex", "bt 40", "--args", *argv]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=90)
    except subprocess.TimeoutExpired:
        return {"exit": None, "outcome": "timed out (90 s)", "stderr_tail": ""}
    rc = result.returncode
    if under_gdb:
        return {"gdb": (result.stdout + result.stderr)[-6000:]}
    return {
        "exit": rc,
        "outcome": f"killed by signal {-rc}" if rc < 0 else (result.stdout.strip() or "no output"),
        "stderr_tail": result.stderr[-3000:] if rc != 0 else "",
    }


def cases(probes: dict[str, Path | None]) -> dict[str, tuple[str, list[Path]] | str]:
    """name -> (python call, libraries to load) or the reason it is skipped."""
    out: dict[str, tuple[str, list[Path]] | str] = {"torch": ("torch.ones(2) + torch.ones(3)", [])}
    for build, ns in (("gcc", "atom_probe"), ("cmake", "atom_probe_cmake")):
        lib = probes[build]
        for mode, code in MODES.items():
            call = f"torch.ops.{ns}.raise_error(torch.ones(2), {code})"
            out[f"{build}:{mode}"] = (call, [lib]) if lib else "probe not built"
            if mode in ("check", "atom-chk"):
                gpu_case = (CUDA_WORK + call, [lib]) if lib else "probe not built"
                out[f"cuda+{build}:{mode}"] = gpu_case if GPU else "no GPU"
    out["atom:op"] = ("torch.ops.atom.rms_norm" + BAD_RMS.format(dev=""), [])
    out["atom:wrapper"] = ("native.rms_norm" + BAD_RMS.format(dev=""), [])
    out["atom:cpu-twin"] = ("torch.ops.atom.reshape_and_cache" + BAD_SLOT, [])
    gpu_cases = {
        "cuda+atom:op": (CUDA_WORK + "torch.ops.atom.rms_norm" + BAD_RMS.format(dev=""), []),
        "atom:op on cuda": ("torch.ops.atom.rms_norm" + BAD_RMS.format(dev=", device='cuda'"), []),
        "atom:launcher": ("torch.ops.atom.fused_qk_norm_rope_cache" + BIG_HEAD, []),
    }
    for name, case in gpu_cases.items():
        out[name] = case if GPU else "no GPU"
    return out


def atom_c_facts() -> dict:
    """Where atom._C is, the C++ runtime libraries loaded with it, and its c10 error imports."""
    code = (
        "import torch, atom._C as c\n"
        "print(c.__file__)\n"
        "for line in open('/proc/self/maps'):\n"
        "    p = line.split()[-1]\n"
        "    if any(k in p for k in ('libstdc++', 'libgcc_s', 'libgomp', 'libc10.so', 'libcudart')):\n"
        "        print(p)\n"
    )  # fmt: skip
    maps = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env()
    )
    lines = maps.stdout.split()
    facts: dict = {"atom_C": lines[0] if lines else maps.stderr[-400:],
                   "loaded_libraries": sorted(set(lines[1:]))}  # fmt: skip
    if lines and shutil.which("nm"):
        nm = subprocess.run(["nm", "-D", "-C", "--undefined-only", lines[0]], capture_output=True,
                            text=True)  # fmt: skip
        wanted = ("c10::Error::Error", "c10::ValueError::ValueError", "torchCheckFail",
                  "get_lazy_backtrace", "get_backtrace")  # fmt: skip
        facts["c10_error_imports"] = sorted(
            {
                line.split(" U ", 1)[-1].strip()
                for line in nm.stdout.splitlines()
                if any(w in line for w in wanted)
            }  # fmt: skip
        )
    compiler = shutil.which("c++")
    version = (
        subprocess.run([compiler, "--version"], capture_output=True, text=True)
        if compiler
        else None
    )
    facts["compiler"] = (version.stdout.splitlines() or [""])[0] if version else "none"
    facts["torch"] = torch.__version__
    facts["cxx11_abi"] = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    facts["TORCH_SHOW_CPP_STACKTRACES"] = os.environ.get("TORCH_SHOW_CPP_STACKTRACES", "")
    return facts


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        with ThreadPoolExecutor(max_workers=2) as pool:
            gcc_future, cmake_future = pool.submit(build_gcc, Path(tmp)), pool.submit(build_cmake)
            (gcc_lib, gcc_info), (cmake_lib, cmake_info) = (
                gcc_future.result(),
                cmake_future.result(),
            )
        todo = cases({"gcc": gcc_lib, "cmake": cmake_lib})
        results: dict[str, dict] = {}
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            futures = {
                n: pool.submit(run_case, *c) for n, c in todo.items() if isinstance(c, tuple)
            }
            facts_future = pool.submit(atom_c_facts)
            for name, case in todo.items():
                results[name] = (
                    futures[name].result() if name in futures
                    else {"exit": None, "outcome": f"skipped ({case})", "stderr_tail": ""}
                )  # fmt: skip
            facts = facts_future.result()
        crashed = [n for n, r in results.items() if (r["exit"] or 0) < 0]
        gdb = run_case(*todo[crashed[0]], under_gdb=True) if crashed and shutil.which("gdb") else {}

    print(f"error probe: torch {facts['torch']}, {facts['compiler']}")
    print(f"  atom._C {facts['atom_C']}")
    for lib in facts["loaded_libraries"]:
        print(f"  loaded {lib}")
    print(f"  atom._C imports: {facts.get('c10_error_imports', 'nm not found')}")
    print(f"  probe builds: gcc {gcc_info['status']}; cmake {cmake_info['status']}")
    print(f"  {'case':22s} outcome")
    for name, r in results.items():
        print(f"  {name:22s} {r['outcome']}")
    for name in crashed:
        print(f"\n--- {name} stderr:\n{results[name]['stderr_tail']}")
    if gdb:
        print(f"\n--- gdb backtrace of {crashed[0]}:\n{gdb['gdb'][-3000:]}")
    report = {"probe_builds": {"gcc": gcc_info, "cmake": cmake_info}, "facts": facts,
              "cases": results, "gdb": {"case": crashed[0], **gdb} if gdb else {}}  # fmt: skip
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "error_probe.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
    # The exit status judges atom._C's own cases; the others describe the machine.
    ours = [
        r for n, r in results.items()
        if n.startswith(("atom:", "cuda+atom")) and not r["outcome"].startswith("skipped")
    ]  # fmt: skip
    return 0 if all(r["outcome"].startswith("ValueError") for r in ours) else 1


if __name__ == "__main__":
    sys.exit(main())
