"""Fused MoE microbenchmark: Triton kernel vs the torch reference vs the weight-read bound.

Shapes of Qwen3-30B-A3B's experts (E=128, k=8, H=2048, I=768, bf16) at T = 1, 4, 16, 64, 256
tokens with random softmax routing. For each T:
  - bound:   bytes of the experts actually touched (distinct ids * 3 * I * H * 2 B) divided by the
             measured device copy bandwidth (torch copy of 1 GiB: (read + write) / time);
  - torch:   the reference (a loop over touched experts; host syncs, so timed eagerly);
  - triton:  every block config of CANDIDATES, timed as CUDA-graph replays (what decode runs) with
             the weights rotated over several copies so the touched experts are not L2-resident;
             the best config and the one pick_config chooses are reported.
Prints a table; writes JSON to benchmarks/results/ and to $OUT when set.

    python tools/bench_moe.py                # on a GPU, ~1-2 minutes (compiles included)
    TRITON_INTERPRET=1 python tools/bench_moe.py --smoke   # tiny shapes on the CPU: a script check
"""

from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common  # noqa: E402
from atom.kernels.reference.moe import fused_moe_ref  # noqa: E402
from atom.kernels.triton.moe import CANDIDATES, fused_moe_triton, pick_config  # noqa: E402
from bench_common import (  # noqa: E402
    copy_bandwidth_gbps,
    file_slug,
    graph_time_ms,
    kernel_result_header,
    result_paths,
    time_ms,
    write_json,
)

QWEN3_30B_A3B = dict(experts=128, top_k=8, hidden=2048, inter=768)
SMOKE = dict(experts=8, top_k=2, hidden=64, inter=32)
EAGER_REP_MS = 60  # do_bench's timing budget for the eager timings


def time_eager(fn, device: str) -> float:
    """Median milliseconds of fn, eagerly (L2 flushed between runs on the GPU)."""
    return time_ms(fn, device, rep=EAGER_REP_MS)


def time_graph(fns, device: str, reps: int = 20) -> float:
    """Milliseconds per call of the calls in fns, captured together in one CUDA graph."""
    if device != "cuda":
        return time_eager(lambda: [f() for f in fns], device) / len(fns)
    return graph_time_ms(list(fns), reps)


def routing(tokens: int, experts: int, top_k: int, device: str, seed: int):
    g = torch.Generator(device="cpu").manual_seed(seed)
    probs = torch.softmax(torch.randn(tokens, experts, generator=g), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(device), ids.to(torch.int32).to(device)


def bench_tokens(t, e, k, h, inter, dtype, w13s, w2s, bw, device) -> dict:
    """One row of the table: T tokens routed to k of E experts."""
    x = torch.randn(t, h, device=device, dtype=dtype)
    weights, ids = routing(t, e, k, device, seed=t)
    distinct = int(torch.unique(ids).numel())
    touched = distinct * 3 * inter * h * (torch.finfo(dtype).bits // 8)
    bound_us = touched / (bw * 1e9) * 1e6
    ref_out = fused_moe_ref(x, w13s[0], w2s[0], weights, ids)
    ref_us = 1e3 * time_eager(lambda: fused_moe_ref(x, w13s[0], w2s[0], weights, ids), device)
    per_config = {}
    for cfg in CANDIDATES:
        try:
            out = fused_moe_triton(x, w13s[0], w2s[0], weights, ids, config=cfg)
            err = (out.float() - ref_out.float()).abs().max().item()
            calls = [
                (lambda a=a, b=b, c=cfg: fused_moe_triton(x, a, b, weights, ids, config=c))
                for a, b in zip(w13s, w2s)
            ]
            us = 1e3 * time_graph(calls, device)
        except Exception as exc:  # e.g. a config that does not fit this GPU's shared memory
            print(f"T={t} {cfg_name(cfg)}: failed: {type(exc).__name__}: {exc}"[:300])
            continue
        per_config[cfg_name(cfg)] = {"us": us, "max_abs_err_vs_ref": err}
    if not per_config:
        sys.exit(f"every block config failed at T={t}")
    best = min(per_config, key=lambda n: per_config[n]["us"])
    default = cfg_name(pick_config(t * k, e))
    if default not in per_config:
        per_config[default] = {"us": float("nan"), "max_abs_err_vs_ref": float("nan")}
    flops = 2 * t * k * 3 * inter * h
    return {
        "tokens": t, "distinct_experts": distinct, "bytes_touched": touched,
        "bound_us": bound_us, "torch_ref_us": ref_us,
        "triton_best_us": per_config[best]["us"], "best_config": best,
        "triton_default_us": per_config[default]["us"], "default_config": default,
        "speedup_vs_ref": ref_us / per_config[best]["us"],
        "fraction_of_bound": bound_us / per_config[best]["us"],
        "best_tflops": flops / (per_config[best]["us"] * 1e-6) / 1e12,
        "per_config": per_config,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--weight-copies", type=int, default=4, help="rotated to defeat L2 reuse")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU interpreter check)")
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results (not in --smoke)")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("no GPU: run with --smoke under TRITON_INTERPRET=1 to check the script")
    shape = SMOKE if args.smoke else QWEN3_30B_A3B
    tokens_list = [1, 4] if args.smoke else args.tokens
    copies = 1 if args.smoke else args.weight_copies
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    e, k, h, inter = shape["experts"], shape["top_k"], shape["hidden"], shape["inter"]
    device_name = bench_common.device_name(device, cpu_name="cpu (interpreter)")

    torch.manual_seed(0)
    w13s = [
        torch.randn(e, 2 * inter, h, device=device, dtype=dtype) / h**0.5 for _ in range(copies)
    ]
    w2s = [torch.randn(e, h, inter, device=device, dtype=dtype) / inter**0.5 for _ in range(copies)]
    bw = copy_bandwidth_gbps(device, (1 << 30) if device == "cuda" else (1 << 24), EAGER_REP_MS)
    print(f"{device_name}: copy bandwidth {bw:.0f} GB/s; E={e} k={k} H={h} I={inter} {dtype}")

    rows = [bench_tokens(t, e, k, h, inter, dtype, w13s, w2s, bw, device) for t in tokens_list]

    print(f"\n{'T':>5} {'experts':>7} {'bound us':>9} {'torch us':>9} {'triton us':>10} "
          f"{'x torch':>8} {'of bound':>8} {'TFLOP/s':>8}  best config (default: us)")  # fmt: skip
    for r in rows:
        print(
            f"{r['tokens']:>5} {r['distinct_experts']:>7} {r['bound_us']:>9.1f} "
            f"{r['torch_ref_us']:>9.1f} {r['triton_best_us']:>10.1f} {r['speedup_vs_ref']:>8.1f} "
            f"{r['fraction_of_bound']:>8.0%} {r['best_tflops']:>8.1f}  {r['best_config']} "
            f"({r['default_config']}: {r['triton_default_us']:.1f})"
        )
    worst_err = max(c["max_abs_err_vs_ref"] for r in rows for c in r["per_config"].values())
    print(f"max |triton - torch| over all configs: {worst_err:.3g}")

    now = datetime.datetime.now(datetime.timezone.utc)
    result = {
        **kernel_result_header("fused_moe", device_name, now),
        "dtype": str(dtype),
        "shape": shape,
        "copy_bandwidth_GBps": bw,
        "weight_copies": copies,
        "configs": [asdict(c) | {"name": cfg_name(c)} for c in CANDIDATES],
        "rows": rows,
    }
    name = f"moe_{file_slug(device_name)}_{now.strftime('%Y%m%dT%H%M%S')}.json"
    out_dir = args.out_dir or (None if args.smoke else "benchmarks/results")
    for path in write_json(result, result_paths(name, out_dir)):
        print(f"wrote {path}")


def cfg_name(c) -> str:
    return f"m{c.block_m}n{c.block_n}k{c.block_k}g{c.group_m}w{c.num_warps}s{c.num_stages}"


if __name__ == "__main__":
    main()
