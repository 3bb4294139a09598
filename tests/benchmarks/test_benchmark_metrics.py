"""Aggregation of client timings into the benchmark's metrics, against hand-computed values."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from atom.benchmarks.backend_request_func import RequestFuncOutput
from atom.benchmarks.benchmark_dataset import SampleRequest
from atom.benchmarks.benchmark_metrics import calculate_metrics, parse_goodput
from atom.benchmarks.benchmark_utils import convert_to_pytorch_benchmark_format, write_to_json


class CountingTokenizer:
    """Counts whitespace-separated words: enough to check where token counts come from."""

    def encode(self, text, add_special_tokens=False):
        return text.split()


def outputs():
    ok1 = RequestFuncOutput(generated_text="a b c d e", success=True, latency=1.0, ttft=0.2,
                            itl=[0.2, 0.2, 0.2, 0.2], prompt_len=10, output_tokens=5)  # fmt: skip
    # No usage from the server: the text's tokens are counted.
    ok2 = RequestFuncOutput(generated_text="x y z", success=True, latency=0.5, ttft=0.1,
                            itl=[0.1, 0.3], prompt_len=20)  # fmt: skip
    one = RequestFuncOutput(generated_text="q", success=True, latency=0.3, ttft=0.3, itl=[],
                            prompt_len=7, output_tokens=1)  # fmt: skip
    failed = RequestFuncOutput(success=False, error="HTTP 500", prompt_len=99)
    requests = [SampleRequest("p", o.prompt_len, 5) for o in (ok1, ok2, one, failed)]
    return requests, [ok1, ok2, one, failed]


def test_metrics_by_hand():
    requests, outs = outputs()
    m, lens = calculate_metrics(requests, outs, 2.0, CountingTokenizer(), [50, 99],
                                {"ttft": 250.0, "tpot": 250.0})  # fmt: skip
    assert lens == [5, 3, 1, 0]
    assert (m.completed, m.failed, m.total_input, m.total_output) == (3, 1, 37, 9)
    assert m.request_throughput == pytest.approx(1.5)
    assert m.output_throughput == pytest.approx(4.5)
    assert m.total_token_throughput == pytest.approx(23.0)
    # TPOTs: (1.0-0.2)/4 = 0.2 and (0.5-0.1)/2 = 0.2; the 1-token request has none.
    assert m.latency["tpot"].mean_ms == pytest.approx(200.0)
    assert m.latency["ttft"].mean_ms == pytest.approx(200.0)
    itl = np.array([0.2, 0.2, 0.2, 0.2, 0.1, 0.3]) * 1000
    assert m.latency["itl"].median_ms == pytest.approx(np.median(itl))
    assert m.latency["itl"].std_ms == pytest.approx(itl.std())
    assert m.latency["e2el"].percentiles_ms[1] == (
        99,
        pytest.approx(np.percentile([1000, 500, 300], 99)),
    )
    # Goodput: ttft <= 250 ms and tpot <= 250 ms holds for ok1 (200, 200), ok2 (100, 200) and the
    # one-token request (300 ms TTFT fails).
    assert m.request_goodput == pytest.approx(2 / 2.0)
    flat = m.flat()
    assert set(flat) >= {"mean_ttft_ms", "p50_itl_ms", "p99_e2el_ms", "std_tpot_ms"}


def test_goodput_parsing():
    assert parse_goodput(["ttft:100", "e2el:2000.5"]) == {"ttft": 100.0, "e2el": 2000.5}
    for bad in (["ttft"], ["foo:1"], ["tpot:x"], ["ttft:-3"]):
        with pytest.raises(ValueError, match="--goodput"):
            parse_goodput(bad)


def test_pytorch_format(tmp_path, monkeypatch):
    args = argparse.Namespace(model="m", request_rate=float("inf"))
    metrics = {"output_throughput": [12.5], "mean_ttft_ms": [3.0]}
    monkeypatch.delenv("SAVE_TO_PYTORCH_BENCHMARK_FORMAT", raising=False)
    assert convert_to_pytorch_benchmark_format(args, metrics, {"k": 1}) == []
    monkeypatch.setenv("SAVE_TO_PYTORCH_BENCHMARK_FORMAT", "1")
    records = convert_to_pytorch_benchmark_format(args, metrics, {"k": 1})
    assert [r["metric"]["name"] for r in records] == ["output_throughput", "mean_ttft_ms"]
    assert records[0]["model"]["name"] == "m"
    assert records[0]["metric"]["benchmark_values"] == [12.5]
    assert records[0]["benchmark"]["extra_info"]["args"]["request_rate"] == "inf"
    path = tmp_path / "sub" / "out.json"
    write_to_json(path, records)
    assert json.loads(path.read_text()) == records
    with pytest.raises(ValueError, match="must be a list"):
        convert_to_pytorch_benchmark_format(args, {"x": 1.0}, {})
