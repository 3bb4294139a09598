"""Microbenchmark of the native ops (atom._C): one entry per op, each timed against its torch
reference (eager and torch.compile'd) and against a device-to-device copy of the same number of
bytes, measured in the same run (the practical bandwidth bound of a memory-bound op).

    python tools/bench_ops.py                  # on the GPU (H100 shapes), writes JSON results
    python tools/bench_ops.py --quick --device cpu --no-compile    # a smoke run anywhere

GB/s = bytes the op must move (each input read once, each output written once) / median time.
On a GPU every timed call starts with a cold L2 (a 256 MiB buffer is cleared before it), timed
with CUDA events; on the CPU with perf_counter. Targets checked at the end (issue "Build
pipeline"): rms_norm and fused_add_rms_norm >= 85% of copy bandwidth and not slower than the
compiled reference; fused_qk_norm_rope_cache >= 1.5x the unfused torch sequence it replaces.
Results: benchmarks/results/ops_<device>_<date>.json, and $OUT/ops_bench.json if $OUT is set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from atom.kernels import native  # noqa: E402  (needs the built extension)
from atom.kernels.reference import activation, cache, norm, rotary  # noqa: E402
from bench_common import RESULTS_DIR, write_json  # noqa: E402


@dataclass
class Entry:
    """One benchmark: `native` and `reference` take the same inputs from `make()`."""

    name: str
    shape: str
    make: Callable[[], dict]
    native: Callable[[dict], object]
    reference: Callable[[dict], object]
    bytes_moved: Callable[[dict], int]


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def cos_sin_table(max_pos: int, rot_dim: int, device) -> torch.Tensor:
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, rot_dim, 2, device=device).float() / rot_dim))
    freqs = torch.outer(torch.arange(max_pos, device=device).float(), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def entries(device: str, quick: bool) -> list[Entry]:
    dtype = torch.bfloat16
    rows, hidden = (64, 512) if quick else (4096, 4096)
    inter = 256 if quick else 14336  # Llama-3-8B MLP width
    tokens, hq, hkv, d = (32, 4, 2, 64) if quick else (4096, 32, 8, 128)  # Qwen3-8B attention
    block = 16
    num_blocks = tokens // block + 8

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, device=device).to(dt)

    def norm_inputs():
        return {"x": randn(rows, hidden), "r": randn(rows, hidden), "w": randn(hidden)}

    def attention_inputs(cache_dtype):
        qkv = randn(tokens, (hq + 2 * hkv) * d)  # the fused projection output; q/k/v are views
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        kc = torch.zeros(num_blocks, block, hkv, d, device=device).to(cache_dtype)
        return {
            "q": q.view(tokens, hq, d),
            "k": k.view(tokens, hkv, d),
            "v": v.view(tokens, hkv, d),
            "qw": randn(d),
            "kw": randn(d),
            "pos": torch.randint(0, 8192, (tokens,), device=device),
            "cos_sin": cos_sin_table(8192, d, device),
            "kc": kc,
            "vc": kc.clone(),
            "slots": torch.randperm(num_blocks * block, device=device)[:tokens],
            "scale": torch.tensor([0.5], device=device) if cache_dtype != dtype else None,
        }

    def fused_args(a):
        return (a["q"], a["k"], a["v"], a["qw"], a["kw"], 1e-6, a["pos"], a["cos_sin"], True,
                a["kc"], a["vc"], a["slots"], a["scale"], a["scale"])  # fmt: skip

    def fused_bytes(a):
        # q, k read and written; v read; k and v written to the caches; positions, slots, cos/sin.
        cache_rows = a["kc"].element_size() * 2 * tokens * hkv * d
        table = tokens * d * 4
        return (
            2 * nbytes(a["q"], a["k"]) + nbytes(a["v"], a["pos"], a["slots"]) + cache_rows + table
        )

    def cache_args(a):
        return a["k"], a["v"], a["kc"], a["vc"], a["slots"], a["scale"], a["scale"]

    def cache_bytes(a):
        return nbytes(a["k"], a["v"], a["slots"]) + a["kc"].element_size() * 2 * tokens * hkv * d

    fp8 = torch.float8_e4m3fn
    out = [
        Entry("rms_norm", f"{rows}x{hidden} bf16", norm_inputs,
              lambda a: native.rms_norm(a["x"], a["w"], 1e-6),
              lambda a: norm.rms_norm(a["x"], a["w"], 1e-6),
              lambda a: 2 * nbytes(a["x"]) + nbytes(a["w"])),
        Entry("fused_add_rms_norm", f"{rows}x{hidden} bf16", norm_inputs,
              lambda a: native.fused_add_rms_norm(a["x"], a["r"], a["w"], 1e-6),
              lambda a: norm.fused_add_rms_norm(a["x"], a["r"], a["w"], 1e-6),
              lambda a: 2 * nbytes(a["x"], a["r"]) + nbytes(a["w"])),
        Entry("silu_and_mul", f"{rows}x2*{inter} bf16",
              lambda: {"x": randn(rows, 2 * inter)},
              lambda a: native.silu_and_mul(a["x"]),
              lambda a: activation.silu_and_mul(a["x"]),
              lambda a: nbytes(a["x"]) * 3 // 2),
        Entry("rotary_embedding", f"T={tokens} q{hq} kv{hkv} d{d} bf16",
              lambda: attention_inputs(dtype),
              lambda a: native.rotary_embedding(a["pos"], a["q"], a["k"], d, a["cos_sin"], True),
              lambda a: rotary.rotary_embedding(a["pos"], a["q"], a["k"], d, a["cos_sin"], True),
              lambda a: 2 * nbytes(a["q"], a["k"]) + nbytes(a["pos"]) + tokens * d * 4),
        Entry("reshape_and_cache", f"T={tokens} kv{hkv} d{d} bf16", lambda: attention_inputs(dtype),
              lambda a: native.reshape_and_cache(*cache_args(a)),
              lambda a: cache.reshape_and_cache(*cache_args(a)), cache_bytes),
        Entry("reshape_and_cache", f"T={tokens} kv{hkv} d{d} bf16->fp8",
              lambda: attention_inputs(fp8),
              lambda a: native.reshape_and_cache(*cache_args(a)),
              lambda a: cache.reshape_and_cache(*cache_args(a)), cache_bytes),
        Entry("fused_qk_norm_rope_cache", f"T={tokens} q{hq} kv{hkv} d{d} bf16",
              lambda: attention_inputs(dtype),
              lambda a: native.fused_qk_norm_rope_cache(*fused_args(a)),
              lambda a: cache.fused_qk_norm_rope_cache(*fused_args(a)), fused_bytes),
        Entry("fused_qk_norm_rope_cache", f"T={tokens} q{hq} kv{hkv} d{d} bf16->fp8",
              lambda: attention_inputs(fp8),
              lambda a: native.fused_qk_norm_rope_cache(*fused_args(a)),
              lambda a: cache.fused_qk_norm_rope_cache(*fused_args(a)), fused_bytes),
    ]  # fmt: skip
    return out


class Timer:
    """Median wall time of fn() in seconds: cold L2 and CUDA events on a GPU."""

    def __init__(self, device: str, iters: int, warmup: int):
        self.device, self.iters, self.warmup = device, iters, warmup
        self.flush = (
            torch.empty(256 << 20, dtype=torch.int8, device=device) if device == "cuda" else None
        )

    def __call__(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.iters):
            if self.device == "cuda":
                self.flush.zero_()
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


def copy_time(timer: Timer, total_bytes: int, device: str) -> float:
    """A device-to-device copy that reads total/2 and writes total/2 bytes."""
    src = torch.empty(total_bytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return timer(lambda: dst.copy_(src))


def run(args) -> dict:
    device = args.device
    timer = Timer(device, args.iters, args.warmup)
    results = []
    for e in entries(device, args.quick):
        if args.ops and e.name not in args.ops:
            continue
        inputs = e.make()
        moved = e.bytes_moved(inputs)
        t_native = timer(lambda e=e, a=inputs: e.native(a))
        t_eager = timer(lambda e=e, a=inputs: e.reference(a))
        t_compiled = None
        if args.compile:
            torch._dynamo.reset()
            compiled = torch.compile(e.reference, dynamic=False)
            t_compiled = timer(lambda a=inputs, c=compiled: c(a))
        t_copy = copy_time(timer, moved, device)
        results.append({
            "op": e.name, "shape": e.shape, "bytes": moved,
            "native_us": t_native * 1e6, "native_gbps": moved / t_native / 1e9,
            "copy_us": t_copy * 1e6, "copy_gbps": moved / t_copy / 1e9,
            "fraction_of_copy": t_copy / t_native,
            "torch_eager_us": t_eager * 1e6, "speedup_vs_eager": t_eager / t_native,
            "torch_compiled_us": None if t_compiled is None else t_compiled * 1e6,
            "speedup_vs_compiled": None if t_compiled is None else t_compiled / t_native,
        })  # fmt: skip
        print(f"  {e.name:26s} {e.shape:34s} {t_native * 1e6:9.1f} us", flush=True)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {
        "benchmark": "ops",
        "device": name,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "gpu_backend": native.GPU_BACKEND,
        "gpu_archs": native.GPU_ARCHS,
        "quick": args.quick,
        "results": results,
        "targets": check_targets(results),
    }


def check_targets(results: list[dict]) -> list[dict]:
    """The issue's acceptance numbers, evaluated on the full-size (non --quick) shapes."""
    checks = []
    for r in results:
        label = f"{r['op']} [{r['shape']}]"
        if r["op"] in ("rms_norm", "fused_add_rms_norm"):
            checks.append(
                {
                    "check": f"{label} >= 85% of copy bandwidth",
                    "value": r["fraction_of_copy"],
                    "ok": r["fraction_of_copy"] >= 0.85,
                }
            )
            if r["speedup_vs_compiled"] is not None:
                checks.append(
                    {
                        "check": f"{label} not slower than compiled torch",
                        "value": r["speedup_vs_compiled"],
                        "ok": r["speedup_vs_compiled"] >= 1.0,
                    }
                )
        if r["op"] == "fused_qk_norm_rope_cache":
            checks.append(
                {
                    "check": f"{label} >= 1.5x the unfused torch sequence",
                    "value": r["speedup_vs_eager"],
                    "ok": r["speedup_vs_eager"] >= 1.5,
                }
            )
    return checks  # fmt: skip


def print_table(report: dict) -> None:
    print(f"\nATOM native ops on {report['device']} (torch {report['torch']}, {report['date']})")
    head = f"{'op':26s} {'shape':34s} {'us':>8s} {'GB/s':>7s} {'%copy':>6s} {'x eager':>8s} {'x compiled':>10s}"
    print(head)
    print("-" * len(head))
    for r in report["results"]:
        compiled = "-" if r["speedup_vs_compiled"] is None else f"{r['speedup_vs_compiled']:.2f}"
        print(f"{r['op']:26s} {r['shape']:34s} {r['native_us']:8.1f} {r['native_gbps']:7.0f} "
              f"{100 * r['fraction_of_copy']:5.0f}% {r['speedup_vs_eager']:8.2f} {compiled:>10s}")  # fmt: skip
    print(
        f"(copy of the same bytes: {max(r['copy_gbps'] for r in report['results']):.0f} GB/s at best)"
    )
    for c in report["targets"]:
        print(f"{'PASS' if c['ok'] else 'FAIL'}  {c['check']}: {c['value']:.2f}")


def save(report: dict) -> list[Path]:
    slug = re.sub(r"[^a-z0-9]+", "_", report["device"].lower()).strip("_")
    stamp = report["date"][:19].replace(":", "").replace("-", "")
    paths = [RESULTS_DIR / f"ops_{slug}_{stamp}.json"]
    if os.environ.get("OUT"):
        paths.append(Path(os.environ["OUT"]) / "ops_bench.json")
    return write_json(report, paths, indent=2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip the torch.compile'd reference")  # fmt: skip
    parser.add_argument("--ops", nargs="*", help="only these ops")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-save", dest="save", action="store_false")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    report = run(args)
    print_table(report)
    if args.save:
        for p in save(report):
            print(f"wrote {p}")
    return report


if __name__ == "__main__":
    main()
