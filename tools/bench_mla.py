"""MLA decode microbenchmark: the Triton kernel vs the memory bound and vs plain torch.

DeepSeek-V3 / Kimi-K2 attention at decode: 128 heads over a latent cache of kv_lora 512 + rope 64
values per token (one shared "KV head"), batch 64, context 4096, bf16, cache block 16. The bytes
that must move are the latent cache read, batch * context * 576 * 2 B (302 MB here); reported as
GB/s of that read and as a fraction of the device copy bandwidth (torch copy of 1 GiB:
(read + write) / time). Note the arithmetic intensity: 2 * 128 heads * (576 + 512) FLOP per
1152 B read = 242 FLOP/B, close to an H100's ridge point (~295 FLOP/B for dense bf16), so the
kernel must also keep the tensor cores busy to approach the bound.

1. Sweeps CANDIDATES (heads per program, rows per step, warps, stages) at the default number of
   splits, then the split counts at the best config.
2. At the defaults: an fp8 cache (half the bytes), batch 1 / 8 / 128, context 16384 at batch 8,
   cache block 64.
3. Baseline "torch": gather the latents into a dense [batch, context, 576] tensor, bmm, fp32
   softmax, bmm (what a framework without a paged MLA kernel does), with its gather included.
Every timed output is checked against the torch reference (atom/kernels/reference/mla.py).
Prints a table (the WINNER line names the best config); JSON to benchmarks/results/ and $OUT.

    python tools/bench_mla.py          # on a GPU: about 1-2 minutes, compiles included
    TRITON_INTERPRET=1 python tools/bench_mla.py --smoke   # tiny shapes: a script check
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
from atom.kernels.reference.mla import mla_decode as reference_mla  # noqa: E402
from atom.kernels.triton.mla_decode import (  # noqa: E402
    MlaDecodeConfig,
    _num_sms,
    default_mla_config,
    mla_decode,
)
from atom.kernels.triton.paged_testing import make_paged_batch  # noqa: E402
from bench_common import (  # noqa: E402
    copy_bandwidth_gbps,
    file_slug,
    kernel_result_header,
    result_paths,
    time_ms,
    write_json,
)

CANDIDATES = [
    MlaDecodeConfig(16, 32, 4, 2), MlaDecodeConfig(16, 64, 4, 2), MlaDecodeConfig(32, 32, 4, 2),
    MlaDecodeConfig(32, 32, 8, 2), MlaDecodeConfig(32, 16, 4, 3), MlaDecodeConfig(32, 64, 8, 2),
    MlaDecodeConfig(64, 32, 8, 2), MlaDecodeConfig(64, 16, 8, 3), MlaDecodeConfig(16, 16, 4, 3),
]  # fmt: skip
FULL = dict(batch=64, context=4096, heads=128, lora=512, rope=64, block=16)
SMOKE = dict(batch=3, context=40, heads=20, lora=32, rope=16, block=16)
# DeepSeek-V3: (qk_nope 128 + rope 64)^-0.5 * mscale(40, 1.0)^2.
SCALE = 192**-0.5 * (0.1 * __import__("math").log(40) + 1) ** 2


def name_of(c: MlaDecodeConfig) -> str:
    return f"h{c.block_h}n{c.block_n}w{c.num_warps}s{c.num_stages}"


def run_timed(label, fn, check, device):
    """(ms, max abs error) of one configuration, or None when it fails to compile or run."""
    try:
        err = check(fn())
        return time_ms(fn, device), err
    except Exception as exc:  # e.g. a config that does not fit this GPU's shared memory
        print(f"{label}: failed: {type(exc).__name__}: {exc}"[:300])
        return None


def torch_dense_mla(q, cache, meta, scale, lora, context):
    """The baseline: gather each sequence's latents densely, then bmm / softmax / bmm."""
    blocks = -(-context // cache.shape[1])
    kv = cache[meta.block_tables[:, :blocks].long()].flatten(1, 2)[:, :context, 0]  # [B, S, L+R]
    scores = torch.bmm(q, kv.transpose(1, 2)).float() * scale  # [B, H, S]
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    return torch.bmm(probs, kv[..., :lora])  # [B, H, L]


def bench(shape, device, copy_bw, cache_dtype=None, batch=None, context=None, block=None,
          sweep=False) -> dict:  # fmt: skip
    batch, context = batch or shape["batch"], context or shape["context"]
    block = block or shape["block"]
    heads, lora, rope = shape["heads"], shape["lora"], shape["rope"]
    b = make_paged_batch([1] * batch, [context] * batch, heads, 1, lora + rope, block,
                         torch.bfloat16, cache_dtype=cache_dtype, spare_blocks=0, device=device)  # fmt: skip
    read_bytes = batch * context * (lora + rope) * b.key_cache.element_size()
    ref = reference_mla(b.q, b.key_cache, b.meta, SCALE, lora, b.k_scale).float()

    def call(cfg, splits):
        return lambda: mla_decode(b.q, b.key_cache, b.meta, SCALE, lora, b.k_scale,
                                  config=cfg, num_splits=splits)  # fmt: skip

    def check(out):
        return (out.float() - ref).abs().max().item()

    default_cfg = default_mla_config(heads, lora)
    runs = {}
    for cfg in CANDIDATES if sweep else [default_cfg]:
        r = run_timed(name_of(cfg), call(cfg, None), check, device)
        if r:
            runs[f"{name_of(cfg)}/splits=default"] = (cfg, *r)
    if not runs:
        sys.exit("every MLA decode config failed")
    best_cfg = min(runs.values(), key=lambda r: r[1])[0]
    for splits in [1, 2, 4, 8, 16] if sweep else []:
        r = run_timed(f"splits={splits}", call(best_cfg, splits), check, device)
        if r:
            runs[f"{name_of(best_cfg)}/splits={splits}"] = (best_cfg, *r)
    per = {k: {"ms": v[1], "GBps": read_bytes / (v[1] * 1e-3) / 1e9, "max_abs_err": v[2]}
           for k, v in runs.items()}  # fmt: skip
    best = min(per, key=lambda k: per[k]["ms"])
    default = f"{name_of(default_cfg)}/splits=default"
    torch_ms = None
    if b.key_cache.dtype == torch.bfloat16:
        dense = run_timed(
            "torch", lambda: torch_dense_mla(b.q, b.key_cache, b.meta, SCALE, lora, context),
            check, device,
        )  # fmt: skip
        torch_ms = dense[0] if dense else None
    return {
        "batch": batch, "context": context, "heads": heads, "kv_lora_rank": lora, "rope": rope,
        "block_size": block, "cache_dtype": str(b.key_cache.dtype), "read_bytes": read_bytes,
        "best": best, "best_ms": per[best]["ms"], "best_GBps": per[best]["GBps"],
        "fraction_of_copy": per[best]["GBps"] / copy_bw, "default": default,
        "default_GBps": per.get(default, {}).get("GBps", float("nan")),
        "torch_ms": torch_ms,
        "speedup_vs_torch": torch_ms / per[best]["ms"] if torch_ms else None,
        "per_config": per,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU interpreter check)")
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results (not in --smoke)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("no GPU: run with --smoke under TRITON_INTERPRET=1 to check the script")
    shape = SMOKE if args.smoke else FULL
    device_name = bench_common.device_name(device, cpu_name="cpu (interpreter)")
    copy_bw = copy_bandwidth_gbps(device, (1 << 30) if device == "cuda" else (1 << 22))
    print(f"{device_name}: {_num_sms(torch.device(device))} SMs, copy bandwidth {copy_bw:.0f} GB/s")

    fp8 = torch.float8_e4m3fnuz if getattr(torch.version, "hip", None) else torch.float8_e4m3fn
    main_row = bench(shape, device, copy_bw, sweep=not args.smoke)
    rows = [
        bench(shape, device, copy_bw, cache_dtype=fp8),
        *(bench(shape, device, copy_bw, batch=n) for n in ([1, 8, 128] if not args.smoke else [1])),
        bench(shape, device, copy_bw, batch=8, context=4 * shape["context"]),
        bench(shape, device, copy_bw, block=64),
    ]

    print(f"\nMLA decode, {shape['heads']} heads, L {shape['lora']} + R {shape['rope']}, bf16 q "
          f"(GB/s of the latent read; copy bandwidth {copy_bw:.0f} GB/s)")  # fmt: skip
    print(f"{'config':<24} {'ms':>8} {'GB/s':>8} {'of copy':>8} {'max err':>9}")
    for name, r in main_row["per_config"].items():
        print(f"{name:<24} {r['ms']:>8.3f} {r['GBps']:>8.0f} {r['GBps'] / copy_bw:>8.0%} "
              f"{r['max_abs_err']:>9.2g}")  # fmt: skip
    print(f"\n{'batch':>5} {'context':>7} {'block':>5} {'cache':<20} {'best':<22} {'ms':>8} "
          f"{'GB/s':>7} {'of copy':>7} {'x torch':>7}")  # fmt: skip
    for r in [main_row, *rows]:
        vs = f"{r['speedup_vs_torch']:.1f}" if r["speedup_vs_torch"] else "-"
        print(f"{r['batch']:>5} {r['context']:>7} {r['block_size']:>5} {r['cache_dtype']:<20} "
              f"{r['best']:<22} {r['best_ms']:>8.3f} {r['best_GBps']:>7.0f} "
              f"{r['fraction_of_copy']:>7.0%} {vs:>7}")  # fmt: skip
    print(f"\nWINNER: {main_row['best']} at batch {main_row['batch']} context "
          f"{main_row['context']}: {main_row['best_GBps']:.0f} GB/s = "
          f"{main_row['fraction_of_copy']:.0%} of copy (default {main_row['default']}: "
          f"{main_row['default_GBps']:.0f} GB/s)")  # fmt: skip

    now = datetime.datetime.now(datetime.timezone.utc)
    result = {
        **kernel_result_header("mla_decode", device_name, now),
        "copy_bandwidth_GBps": copy_bw,
        "shape": shape,
        "softmax_scale": SCALE,
        "candidates": [asdict(c) for c in CANDIDATES],
        "decode": main_row,
        "other": rows,
    }
    name = f"mla_{file_slug(device_name)}_{now.strftime('%Y%m%dT%H%M%S')}.json"
    out_dir = args.out_dir or (None if args.smoke else "benchmarks/results")
    for path in write_json(result, result_paths(name, out_dir)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
