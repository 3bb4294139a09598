"""GPU check of ATOM's LlamaForCausalLM against transformers, on the device machine.

    PYTHONPATH=python python models/llama/check_gpu.py [--quick]

Builds random-weight Llama checkpoints locally (no download): three tiny configs and one of
SmolLM2-135M's exact shape (the GGUF does not travel to the GPU machine). For each, ATOM on CUDA
(whatever kernels atom.kernels picks there) runs a flat prefill batch of awkward lengths, a chunked
prefill and decode steps over the paged cache, and is compared with transformers on CUDA:
max |logit difference| in fp32 and greedy-token agreement over the decode steps, in fp32 and bf16.
A rough decode throughput of the SmolLM2-shaped model (batch 32, eager) is timed too.
Prints a table; writes JSON to benchmarks/results/llama_gpu_check.json and to $OUT if set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

from atom.model_config import ModelConfig  # noqa: E402
from atom.models import build_model  # noqa: E402
from atom.models.testing import PagedRunner  # noqa: E402

TINY = json.loads((REPO / "models" / "llama" / "tiny_config.json").read_text())
SMOLLM2_SHAPE = {
    **TINY,
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}
CASES = {
    "tiny-untied": TINY,
    "tiny-tied-mqa": {**TINY, "tie_word_embeddings": True, "num_key_value_heads": 1},
    "tiny-llama3-rope-bias": {
        **TINY,
        "attention_bias": True,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    },
    "smollm2-shape": SMOLLM2_SHAPE,
}
DTYPES = ("float32", "bfloat16")


def make_checkpoint(name: str, settings: dict, root: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    folder = root / name
    LlamaForCausalLM(LlamaConfig(**settings)).float().save_pretrained(folder)
    return folder


def hf_model(folder: Path, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()


@torch.no_grad()
def compare(
    folder: Path, dtype: torch.dtype, device: str, lengths=(7, 13, 33), decode_steps=8
) -> dict:
    """ATOM vs transformers on ``device``: prefill (one flat batch, one prompt chunked), decodes."""
    config = ModelConfig.from_pretrained(folder, dtype=dtype)
    model = build_model(config, device)
    hf = hf_model(folder, dtype, device)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, config.vocab_size, (n,), generator=g).tolist() for n in lengths]
    runner = PagedRunner(model, block_size=16, num_blocks=64, device=device)

    # Step 1: prompts 0 and 1 whole, prompt 2's first half. Step 2: the rest of prompt 2.
    half = len(seqs[2]) // 2
    first = runner.step([(0, seqs[0]), (1, seqs[1]), (2, seqs[2][:half])])
    second = runner.step([(2, seqs[2][half:])])
    prefill = [first[0], first[1], torch.cat([first[2], second[0]])]
    worst = 0.0
    for seq, logits in zip(seqs, prefill):
        ref = hf(torch.tensor([seq], device=device)).logits[0].float()
        worst = max(worst, (logits - ref).abs().max().item())

    # Greedy decode: ATOM's own tokens; transformers re-scores the same sequences each step.
    agree, total = 0, 0
    last = [logits[-1] for logits in prefill]
    for _ in range(decode_steps):
        tokens = [int(x.argmax()) for x in last]
        for seq, t in zip(seqs, tokens):
            seq.append(t)
        out = runner.step([(i, [t]) for i, t in enumerate(tokens)], num_padding=3)
        last = [o[0] for o in out]
        for seq, ours in zip(seqs, last):
            ref = hf(torch.tensor([seq], device=device)).logits[0, -1].float()
            worst = max(worst, (ours - ref).abs().max().item())
            agree += int(ours.argmax() == ref.argmax())
            total += 1
    return {"max_abs_logit_diff": worst, "greedy_agreement": agree / total}


@torch.no_grad()
def decode_throughput(folder: Path, batch: int = 32, context: int = 128, steps: int = 20) -> dict:
    config = ModelConfig.from_pretrained(folder, dtype=torch.bfloat16)
    model = build_model(config, "cuda")
    runner = PagedRunner(
        model, block_size=16, num_blocks=batch * (context // 16 + 4), device="cuda"
    )
    runner.step([(i, list(range(1, context + 1))) for i in range(batch)])
    for _ in range(3):  # warm-up
        runner.step([(i, [7]) for i in range(batch)])
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        runner.step([(i, [7]) for i in range(batch)])
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {"batch": batch, "step_ms": seconds * 1e3, "tokens_per_s": batch / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny configs only")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("needs a CUDA/ROCm GPU (or --device cpu for a dry run)")
    from atom.kernels.registry import pick

    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    results = {"device": device_name, "torch": torch.__version__, "cases": {}}
    results["paged_attention_backend"] = pick("paged_attention", args.device).__module__
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in CASES.items():
            if args.quick and not name.startswith("tiny"):
                continue
            folder = make_checkpoint(name, settings, Path(tmp))
            case = {d: compare(folder, getattr(torch, d), args.device) for d in DTYPES}
            if name == "smollm2-shape" and args.device == "cuda":
                case["decode_bf16"] = decode_throughput(folder)
            results["cases"][name] = case

    print(
        f"\n{results['device']}  torch {results['torch']}  attention: {results['paged_attention_backend']}"
    )
    print(f"{'case':24} {'dtype':9} {'max|dlogit|':>12} {'greedy agree':>13}")
    for name, case in results["cases"].items():
        for dtype in DTYPES:
            r = case[dtype]
            print(
                f"{name:24} {dtype:9} {r['max_abs_logit_diff']:12.2e} {r['greedy_agreement']:13.2%}"
            )
        if "decode_bf16" in case:
            d = case["decode_bf16"]
            print(
                f"{name:24} decode bf16 batch {d['batch']}: {d['step_ms']:.1f} ms/step, {d['tokens_per_s']:.0f} tok/s"
            )
    text = json.dumps(results, indent=2)
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "llama_gpu_check.json").write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "llama_gpu_check.json").write_text(text)


if __name__ == "__main__":
    main()
