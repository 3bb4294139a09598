"""benchmark_serving against the real server: result JSON with every metric, --profile traces."""

from __future__ import annotations

import json

from atom.benchmarks import benchmark_serving

LATENCIES = ("ttft", "tpot", "itl", "e2el")


def run_benchmark(server, tmp_path, *extra: str) -> dict:
    argv = [
        "--model", server.model, "--base-url", server.url, "--api-key", server.api_key,
        "--dataset-name", "random", "--random-input-len", "24", "--random-output-len", "6",
        "--num-prompts", "8", "--ignore-eos", "--disable-tqdm", "--save-result",
        "--result-dir", str(tmp_path), "--result-filename", "result.json",
        "--percentile-metrics", ",".join(LATENCIES), "--metric-percentiles", "50,90,99",
        "--goodput", "ttft:600000", "tpot:600000", *extra,
    ]  # fmt: skip
    benchmark_serving.main(argv)
    return json.loads((tmp_path / "result.json").read_text())


def test_result_json_has_every_metric(server, tmp_path):
    result = run_benchmark(server, tmp_path, "--max-concurrency", "4", "--metadata", "run=ci")
    assert result["completed"] == 8 and result["failed"] == 0
    assert result["total_output_tokens"] == 8 * 6  # --ignore-eos: exactly the asked length
    assert result["output_lens"] == [6] * 8
    assert 8 * 20 <= result["total_input_tokens"] <= 8 * 24
    assert result["request_goodput"] == result["request_throughput"] > 0  # generous SLOs
    assert result["output_throughput"] == result["total_output_tokens"] / result["duration"]
    for name in LATENCIES:
        for stat in ("mean", "median", "std", "p50", "p90", "p99"):
            assert result[f"{stat}_{name}_ms"] >= 0, (stat, name)
        assert result[f"p50_{name}_ms"] <= result[f"p99_{name}_ms"]
    assert result["mean_ttft_ms"] < result["mean_e2el_ms"]
    assert all(len(itl) == 5 for itl in result["itls"])  # one gap per later token
    assert result["max_concurrency"] == 4 and result["run"] == "ci"
    assert result["backend"] == "vllm" and result["request_rate"] == "inf"
    assert set(result["errors"]) == {""}


def test_chat_backend_and_request_rate(server, tmp_path):
    result = run_benchmark(server, tmp_path, "--backend", "openai-chat", "--request-rate", "20",
                           "--burstiness", "0.5", "--num-prompts", "4")  # fmt: skip
    assert result["completed"] == 4 and result["total_output_tokens"] == 4 * 6


def test_profile_flag_writes_traces(server, tmp_path):
    before = {p for p in server.profile_dir.rglob("*") if p.is_file()}
    result = run_benchmark(server, tmp_path, "--profile", "--num-prompts", "2")
    assert result["completed"] == 2
    new = {p for p in server.profile_dir.rglob("*") if p.is_file()} - before
    assert new and all("rank_0" in p.parts for p in new)
