"""The examples run end to end on the CPU: simple_inference on the embedded SmolLM2 (as the README
runs it, through ``python -m``), profile_offline on a tiny model with a trace written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_simple_inference_module_on_the_embedded_model():
    env = dict(os.environ, OMP_NUM_THREADS="1")  # many tiny ops: one thread is faster on 2 cores
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "python"), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "atom.examples.simple_inference", "--max-tokens", "8",
         "--max_model_len", "512", "--temperature", "0"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("Completion: ") == 4
    assert "用三句话介绍一下长城" in out
    assert "MTP Statistics" in out and "tokens/s" in out


def test_profile_offline_writes_a_trace(make_tiny_llama, tmp_path):
    from atom.examples import profile_offline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_tiny_llama(seed=0, tokenizer=True)
        result = profile_offline.main(
            ["--model", str(model), "--input-length", "20", "--output-length", "5", "--bs", "3",
             "--random-input", "--torch-profiler-dir", str(tmp_path), "--num-kv-blocks", "64"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert result["trace_dir"] == str(tmp_path / "rank_0")
    assert any(f.endswith(".pt.trace.json.gz") for f in os.listdir(result["trace_dir"]))
    outs = result["outputs"]
    assert len(outs) == 3 and all(o["num_tokens_output"] == 5 for o in outs)
    assert all(o["num_tokens_input"] == 20 for o in outs)
    assert (
        outs[0]["token_ids"] == outs[1]["token_ids"] == outs[2]["token_ids"]
    )  # greedy, same prompt


def test_profile_offline_defaults_and_default_trace_dir(make_tiny_llama, tmp_path, monkeypatch):
    from atom.examples import profile_offline

    args = profile_offline.build_parser().parse_args([])
    assert (args.input_length, args.output_length, args.bs, args.random_input) == (
        128,
        32,
        1,
        False,
    )
    monkeypatch.delenv("ATOM_TORCH_PROFILER_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    model = make_tiny_llama(seed=0, tokenizer=True)
    result = profile_offline.main(
        [
            "--model",
            str(model),
            "--input-length",
            "30",
            "--output-length",
            "2",
            "--num-kv-blocks",
            "64",
        ]
    )
    assert (
        Path(result["trace_dir"]).resolve() == (tmp_path / "profiler_traces" / "rank_0").resolve()
    )
    assert os.listdir(result["trace_dir"])
    assert result["outputs"][0]["num_tokens_input"] == 30  # the fixed text, cut to length
