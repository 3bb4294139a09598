"""Ahead-of-time compile of the attention kernels for a GPU target, without a GPU.

The CPU interpreter runs kernels as Python and accepts code that the real compiler rejects (for
example a non-constexpr global inside a kernel); this compiles the kernels through Triton's real
pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the bundled ptxas) for the H100 (sm90), with
the argument alignment Triton assumes at launch, and reports each variant's shared memory,
registers and spill bytes. With ``--target gfx942`` it compiles the same sources for the MI300
(AMD's backend ships in the same wheel; fp8 caches are e4m3fnuz there). Used by a CPU test and by
hand when tuning:

    python -m atom.kernels.triton.compile_check [--target sm90|gfx942]   # without TRITON_INTERPRET
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGETS = {"sm90": GPUTarget("cuda", 90, 32), "gfx942": GPUTarget("hip", "gfx942", 64)}


@dataclass
class Variant:
    name: str
    kernel: str  # "unified" | "decode" | "combine"
    dtype: str = "bf16"
    cache: str = "bf16"
    head_dim: int = 128
    group: int = 4
    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    num_splits: int = 1
    window: bool = False
    sinks: bool = False
    scales: bool = False
    keys: str = "cache"  # unified: "cache", "new" (k_new/v_new only) or "new+cache" (a prefix too)
    descriptors: bool = False  # unified: k_new/v_new through TMA descriptors (CUDA targets only)
    l2_prefetch: bool = False  # decode: asks L2 for a weight (CUDA targets only)
    rope: str = (
        ""  # decode: "neox" / "gptj" norm + RoPE + cache write in the kernel; "+norm": QK norm
    )


# The default configs of each path (attention_unified / attention_decode), one per feature.
VARIANTS = [
    Variant("prefill bf16 d128", "unified", block_n=128),
    Variant("prefill bf16 d128 window + sinks", "unified", window=True, sinks=True),
    Variant(
        "prefill fp8 cache + window + sinks",
        "unified",
        cache="fp8e4nv",
        window=True,
        sinks=True,
        scales=True,
    ),  # fmt: skip
    Variant("mixed rows fp16 d64 group 8", "unified", "fp16", "fp16", 64, 8, 16, 64, 4, 3),
    Variant("prefill fp32 d64 group 3", "unified", "fp32", "fp32", 64, 3, 32, 32, 8, 1),
    Variant("prefill bf16 d80", "unified", head_dim=80, block_n=128),
    Variant("prefill bf16 d128, new K/V", "unified", block_n=128, keys="new"),
    Variant(
        "prefill bf16 d128, new K/V by TMA",
        "unified",
        block_m=64,
        block_n=64,
        num_warps=4,
        keys="new",
        descriptors=True,
    ),  # fmt: skip
    Variant(
        "chunked prefill bf16 d128, new K/V by TMA + cache",
        "unified",
        keys="new+cache",
        descriptors=True,
    ),  # fmt: skip
    Variant(
        "prefill bf16 d64 window + sinks, new K/V by TMA",
        "unified",
        head_dim=64,
        keys="new",
        window=True,
        sinks=True,
        descriptors=True,
    ),  # fmt: skip
    Variant("chunked prefill bf16 d128, new K/V + cache", "unified", keys="new+cache"),
    Variant("prefill bf16 d80, new K/V", "unified", head_dim=80, block_n=128, keys="new"),
    Variant(
        "prefill bf16 d256, new K/V", "unified", head_dim=256, block_n=16, num_stages=2, keys="new"
    ),  # fmt: skip
    Variant(
        "chunked prefill bf16 d256, new K/V + cache",
        "unified",
        head_dim=256,
        block_m=64,
        block_n=16,
        num_stages=2,
        keys="new+cache",
    ),  # fmt: skip
    Variant("prefill bf16 d256", "unified", head_dim=256, block_n=32, num_stages=2),
    Variant(
        "prefill bf16 d192 mha (MLA naive)",
        "unified",
        head_dim=192,
        group=1,
        block_n=32,
        num_stages=2,
    ),  # fmt: skip
    Variant("decode bf16 d128", "decode", num_warps=4, num_stages=2),
    Variant(
        "decode bf16 split 8 + window + sinks",
        "decode",
        num_warps=4,
        num_stages=2,
        num_splits=8,
        window=True,
        sinks=True,
    ),  # fmt: skip
    Variant(
        "decode fp8 cache",
        "decode",
        cache="fp8e4nv",
        block_n=128,
        num_warps=4,
        num_stages=2,
        scales=True,
    ),  # fmt: skip
    Variant("decode fp32 d64", "decode", "fp32", "fp32", 64, 3, block_n=16, num_stages=2),
    Variant("decode bf16 d128 + RoPE/cache", "decode", num_warps=4, num_stages=2, rope="neox"),
    Variant(
        "decode bf16 split 8 + RoPE/cache + L2 prefetch",
        "decode",
        num_warps=4,
        num_stages=2,
        num_splits=8,
        rope="neox",
        l2_prefetch=True,
    ),  # fmt: skip
    Variant(
        "decode bf16 split 8 + QK norm/RoPE/cache",
        "decode",
        num_warps=4,
        num_stages=2,
        num_splits=8,
        rope="neox+norm",
    ),  # fmt: skip
    Variant(
        "decode fp8 cache + gpt-j RoPE/cache",
        "decode",
        cache="fp8e4nv",
        block_n=128,
        num_warps=4,
        num_stages=2,
        scales=True,
        rope="gptj",
    ),  # fmt: skip
    Variant(
        "combine bf16 d128 split 8",
        "combine",
        num_warps=4,
        num_stages=1,
        num_splits=8,
        sinks=True,
        scales=True,
    ),  # fmt: skip
]


def _signature(fn, v: Variant, constexprs: dict, target: GPUTarget) -> tuple[dict, dict]:
    cache = "fp8e4b8" if v.cache == "fp8e4nv" and target.backend == "hip" else v.cache
    pointer_types = {
        "q_ptr": v.dtype, "out_ptr": v.dtype, "k_cache_ptr": cache, "v_cache_ptr": cache,
        "k_new_ptr": v.dtype, "v_new_ptr": v.dtype, "positions_ptr": "i64",
        "slot_mapping_ptr": "i64", "cos_sin_ptr": "fp32", "q_norm_w_ptr": v.dtype,
        "k_norm_w_ptr": v.dtype, "l2_prefetch_ptr": v.dtype,
        "part_out_ptr": "fp32", "part_lse_ptr": "fp32", "sinks_ptr": "fp32",
        "k_scale_ptr": "fp32", "v_scale_ptr": "fp32",
    }  # fmt: skip
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_desc"):  # [BLOCK_N, HEAD_DIM] blocks of the new K/V
            signature[name] = f"tensordesc<{v.dtype}[{v.block_n}, {v.head_dim}]>"
        elif name.endswith("_ptr"):
            signature[name] = "*" + pointer_types.get(name, "i32")
        else:
            signature[name] = "fp32" if name in ("softmax_scale", "norm_eps") else "i32"
        # Triton specializes 16-byte aligned pointers and strides divisible by 16 at launch.
        if name.endswith("_ptr") or (name.startswith("stride") and name != "stride_bt_seq"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, attrs


def _kernel_and_constexprs(v: Variant, target: GPUTarget):
    from atom.kernels.triton.attention_decode import _decode_combine_kernel, _decode_split_kernel
    from atom.kernels.triton.attention_unified import _unified_attention_kernel

    d_pad = max(16, triton.next_power_of_2(v.head_dim))
    common = dict(HEAD_DIM=v.head_dim, D_PAD=d_pad, HAS_SINKS=v.sinks, HAS_V_SCALE=v.scales)
    pdl = dict(USE_PDL=target.backend == "cuda")  # the decode kernels launch with PDL on sm90
    precision = dict(DOT_PRECISION="ieee" if v.dtype == "fp32" else "tf32", CPU_BF16=False)
    attention = dict(common, **precision, GROUP=v.group, BLOCK_N=v.block_n, BLOCK_SIZE=16,
                     USE_WINDOW=v.window, HAS_K_SCALE=v.scales)  # fmt: skip
    if v.kernel == "unified":
        return _unified_attention_kernel, dict(
            attention, BLOCK_M=v.block_m, BLOCK_Q=v.block_m // v.group, NUM_KV_HEADS=8,
            USE_NEW_KV=v.keys != "cache", CACHE_KEYS=v.keys != "new",
            NEW_KV_DESCRIPTORS=v.descriptors,
            **({} if v.descriptors else dict(k_new_desc=None, v_new_desc=None)),
        )  # fmt: skip
    if v.kernel == "decode":
        group_pad = max(16, triton.next_power_of_2(v.group))
        rope = {}
        if v.rope:
            rope = dict(ROPE=True, QK_NORM="norm" in v.rope, ROT_DIM=v.head_dim,
                        IS_NEOX=v.rope.startswith("neox"))  # fmt: skip
        return _decode_split_kernel, dict(
            attention, **pdl, **rope, GROUP_PAD=group_pad, SPLIT=v.num_splits > 1,
            L2_PREFETCH=v.l2_prefetch, THREADS=v.num_warps * 32,
        )  # fmt: skip
    splits_pad = triton.next_power_of_2(v.num_splits)
    return _decode_combine_kernel, dict(common, **pdl, SPLITS_PAD=splits_pad, CPU_BF16=False)


def _resource_usage(cubin: bytes) -> dict:
    """Registers and stack (spill) bytes from the bundled cuobjdump, when it is there."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    if not os.path.exists(tool):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                              text=True).stdout  # fmt: skip
    fields = {}
    for line in text.splitlines():
        for item in line.split():
            key, _, value = item.partition(":")
            if key in ("REG", "STACK") and value.isdigit():
                fields[key.lower()] = int(value)
    return fields


def compile_variant(v: Variant, target: GPUTarget = TARGETS["sm90"]) -> dict:
    fn, constexprs = _kernel_and_constexprs(v, target)
    signature, attrs = _signature(fn, v, constexprs, target)
    backend = triton.compiler.make_backend(target)
    options = backend.parse_options(dict(num_warps=v.num_warps, num_stages=v.num_stages))
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                              options=options.__dict__)  # fmt: skip
    usage = _resource_usage(compiled.asm["cubin"]) if target.backend == "cuda" else {}
    return {"shared": compiled.metadata.shared, **usage}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="*", help="variant names to compile (default: all)")
    ap.add_argument("--target", choices=sorted(TARGETS), default="sm90")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter replaces the compiler")
    failures = 0
    for v in VARIANTS:
        if args.only and v.name not in args.only:
            continue
        if (v.descriptors or v.l2_prefetch) and TARGETS[args.target].backend != "cuda":
            continue  # the launcher takes descriptors on sm90+ only, L2 prefetches on CUDA
        try:
            r = compile_variant(v, TARGETS[args.target])
        except Exception as exc:  # report every variant, then fail
            failures += 1
            print(f"FAIL {v.name}: {type(exc).__name__}: {exc}"[:2000])
            continue
        spills = r.get("stack", "?")  # known for NVIDIA targets only
        failures += spills not in (0, "?")
        print(f"{'SPILL' if spills not in (0, '?') else 'ok  '} {v.name:<40} smem {r['shared']:>6} B"
              f"  regs {r.get('reg', '?'):>3}  stack {spills} B")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
