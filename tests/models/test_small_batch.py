"""The fused small-batch decoder layers (atom/layers/small_batch.py) against the usual layer
path, on the CPU with the fused GEMV's torch reference: the same greedy tokens through LLMEngine
for every dense architecture, and the eligibility rules (MoE layers keep their path)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from hf_compare import save_tiny_hf

from atom import LLMEngine, SamplingParams
from atom.layers import small_batch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("small_batch")
    return {
        arch: save_tiny_hf(root / arch, REPO / "models" / arch / "tiny_config.json")
        for arch in ("llama", "qwen3", "glm4_moe", "qwen3_moe")
    }


def engine(folder, **kw):
    return LLMEngine(model=str(folder), num_kv_blocks=64, block_size=4, max_model_len=96, **kw)


def enable_on_cpu(eng, max_tokens: int) -> int:
    """The runner enables the form on GPUs only; tests switch it on directly."""
    return eng.runner.model.enable_small_batch(max_tokens)


@pytest.mark.parametrize(
    "arch, fused_layers", [("llama", "all"), ("qwen3", "all"), ("glm4_moe", 1)]
)
def test_small_batch_form_gives_the_usual_tokens(tiny, arch, fused_layers):
    """fp32 greedy: 3 prompts, chunked prefill (usual form) then decode steps of 1-3 tokens in
    the fused form; GLM-4-MoE fuses only its dense first layer (MoE layers keep their path, so
    the residual stream crosses between the two forms)."""
    rng = random.Random(0)
    vocab = engine(tiny[arch]).model_config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(4, 30))] for _ in range(3)]
    params = [
        SamplingParams(temperature=0, max_tokens=12 + 4 * i, ignore_eos=True) for i in range(3)
    ]
    want = [o["token_ids"] for o in engine(tiny[arch], dtype="float32").generate(prompts, params)]
    fused = engine(tiny[arch], dtype="float32", max_num_batched_tokens=16)
    count = enable_on_cpu(fused, max_tokens=4)
    layers = fused.runner.model.model.layers
    assert count == (len(layers) if fused_layers == "all" else fused_layers)
    got = [o["token_ids"] for o in fused.generate(prompts, params)]
    assert got == want


def test_moe_layers_are_not_eligible(tiny):
    from atom.models.decoder import GatedMLP

    eng = engine(tiny["qwen3_moe"])
    layers = eng.runner.model.model.layers
    dense = [isinstance(layer.mlp, GatedMLP) for layer in layers]
    assert not all(dense)
    assert [small_batch.supports(layer) for layer in layers] == dense
    assert enable_on_cpu(eng, 4) == sum(dense)


def test_forward_matches_the_usual_layer(tiny):
    """One layer, both forms, on the same inputs: (h, None) equals hidden + residual of the
    usual form within fp32 rounding."""
    eng = engine(tiny["llama"], dtype="float32")
    layer = eng.runner.model.model.layers[0]
    torch.manual_seed(0)
    hidden = torch.randn(3, layer.input_layernorm.weight.shape[0])
    residual = torch.randn_like(hidden)
    from atom.forward_context import AttentionMetadata

    meta = AttentionMetadata(
        cu_seqlens_q=torch.tensor([0, 1, 2, 3], dtype=torch.int32),
        seq_lens=torch.tensor([1, 1, 1], dtype=torch.int32),
        block_tables=torch.tensor([[0], [1], [2]], dtype=torch.int32),
        slot_mapping=torch.tensor([0, 4, 8]),
        max_seqlen_q=1,
        max_seqlen_k=1,
        seq_lens_cpu=[1, 1, 1],
        query_lens_cpu=[1, 1, 1],
    )
    positions = torch.zeros(3, dtype=torch.long)
    usual_h, usual_r = layer(positions, hidden.clone(), residual.clone(), meta)
    fused_h, fused_r = small_batch.forward(layer, positions, hidden.clone(), residual.clone(), meta)
    assert fused_r is None
    torch.testing.assert_close(fused_h, usual_h + usual_r, atol=1e-5, rtol=1e-5)


def test_bad_setting_is_rejected(tiny):
    with pytest.raises(ValueError, match="small_batch_tokens=-1"):
        engine(tiny["llama"], small_batch_tokens=-1)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("level", [1, 3])
def test_small_batch_form_on_the_gpu(tiny, arch, level):
    """The Triton fused GEMVs inside the decode graphs (level 1) and the compiled step (level 3):
    fp32 greedy tokens equal plain eager's without the fused form."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    rng = random.Random(1)
    base = engine(tiny[arch], dtype="float32", level=0)
    vocab = base.model_config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(4, 30))] for _ in range(3)]
    params = [
        SamplingParams(temperature=0, max_tokens=12 + 4 * i, ignore_eos=True) for i in range(3)
    ]
    want = [o["token_ids"] for o in base.generate(prompts, params)]
    fused = engine(tiny[arch], dtype="float32", level=level, small_batch_tokens=4)
    assert fused.runner.small_batch_layers == len(fused.runner.model.model.layers)
    assert "failed" not in fused.runner.fast_path, fused.runner.fast_path
    assert [o["token_ids"] for o in fused.generate(prompts, params)] == want
