"""Fused small-batch GEMV microbenchmark: Triton fused_gemv vs the unfused ops it replaces vs cuBLAS.

The 8 linear layers of a decoder layer of SmolLM2-135M (hidden 576, intermediate 1536, 9/3 heads of
64) and Llama-3-8B (4096, 14336, 32/8 heads of 128), bf16, at M = 1, 4, 16 rows, each with the
fusion the engine uses there (norm prologue for qkv and gate_up, residual epilogue for o, SiLU*up
prologue + residual for down). For each (shape, M):
  (a) fused:   fused_gemv at its default config, and a config sweep (the WINNER is printed);
  (b) unfused: atom.kernels rms_norm / silu_and_mul + F.linear (+ in-place add of the residual);
  (c) linear:  F.linear alone (cuBLAS; the GEMM the fusion must not be slower than).
Each is timed two ways: "graph", a CUDA graph of >= 20 calls replayed (launch cost excluded, as the
engine runs decode), the calls rotating over enough weight copies (> 2x the L2) that the weights are
read from HBM as in a real step; and "eager", plain launches (do_bench, L2 flushed before each, host
launch cost included). GB/s = weight bytes / graph time, compared with a device copy's bandwidth
measured in the same run. Prints a table and a SmolLM2 per-step estimate (4 calls x 30 layers);
writes JSON to benchmarks/results/ and to $OUT when set.

    python tools/bench_gemv.py                 # on a GPU, a few minutes (compiles included)
    python tools/bench_gemv.py --dry-run       # tiny shapes on the CPU (interpreter), seconds
    python tools/bench_gemv.py --compile-check sweep   # sm90 compile of every config, no GPU
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# name -> (K, N, fusion)
SHAPES = {
    "smollm2-qkv": (576, 960, "norm"),
    "smollm2-o": (576, 576, "residual"),
    "smollm2-gate_up": (576, 3072, "norm"),
    "smollm2-down": (1536, 576, "silu+residual"),
    "llama3-qkv": (4096, 6144, "norm"),
    "llama3-o": (4096, 4096, "residual"),
    "llama3-gate_up": (4096, 28672, "norm"),
    "llama3-down": (14336, 4096, "silu+residual"),
}
DRY_SHAPES = {
    "tiny-qkv": (64, 96, "norm"),
    "tiny-o": (64, 64, "residual"),
    "tiny-down": (96, 64, "silu+residual"),
}
SMOLLM2_LAYERS = 30
MIN_GRAPH_CALLS = 20
MAX_COPIES = 256


def sweep_configs(m: int, k: int, dry: bool) -> list:
    """Candidate configs: multiply-reduce ones for M <= 4 (within the register budget: at most 16K
    products and 32 accumulators per step, which compile without spills on sm90), tensor-core ones
    for every M."""
    from atom.kernels.triton.gemv import GemvConfig, rows_padded

    if dry:
        return [GemvConfig(16, 32), GemvConfig(16, 32, use_dot=True)]
    reduce = [
        (4, 512, 4, 1), (4, 1024, 4, 1), (4, 2048, 4, 1), (8, 512, 4, 1), (8, 1024, 4, 1),
        (16, 256, 4, 1), (16, 512, 4, 1), (32, 256, 8, 1), (8, 1024, 8, 1), (16, 512, 4, 3),
    ]  # fmt: skip
    dot = [
        (16, 128, 4, 4), (32, 128, 4, 4), (64, 128, 4, 4), (16, 256, 4, 3), (32, 256, 4, 3),
        (64, 256, 4, 3), (128, 128, 8, 3), (64, 64, 4, 5),
    ]  # fmt: skip
    kmax = max(16, 1 << (k - 1).bit_length())
    out = []
    if m <= 4:
        for bn, bk, w, s in reduce:
            m_pad = rows_padded(m, False)
            if bk <= kmax and m_pad * bn * bk <= 16384 and m_pad * bn <= 32:
                out.append(GemvConfig(bn, bk, w, s))
    out += [GemvConfig(bn, bk, w, s, use_dot=True) for bn, bk, w, s in dot if bk <= kmax]
    return out


def cfg_name(c) -> str:
    return f"{'dot' if c.use_dot else 'red'}-n{c.block_n}k{c.block_k}w{c.num_warps}s{c.num_stages}"


def time_graph_us(make_call, copies: int, device: str, reps: int = 20) -> float:
    """Microseconds per call: a CUDA graph of max(MIN_GRAPH_CALLS, copies) calls, call i using
    weight copy i % copies (make_call(i) returns the call), replayed; median over replays. On the
    CPU (dry run) plain calls of one copy."""
    from bench_common import graph_time_ms, time_ms

    if device != "cuda":
        return 1e3 * time_ms(make_call(0), device)
    calls = [make_call(i % copies) for i in range(max(MIN_GRAPH_CALLS, copies))]
    return 1e3 * graph_time_ms(calls, reps)


def bench_case(name, k, n, fusion, m, dtype, device, l2_bytes, copy_gbps, dry) -> dict:
    import torch
    import torch.nn.functional as F

    import atom.kernels as kernels
    from atom.kernels.triton.gemv import default_gemv_config, fused_gemv, interpreter_config
    from bench_common import time_ms

    wbytes = n * k * torch.finfo(dtype).bits // 8
    copies = 1 if dry else max(1, min(MAX_COPIES, math.ceil(2 * l2_bytes / wbytes)))
    g = torch.Generator(device="cpu").manual_seed(m * 7 + k)
    weights = [(torch.randn(n, k, generator=g) / k**0.5).to(device, dtype) for _ in range(copies)]
    gated = fusion.startswith("silu")
    x = torch.randn(m, 2 * k if gated else k, generator=g).to(device, dtype)
    norm_w = (0.5 + torch.rand(k, generator=g)).to(device, dtype)
    h = torch.randn(m, n, generator=g).to(device, dtype)  # the residual stream (updated in place)
    kw = {"eps": 1e-5}
    if fusion == "norm":
        kw["norm_weight"] = norm_w
    if gated:
        kw["act"] = "silu_and_mul"
    residual = fusion.endswith("residual")

    def fused(i, config=None):
        extra = {"residual": h, "out": h} if residual else {}
        return lambda: fused_gemv(x, weights[i], **kw, **extra, config=config)

    def unfused(i):
        def run():
            a = x
            if fusion == "norm":
                a = kernels.rms_norm(x, norm_w, 1e-5)
            elif gated:
                a = kernels.silu_and_mul(x)
            y = F.linear(a, weights[i])
            return torch.add(h, y, out=h) if residual else y

        return run

    def linear(i):
        a = x[:, :k] if gated else x
        return lambda: F.linear(a, weights[i])

    # correctness of what is timed: fused vs unfused on the same inputs
    h0 = h.clone()
    want = unfused(0)().clone()  # (the residual variants return h itself)
    h.copy_(h0)
    got = fused(0)()
    err = (got.float() - want.float()).abs().max().item()
    h.copy_(h0)

    def timed(make, config=None):
        mk = (lambda i: make(i, config)) if config is not None else make
        return {"graph_us": time_graph_us(mk, copies, device), "eager_us": eager(mk(0))}

    def eager(fn):
        return 1e3 * time_ms(fn, device, rep=30 if device == "cuda" else 50)

    row = {
        "shape": name, "K": k, "N": n, "M": m, "fusion": fusion, "weight_bytes": wbytes,
        "weight_copies": copies, "max_abs_err_fused_vs_unfused": err,
        "fused": timed(fused), "unfused": timed(unfused), "linear": timed(linear),
    }  # fmt: skip
    default = interpreter_config(m, n, k) if dry else default_gemv_config(m, n, k, dtype)
    row["default_config"] = cfg_name(default)
    sweep = {}
    for cfg in sweep_configs(m, k, dry):
        try:
            sweep[cfg_name(cfg)] = time_graph_us(lambda i, c=cfg: fused(i, c), copies, device)
        except Exception as exc:  # e.g. out of shared memory or registers for this config
            print(f"  {name} M={m} {cfg_name(cfg)}: failed: {type(exc).__name__}: {exc}"[:300])
    sweep.setdefault(row["default_config"], row["fused"]["graph_us"])
    row["sweep_graph_us"] = sweep
    row["winner"] = min(sweep, key=sweep.get)
    row["winner_graph_us"] = best = sweep[row["winner"]]
    row["best_fused_GBps"] = wbytes / (best * 1e-6) / 1e9
    row["best_fused_of_copy_bw"] = row["best_fused_GBps"] / copy_gbps
    row["linear_GBps"] = wbytes / (row["linear"]["graph_us"] * 1e-6) / 1e9
    row["speedup_vs_unfused_graph"] = row["unfused"]["graph_us"] / best
    row["speedup_vs_linear_graph"] = row["linear"]["graph_us"] / best
    h.copy_(h0)
    return row


def compile_sm90(cfg, m: int, fusion: str, even_k: bool) -> dict:
    """Ahead-of-time compile of one kernel variant for the H100 (sm90) with Triton's bundled ptxas,
    no GPU needed: {"shared": bytes, "reg": registers, "stack": spill bytes}."""
    import triton
    from triton.compiler import ASTSource

    from atom.kernels.triton.compile_check import TARGETS, _resource_usage
    from atom.kernels.triton.gemv import _gemv_kernel, rows_padded

    m_pad = rows_padded(m, cfg.use_dot)
    norm = fusion.startswith("norm")
    consts = dict(
        M_PAD=m_pad, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        SUMSQ_BLOCK=max(cfg.block_k, 8192 // m_pad) if norm else cfg.block_k,
        HAS_BIAS=False, HAS_NORM=norm, GATED=fusion.startswith("silu"),
        HAS_RESIDUAL=fusion.endswith("residual"), USE_DOT=cfg.use_dot, EVEN_K=even_k,
        DOT_PRECISION="tf32", CPU_BF16=False, USE_PDL=True, PREFETCH=True,
    )  # fmt: skip
    signature, attrs = {}, {}
    for i, arg in enumerate(_gemv_kernel.arg_names):
        if arg in consts:
            signature[arg] = "constexpr"
        else:
            signature[arg] = "*bf16" if arg.endswith("_ptr") else "fp32" if arg == "eps" else "i32"
        if arg.endswith("_ptr") or arg.startswith("stride") or arg in ("N", "K"):
            attrs[(i,)] = [["tt.divisibility", 16]]  # what Triton specializes at launch here
    target = TARGETS["sm90"]
    options = triton.compiler.make_backend(target).parse_options(
        dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    )
    compiled = triton.compile(
        ASTSource(_gemv_kernel, signature, consts, attrs), target=target, options=options.__dict__
    )
    return {"shared": compiled.metadata.shared, **_resource_usage(compiled.asm["cubin"])}


def compile_check(sweep: bool) -> int:
    """Compiles the default config (and with ``sweep`` every sweep config) of each real shape at
    M = 1..32 for sm90; prints registers / spills; returns the number of failures and spills."""
    import torch

    from atom.kernels.triton.gemv import default_gemv_config

    bad, seen = 0, set()
    for name, (k, n, fusion) in SHAPES.items():
        for m in (1, 2, 4, 8, 16, 32):
            configs = [default_gemv_config(m, n, k, torch.bfloat16)]
            configs += sweep_configs(m, k, False) if sweep and m in (1, 4, 16) else []
            for cfg in configs:
                even_k = k % cfg.block_k == 0
                key = (cfg, min(m, 4) if not cfg.use_dot else max(16, m), fusion, even_k)
                if key in seen:
                    continue
                seen.add(key)
                try:
                    r = compile_sm90(cfg, m, fusion, even_k)
                except Exception as exc:  # report every variant, then fail
                    bad += 1
                    print(f"FAIL {name} M={m} {cfg_name(cfg)}: {type(exc).__name__}: {exc}"[:1500])
                    continue
                spill = r.get("stack", 0) != 0
                bad += spill
                print(
                    f"{'SPILL' if spill else 'ok   '} {name:>16} M={m:<2} {cfg_name(cfg):<22} "
                    f"smem {r['shared']:>6} B  regs {r.get('reg', '?'):>3}  stack {r.get('stack')}"
                )
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--m", type=int, nargs="+", default=[1, 4, 16], help="rows per call")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (interpreter)")
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results (not in --dry-run)")
    ap.add_argument(
        "--compile-check", choices=["defaults", "sweep"], default=None,
        help="no timing: compile for sm90 without a GPU and report spills (unset TRITON_INTERPRET)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.compile_check:
        if os.environ.get("TRITON_INTERPRET") == "1":
            sys.exit("unset TRITON_INTERPRET: the interpreter replaces the compiler")
        sys.exit(1 if compile_check(args.compile_check == "sweep") else 0)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

    import torch

    import bench_common
    from atom.kernels.triton.gemv import TARGET_SMS, GemvConfig

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no GPU: use --dry-run to check this script on a CPU")
    shapes = DRY_SHAPES if args.dry_run else {s: SHAPES[s] for s in args.shapes}
    ms = [1, 4] if args.dry_run else args.m
    dtype = torch.bfloat16
    name = bench_common.device_name(device, cpu_name="cpu (interpreter)")
    l2 = torch.cuda.get_device_properties(0).L2_cache_size if device == "cuda" else 0
    bw = bench_common.copy_bandwidth_gbps(device, (1 << 30) if device == "cuda" else (1 << 22))
    sms = torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else 0
    print(
        f"{name}: {sms} SMs (heuristics assume {TARGET_SMS}), L2 {l2 >> 20} MiB, copy {bw:.0f} GB/s"
    )

    rows = []
    for shape, (k, n, fusion) in shapes.items():
        for m in ms:
            r = bench_case(shape, k, n, fusion, m, dtype, device, l2, bw, args.dry_run)
            rows.append(r)
            print(
                f"{shape:>16} M={m:<2} {fusion:>13}  fused {r['fused']['graph_us']:7.2f} us"
                f" (eager {r['fused']['eager_us']:6.1f})  unfused {r['unfused']['graph_us']:7.2f}"
                f" (eager {r['unfused']['eager_us']:6.1f})  linear {r['linear']['graph_us']:7.2f}"
                f"  | winner {r['winner']} {r['winner_graph_us']:.2f} us"
                f" {r['best_fused_GBps']:6.0f} GB/s = {r['best_fused_of_copy_bw']:4.0%} of copy"
                f"  x{r['speedup_vs_unfused_graph']:.2f} vs unfused  err {r['max_abs_err_fused_vs_unfused']:.2g}"
            )  # fmt: skip

    print("\nwinner per shape (graph us; default config in brackets):")
    for r in rows:
        print(
            f"  {r['shape']:>16} M={r['M']:<2} {r['winner']} "
            f"{r['winner_graph_us']:.2f}  [{r['default_config']}: "
            f"{r['fused']['graph_us']:.2f}]"
        )
    step = {}
    for m in ms:  # SmolLM2 decode step: 4 GEMV calls per layer, 30 layers (graph time)
        part = [r for r in rows if r["shape"].startswith("smollm2") and r["M"] == m]
        if len(part) == 4:
            step[m] = {
                kind: SMOLLM2_LAYERS * sum(r[kind]["graph_us"] for r in part)
                for kind in ("fused", "unfused", "linear")
            }
            step[m]["fused_winners"] = SMOLLM2_LAYERS * sum(r["winner_graph_us"] for r in part)
            print(f"SmolLM2 M={m}: 30 layers of the 4 calls: " + ", ".join(
                f"{kind} {us:.0f} us" for kind, us in step[m].items()))  # fmt: skip

    now = datetime.datetime.now(datetime.timezone.utc)
    result = {
        **bench_common.kernel_result_header("fused_gemv", name, now),
        "dtype": str(dtype),
        "num_sms": sms,
        "l2_bytes": l2,
        "copy_bandwidth_GBps": bw,
        "config_fields": list(GemvConfig.__dataclass_fields__),
        "rows": rows,
        "smollm2_step_us": step,
        "note": "graph_us: CUDA graph of >= 20 calls over rotated weight copies (HBM reads); "
        "eager_us: plain launches, L2 flushed",
    }
    file_name = f"gemv_{bench_common.file_slug(name)}_{now.strftime('%Y%m%dT%H%M%S')}.json"
    out_dir = args.out_dir or (None if args.dry_run else bench_common.RESULTS_DIR)
    for path in bench_common.write_json(result, bench_common.result_paths(file_name, out_dir)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
