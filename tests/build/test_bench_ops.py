"""tools/bench_ops.py runs end to end (tiny shapes on the CPU) and reports every op with the
fields the GPU run is judged on."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("atom.kernels.native", reason="atom._C is not built")

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench_ops.py"


def test_bench_ops_quick_cpu(capsys):
    spec = importlib.util.spec_from_file_location("bench_ops", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_ops"] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    argv = ["--quick", "--device", "cpu", "--no-compile", "--no-save", "--iters", "2"]
    report = bench.main(argv + ["--warmup", "1"])
    ops = {r["op"] for r in report["results"]}
    assert ops == {
        "rms_norm", "fused_add_rms_norm", "silu_and_mul", "rotary_embedding",
        "reshape_and_cache", "fused_qk_norm_rope_cache",
    }  # fmt: skip
    for r in report["results"]:
        assert r["native_gbps"] > 0 and r["copy_gbps"] > 0 and r["speedup_vs_eager"] > 0
    assert {c["check"].split(" [")[0] for c in report["targets"]} == {
        "rms_norm",
        "fused_add_rms_norm",
        "fused_qk_norm_rope_cache",
    }
    assert "fused_qk_norm_rope_cache" in capsys.readouterr().out
