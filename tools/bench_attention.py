"""Paged-attention microbenchmark: the Triton kernels vs the memory bound and vs torch SDPA.

1. decode: batch 64, context 4096, Hq 32, Hkv 8, head dim 128, bf16, cache block 16, timed as
   CUDA-graph replays (as the engine runs decode) with L2 flushed before each. Reported in GB/s of
   the KV read (batch * context * Hkv * D * 2 B * 2 for K and V) and as a fraction of the device
   copy bandwidth (torch copy of 1 GiB: (read + write) / time). Target >= 80%. Sweeps the
   DECODE_CANDIDATES at the default number of splits, then the split counts at the best config;
   the same for an fp8 cache (half the bytes); other batch sizes at the defaults.
2. prefill: 4096 new tokens, causal, Hq 32, Hkv 8, head dim 128, bf16, read from the paged cache,
   in TFLOP/s (2 * T^2 * D * Hq for the causal half) against torch.nn.functional.
   scaled_dot_product_attention on the same K/V as dense tensors (the faster of: K/V expanded to
   Hq heads, enable_gqa). Target >= 0.8x. Sweeps PREFILL_CANDIDATES twice: "paged" reads every
   key through the block table, "contiguous" reads the new tokens' K/V from k_new/v_new (strided
   views of one buffer, as the attention layer passes them; through TMA descriptors on sm90+
   unless ATOM_ATTN_TMA=0); also a chunked-prefill row (1024 new tokens after 3072 cached) for
   both reads, at the default configs.
Each timed kernel's output is checked against the reference (decode) or SDPA (prefill).
Prints a table (which config wins); writes JSON to benchmarks/results/ and to $OUT when set.

    python tools/bench_attention.py          # on a GPU: about 1-2 minutes, compiles included
    python tools/bench_attention.py --only prefill   # the prefill rows only
    TRITON_INTERPRET=1 python tools/bench_attention.py --smoke   # tiny shapes: a script check
"""

from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common  # noqa: E402
from atom.kernels.reference.attention import gather_kv  # noqa: E402
from atom.kernels.reference.attention import paged_attention as reference_attention  # noqa: E402
from atom.kernels.triton import DecodeConfig, UnifiedConfig, paged_attention  # noqa: E402
from atom.kernels.triton.attention_decode import default_decode_config  # noqa: E402
from atom.kernels.triton.attention_unified import (  # noqa: E402
    default_unified_config,
    descriptors_usable,
)
from atom.kernels.triton.paged_attention import _num_sms  # noqa: E402
from atom.kernels.triton.paged_testing import make_paged_batch, new_kv_views  # noqa: E402
from bench_common import (  # noqa: E402
    copy_bandwidth_gbps,
    file_slug,
    graph_time_ms,
    kernel_result_header,
    result_paths,
    time_ms,
    write_json,
)

# None of these spills registers on sm90 (ptxas, via atom.kernels.triton.compile_check).
DECODE_CANDIDATES = [
    DecodeConfig(64, 4, 2), DecodeConfig(64, 4, 3), DecodeConfig(32, 4, 4), DecodeConfig(128, 4, 2),
    DecodeConfig(128, 4, 3), DecodeConfig(128, 8, 2), DecodeConfig(64, 8, 2), DecodeConfig(32, 4, 2),
]  # fmt: skip
DECODE_FP8_CANDIDATES = [
    DecodeConfig(128, 4, 2), DecodeConfig(64, 4, 2), DecodeConfig(128, 8, 2), DecodeConfig(128, 4, 3),
]  # fmt: skip
PREFILL_CANDIDATES = [  # m64n64w4s3 is the default with TMA-fed K/V (contiguous, sm90+)
    UnifiedConfig(128, 128, 8, 3), UnifiedConfig(128, 128, 8, 4), UnifiedConfig(128, 128, 8, 2),
    UnifiedConfig(128, 64, 8, 3), UnifiedConfig(128, 64, 8, 2), UnifiedConfig(64, 64, 4, 3),
    UnifiedConfig(128, 32, 8, 4), UnifiedConfig(128, 64, 8, 4), UnifiedConfig(64, 64, 4, 4),
]  # fmt: skip
# The contiguous read at m128 n128 w8 s4 needs 288 KiB of shared memory (fails to launch, reported
# as failed); with a cached prefix, its 128-key steps spill 128 B (compile_check).
PREFILL_READS = ("paged", "contiguous")
FULL = dict(batch=64, context=4096, prefill=4096, heads=32, kv_heads=8, head_dim=128, block=16)
SMOKE = dict(batch=3, context=40, prefill=48, heads=4, kv_heads=2, head_dim=32, block=16)


def time_graph_ms(fn, device: str, reps: int = 30) -> float:
    """Median milliseconds of fn replayed as a CUDA graph (how decode runs in the engine: no host
    launch overhead), with L2 flushed before each replay so small batches are not L2-resident."""
    if device != "cuda":
        return time_ms(fn, device)
    return graph_time_ms([fn], reps, flush_bytes=256 << 20)


def decode_name(c: DecodeConfig) -> str:
    return f"n{c.block_n}w{c.num_warps}s{c.num_stages}"


def prefill_name(c: UnifiedConfig) -> str:
    return f"m{c.block_m}n{c.block_n}w{c.num_warps}s{c.num_stages}"


def run_timed(label, fn, check, device, timer=time_ms):
    """(ms, max abs error) of one kernel configuration, or None when it fails to compile/run."""
    try:
        err = check(fn())
        return timer(fn, device), err
    except Exception as exc:  # e.g. a config that does not fit this GPU's shared memory
        print(f"{label}: failed: {type(exc).__name__}: {exc}"[:300])
        return None


def bench_decode(
    shape, device, copy_bw, cache_dtype=None, batch=None, sweep=True, split_sweep=(1, 2, 4, 8, 16)
) -> dict:
    """Decode attention of ``batch`` sequences at the full context, timed as CUDA-graph replays."""
    batch = batch or shape["batch"]
    h, hkv, d, ctx = shape["heads"], shape["kv_heads"], shape["head_dim"], shape["context"]
    b = make_paged_batch([1] * batch, [ctx] * batch, h, hkv, d, shape["block"], torch.bfloat16,
                         cache_dtype=cache_dtype, spare_blocks=0, device=device)  # fmt: skip
    scale = d**-0.5
    fp8 = b.key_cache.element_size() == 1
    kv_bytes = 2 * batch * ctx * hkv * d * b.key_cache.element_size()
    ref = reference_attention(b.q, b.key_cache, b.value_cache, b.meta, scale,
                              k_scale=b.k_scale, v_scale=b.v_scale).float()  # fmt: skip
    out = torch.empty_like(b.q)

    def call(cfg, splits):
        return lambda: paged_attention(b.q, b.key_cache, b.value_cache, b.meta, scale,
                                       k_scale=b.k_scale, v_scale=b.v_scale, out=out,
                                       decode_config=cfg, num_splits=splits)  # fmt: skip

    def check(result):
        return (result.float() - ref).abs().max().item()

    d_pad = max(16, 1 << (d - 1).bit_length())
    default_cfg = default_decode_config(d_pad, torch.bfloat16, fp8)
    candidates = (DECODE_FP8_CANDIDATES if fp8 else DECODE_CANDIDATES) if sweep else [default_cfg]
    runs = {}
    for cfg in candidates:
        r = run_timed(decode_name(cfg), call(cfg, None), check, device, time_graph_ms)
        if r:
            runs[f"{decode_name(cfg)}/splits=default"] = (cfg, None, *r)
    if not runs:
        sys.exit("every decode config failed")
    best_cfg = min(runs.values(), key=lambda r: r[2])[0]
    for splits in split_sweep:
        r = run_timed(f"splits={splits}", call(best_cfg, splits), check, device, time_graph_ms)
        if r:
            runs[f"{decode_name(best_cfg)}/splits={splits}"] = (best_cfg, splits, *r)
    best = min(runs, key=lambda k: runs[k][2])
    default = f"{decode_name(default_cfg)}/splits=default"
    per = {k: {"ms": v[2], "GBps": kv_bytes / (v[2] * 1e-3) / 1e9, "max_abs_err": v[3]}
           for k, v in runs.items()}  # fmt: skip
    return {
        "batch": batch, "context": ctx, "heads": h, "kv_heads": hkv, "head_dim": d,
        "cache_dtype": str(b.key_cache.dtype), "kv_bytes": kv_bytes, "timing": "cuda graph",
        "best": best, "best_GBps": per[best]["GBps"],
        "fraction_of_copy": per[best]["GBps"] / copy_bw,
        "default": default, "default_GBps": per.get(default, {}).get("GBps", float("nan")),
        "default_fraction_of_copy": per.get(default, {}).get("GBps", float("nan")) / copy_bw,
        "per_config": per,
    }  # fmt: skip


def bench_prefill(shape, device, new_tokens, prefix, sweep=True) -> dict:
    h, hkv, d = shape["heads"], shape["kv_heads"], shape["head_dim"]
    total = new_tokens + prefix
    b = make_paged_batch([new_tokens], [total], h, hkv, d, shape["block"], torch.bfloat16,
                         spare_blocks=0, device=device)  # fmt: skip
    scale = d**-0.5
    # SDPA on the same K/V as dense [1, heads, S, D] tensors; its causal mask is top-left
    # aligned, so with a prefix use an explicit bottom-right boolean mask.
    k = gather_kv(b.key_cache, b.meta.block_tables[0], total, None).to(torch.bfloat16)
    v = gather_kv(b.value_cache, b.meta.block_tables[0], total, None).to(torch.bfloat16)
    q4 = b.q.transpose(0, 1).unsqueeze(0)
    k4, v4 = k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0)
    k4x = k4.repeat_interleave(h // hkv, 1).contiguous()
    v4x = v4.repeat_interleave(h // hkv, 1).contiguous()
    mask = None
    if prefix:
        pos_q = torch.arange(prefix, total, device=device)[:, None]
        mask = torch.arange(total, device=device)[None, :] <= pos_q
    sdpa_kw = dict(attn_mask=mask, is_causal=mask is None, scale=scale)
    sdpa_runs = {
        "expanded": lambda: F.scaled_dot_product_attention(q4, k4x, v4x, **sdpa_kw),
        "enable_gqa": lambda: F.scaled_dot_product_attention(q4, k4, v4, enable_gqa=True, **sdpa_kw),
    }  # fmt: skip
    expected = sdpa_runs["expanded"]()[0].transpose(0, 1).float()
    sdpa_ms = {}
    for name, fn in sdpa_runs.items():
        r = run_timed(f"sdpa {name}", fn, lambda out: 0.0, device)
        if r:
            sdpa_ms[name] = r[0]
    sdpa_best = min(sdpa_ms, key=sdpa_ms.get)
    k_new, v_new, _ = new_kv_views(b)

    def call(cfg, read):
        new_kv = {}
        if read == "contiguous":  # both sources when there is a prefix (not the default)
            new_kv = dict(k_new=k_new, v_new=v_new, new_kv_with_prefix=True)
        return lambda: paged_attention(b.q, b.key_cache, b.value_cache, b.meta, scale,
                                       unified_config=cfg, **new_kv)  # fmt: skip

    def check(out):
        return (out.float() - expected).abs().max().item()

    d_pad = max(16, 1 << (d - 1).bit_length())
    flops = 4 * new_tokens * (prefix + (new_tokens + 1) / 2) * d * h  # visible (q, k) pairs
    result = {
        "new_tokens": new_tokens, "prefix": prefix, "heads": h, "kv_heads": hkv, "head_dim": d,
        "sdpa_ms": sdpa_ms, "sdpa_variant": sdpa_best,
        "sdpa_tflops": flops / (sdpa_ms[sdpa_best] * 1e-3) / 1e12,
    }  # fmt: skip
    for read in PREFILL_READS:
        two_sources = read == "contiguous" and prefix > 0
        tma = read == "contiguous" and not prefix and descriptors_usable(k_new, v_new, d_pad)
        default_cfg = default_unified_config(new_tokens, h // hkv, d_pad, torch.bfloat16,
                                             two_sources=two_sources, new_kv=read == "contiguous",
                                             descriptors=tma)  # fmt: skip
        default = prefill_name(default_cfg)
        runs = {}
        for cfg in PREFILL_CANDIDATES if sweep else [default_cfg]:
            r = run_timed(f"{read} {prefill_name(cfg)}", call(cfg, read), check, device)
            if r:
                runs[prefill_name(cfg)] = r
        if not runs:
            sys.exit(f"every prefill config failed ({read} read)")
        best = min(runs, key=lambda k: runs[k][0])
        default_ms = runs[default][0] if default in runs else float("nan")
        result[read] = {
            "best": best, "best_ms": runs[best][0],
            "best_tflops": flops / (runs[best][0] * 1e-3) / 1e12,
            "ratio_vs_sdpa": sdpa_ms[sdpa_best] / runs[best][0],
            "default": default, "default_ratio_vs_sdpa": sdpa_ms[sdpa_best] / default_ms,
            "per_config": {k: {"ms": ms, "tflops": flops / (ms * 1e-3) / 1e12, "max_abs_err": e}
                           for k, (ms, e) in runs.items()},
        }  # fmt: skip
    return result


def run_decode(shape, device, copy_bw, fp8, sweep) -> dict:
    decode = bench_decode(
        shape, device, copy_bw, sweep=sweep, split_sweep=(1, 2, 4, 8) if sweep else ()
    )
    decode_fp8 = bench_decode(shape, device, copy_bw, cache_dtype=fp8, sweep=sweep,
                              split_sweep=(1, 2, 4) if sweep else ())  # fmt: skip
    # Small batches: the default config, and the split counts around the default heuristic.
    other_batches = [bench_decode(shape, device, copy_bw, batch=n, sweep=False,
                                  split_sweep=splits if sweep else ())
                     for n, splits in ([(1, (8, 16, 32, 64)), (8, (4, 8, 16)), (256, ())]
                                       if sweep else [(1, ())])]  # fmt: skip
    print(
        "\ndecode (CUDA-graph replays; GB/s of the KV read; copy bandwidth", f"{copy_bw:.0f} GB/s)"
    )
    print(f"{'batch cache config':<42} {'ms':>8} {'GB/s':>8} {'of copy':>8} {'max err':>9}")
    for row in [decode, decode_fp8, *other_batches]:
        for name, r in row["per_config"].items():
            label = f"{row['batch']:>3} {row['cache_dtype'].replace('torch.', '')} {name}"
            print(f"{label:<42} {r['ms']:>8.3f} {r['GBps']:>8.0f} {r['GBps'] / copy_bw:>8.0%} "
                  f"{r['max_abs_err']:>9.2g}")  # fmt: skip
    for row in [decode, decode_fp8, *other_batches]:
        print(f"batch {row['batch']:>3} ctx {row['context']} {row['cache_dtype']:<20} default "
              f"{row['default']}: {row['default_fraction_of_copy']:.0%} of copy; best "
              f"{row['best']}: {row['best_GBps']:.0f} GB/s = {row['fraction_of_copy']:.0%}")  # fmt: skip
    print(f"WINNERS: decode {decode['best']} ({decode['fraction_of_copy']:.0%} of copy; target "
          f">= 80%; default {decode['default_fraction_of_copy']:.0%}), fp8 decode "
          f"{decode_fp8['best']} ({decode_fp8['fraction_of_copy']:.0%})")  # fmt: skip
    return {"decode": decode, "decode_fp8": decode_fp8, "decode_other_batches": other_batches}


def run_prefill(shape, device, sweep) -> dict:
    prefill = bench_prefill(shape, device, shape["prefill"], 0, sweep=sweep)
    chunked = bench_prefill(shape, device, shape["prefill"] // 4, 3 * shape["prefill"] // 4,
                            sweep=False)  # fmt: skip
    sdpa_ms = prefill["sdpa_ms"][prefill["sdpa_variant"]]
    print("\nprefill (TFLOP/s over visible pairs)")
    print(f"{'read':<11} {'config':<16} {'ms':>8} {'TFLOP/s':>8} {'x SDPA':>7} {'max err':>9}")
    for read in PREFILL_READS:
        for name, r in prefill[read]["per_config"].items():
            print(f"{read:<11} {name:<16} {r['ms']:>8.3f} {r['tflops']:>8.1f} "
                  f"{sdpa_ms / r['ms']:>7.2f} {r['max_abs_err']:>9.2g}")  # fmt: skip
    for row in [prefill, chunked]:
        for read in PREFILL_READS:
            r = row[read]
            print(f"{row['new_tokens']} new + {row['prefix']} cached, {read} read: SDPA "
                  f"({row['sdpa_variant']}) {row['sdpa_tflops']:.0f} TFLOP/s, triton {r['best']} "
                  f"{r['best_tflops']:.0f} TFLOP/s = {r['ratio_vs_sdpa']:.2f}x SDPA")  # fmt: skip
    for read in PREFILL_READS:
        r = prefill[read]
        print(f"WINNERS: prefill, {read} read: {r['best']} ({r['ratio_vs_sdpa']:.2f}x SDPA; target "
              f">= 0.8x; default {r['default']} {r['default_ratio_vs_sdpa']:.2f}x)")  # fmt: skip
    return {"prefill": prefill, "chunked_prefill": chunked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU interpreter check)")
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results (not in --smoke)")
    ap.add_argument("--only", choices=("decode", "prefill"), help="run one section")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("no GPU: run with --smoke under TRITON_INTERPRET=1 to check the script")
    shape = SMOKE if args.smoke else FULL
    sweep = not args.smoke
    device_name = bench_common.device_name(device, cpu_name="cpu (interpreter)")
    copy_bw = copy_bandwidth_gbps(device, (1 << 30) if device == "cuda" else (1 << 22))
    print(f"{device_name}: {_num_sms(torch.device(device))} SMs, copy bandwidth {copy_bw:.0f} GB/s")

    fp8 = torch.float8_e4m3fnuz if getattr(torch.version, "hip", None) else torch.float8_e4m3fn
    result = {}
    if args.only != "prefill":
        result.update(run_decode(shape, device, copy_bw, fp8, sweep))
    if args.only != "decode":
        result.update(run_prefill(shape, device, sweep))

    now = datetime.datetime.now(datetime.timezone.utc)
    result = {
        **kernel_result_header("paged_attention", device_name, now),
        "copy_bandwidth_GBps": copy_bw,
        "shape": shape,
        "decode_candidates": [asdict(c) for c in DECODE_CANDIDATES],
        "prefill_candidates": [asdict(c) for c in PREFILL_CANDIDATES],
        **result,
    }
    name = f"attention_{file_slug(device_name)}_{now.strftime('%Y%m%dT%H%M%S')}.json"
    out_dir = args.out_dir or (None if args.smoke else "benchmarks/results")
    for path in write_json(result, result_paths(name, out_dir)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
