"""ATOM's DeepseekV3ForCausalLM (MLA + MoE) against transformers' on tiny random checkpoints.

Every ATOM step over the paged latent cache (prefill, chunked prefill after a cached prefix, decode,
and decodes mixed with prefill chunks in one flat batch) must give the logits transformers gives
for the same positions of the whole sequence; decode runs the weight-absorbed path, prefill the
up-projected one. Variants: q-LoRA with YaRN (mscale), a Kimi-K2-like config (one expert group, no
q-LoRA, rotate-half RoPE, tied embeddings), and plain RoPE with two dense layers and an MTP layer
in the checkpoint. Then the full LLMEngine: 3 prompts served together, 32 greedy tokens each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from atom.model_config import ModelConfig
from atom.models import build_model

TINY_CONFIG = Path(__file__).resolve().parents[2] / "models" / "deepseek_v3" / "tiny_config.json"
ATOL = 2e-5
YARN = {
    "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
    "original_max_position_embeddings": 64, "mscale": 0.707, "mscale_all_dim": 1.0,
    "beta_fast": 32, "beta_slow": 1,
}  # fmt: skip
VARIANTS = {
    "qlora-yarn": {"rope_parameters": YARN},
    "kimi-like": {
        "q_lora_rank": None,
        "n_group": 1,
        "topk_group": 1,
        "num_attention_heads": 2,
        "rope_interleave": False,
        "tie_word_embeddings": True,
        "routed_scaling_factor": 2.827,
    },  # fmt: skip
    "dense2-mtp": {"first_k_dense_replace": 2, "num_nextn_predict_layers": 1, "v_head_dim": 32},
}


def write_word_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer "w0 w1 ..." over the whole vocabulary (the engine loads one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0").save_pretrained(folder)


def _randomize(model, seed: int) -> None:
    """transformers initialises with std 0.02, unit norms and a zero correction bias: too tame to
    show a mistake. Weights ~ N(0, 0.1^2), norm weights 1 + N(0, 0.1^2), bias ~ N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "norm" in name else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)


def _add_mtp_layer(folder: Path, num_layers: int) -> None:
    """Real DeepSeek-V3 checkpoints carry the MTP module as layer N: add a stand-in tensor."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    weights[f"model.layers.{num_layers}.eh_proj.weight"] = torch.zeros(4, 4)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


_folders: dict[str, Path] = {}
_hf_models: dict[Path, torch.nn.Module] = {}


@pytest.fixture(scope="module")
def make_tiny_deepseek(tmp_path_factory):
    """make_tiny_deepseek(variant) -> folder of a random fp32 HF DeepseekV3ForCausalLM (tiny
    config + the variant's overrides) with a tokenizer. Cached per variant."""

    def make(variant: str = "qlora-yarn") -> Path:
        if variant in _folders:
            return _folders[variant]
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

        settings = {**json.loads(TINY_CONFIG.read_text()), **VARIANTS[variant]}
        torch.manual_seed(0)
        model = DeepseekV3ForCausalLM(DeepseekV3Config(**settings)).float().eval()
        _randomize(model, seed=len(_folders))
        folder = tmp_path_factory.mktemp(f"tiny_deepseek_{variant}")
        model.save_pretrained(folder)
        if settings.get("num_nextn_predict_layers"):
            _add_mtp_layer(folder, settings["num_hidden_layers"])
        write_word_tokenizer(folder, settings["vocab_size"])
        _folders[variant] = folder
        _hf_models[folder] = model
        return folder

    return make


def hf_logits(folder: Path, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return _hf_models[folder](torch.tensor([tokens])).logits[0].float()


def prompts(lengths, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def atom_model(folder: Path):
    return build_model(ModelConfig.from_pretrained(folder), "cpu")


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_then_decode_matches_hf(make_tiny_deepseek, paged_runner, variant, block_size):
    folder = make_tiny_deepseek(variant)
    model = atom_model(folder)
    seqs = prompts([7, 13, 33], model.config.vocab_size)
    runner = paged_runner(model, block_size=block_size, num_blocks=64)

    got = runner.step(list(enumerate(seqs)))  # one flat prefill batch of three prompts
    for seq, logits in zip(seqs, got):
        ref = hf_logits(folder, seq)
        assert ref.std() > 1000 * ATOL  # the tolerance is meaningful
        torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)

    for _ in range(3):  # decode steps (the absorbed path) with batch padding
        nxt = [int(logits[-1].argmax()) for logits in got]
        for seq, token in zip(seqs, nxt):
            seq.append(token)
        got = runner.step([(i, [t]) for i, t in enumerate(nxt)], num_padding=2)
    for seq, logits in zip(seqs, got):
        torch.testing.assert_close(logits[0], hf_logits(folder, seq)[-1], atol=ATOL, rtol=0)


def test_chunked_prefill_mixed_with_decode(make_tiny_deepseek, paged_runner):
    """A prompt split over three steps: its second chunk shares a step with another sequence's
    decode (both paths in one forward), its last chunk is a single token after a long prefix."""
    folder = make_tiny_deepseek("qlora-yarn")
    model = atom_model(folder)
    long, short = prompts([34, 7], model.config.vocab_size, seed=1)
    runner = paged_runner(model, block_size=4, num_blocks=32, seed=3)

    first = runner.step([(0, long[:13]), (1, short)])
    torch.testing.assert_close(first[0], hf_logits(folder, long[:13]), atol=ATOL, rtol=0)
    short.append(int(first[1][-1].argmax()))
    second = runner.step([(1, short[-1:]), (0, long[13:33])], num_padding=1)
    torch.testing.assert_close(second[0][0], hf_logits(folder, short)[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(second[1], hf_logits(folder, long[:33])[13:], atol=ATOL, rtol=0)
    short.append(int(second[0][-1].argmax()))
    third = runner.step([(0, long[33:]), (1, short[-1:])])
    torch.testing.assert_close(third[0][0], hf_logits(folder, long)[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(third[1][0], hf_logits(folder, short)[-1], atol=ATOL, rtol=0)


def test_fp8_latent_cache(make_tiny_deepseek, paged_runner):
    """An fp8 (e4m3) latent cache: the model still tracks transformers' fp32 logits at decode
    (quantization noise only: 3 mantissa bits), through both the prefill and decode paths."""
    folder = make_tiny_deepseek("qlora-yarn")
    model = atom_model(folder)
    runner = paged_runner(model, block_size=4, num_blocks=32, kv_dtype=torch.float8_e4m3fn)
    assert model.attention_layers()[0].kv_cache.dtype == torch.float8_e4m3fn
    seqs = prompts([9, 20], model.config.vocab_size, seed=5)
    got = runner.step(list(enumerate(seqs)))
    for _ in range(2):
        nxt = [int(logits[-1].argmax()) for logits in got]
        for seq, token in zip(seqs, nxt):
            seq.append(token)
        got = runner.step([(i, [t]) for i, t in enumerate(nxt)])
    for seq, logits in zip(seqs, got):
        ref = hf_logits(folder, seq)[-1]
        err = (logits[0] - ref).abs().max().item()
        assert 0 < err < 0.5 * ref.std().item()


def hf_greedy(folder: Path, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation through its own KV cache, never stopping early."""
    import inspect

    model = _hf_models[folder]
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    tokens = []
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        for _ in range(max_new_tokens):
            tokens.append(int(out.logits[0, -1].argmax()))
            out = model(torch.tensor([tokens[-1:]]), use_cache=True, **{name: getattr(out, name)})
    return tokens


@pytest.mark.parametrize("variant", ["qlora-yarn", "kimi-like"])
def test_engine_greedy_matches_hf(make_tiny_deepseek, variant):
    """3 prompts (two sharing a 12-token prefix) served together by LLMEngine with small blocks,
    chunked prefill and prefix caching: 32 greedy tokens each, equal to transformers'. A second
    round in the same engine reads the cached prefixes."""
    from atom import LLMEngine, SamplingParams

    folder = make_tiny_deepseek(variant)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    a, b, c = prompts([12, 9, 21], vocab, seed=2)
    batch = [a + b, c, a + c[:5]]
    engine = LLMEngine(
        model=str(folder), block_size=4, max_num_batched_tokens=16, enable_prefix_caching=True,
        num_kv_blocks=256, max_model_len=128,
    )  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    expected = [hf_greedy(folder, p, 32) for p in batch]
    outs = engine.generate(batch, params)
    assert [o["token_ids"] for o in outs] == expected
    again = engine.generate(batch, params)
    assert [o["token_ids"] for o in again] == expected
    stats = engine.get_stats()
    assert stats.prefix_cache_hits >= 12
    assert stats.num_free_blocks == stats.num_total_blocks

    # The latent cache only: one [blocks, block_size, 1, L + R] tensor per layer, no V cache.
    runner = engine.runner
    for layer, (k, v) in zip(runner.attn_layers, runner.kv_caches):
        assert k.shape == (runner.num_blocks, 4, 1, 16 + 8) and v.numel() == 0
        assert layer.kv_cache is k
    per_block = 3 * 4 * (16 + 8) * 4  # layers * block_size * (L + R) * fp32
    assert runner.bytes_per_block == per_block


def run_and_compare(folder, paged_runner, device, dtype, lengths=(7, 40, 129), steps=4) -> None:
    """Prefill the prompts, decode ``steps`` steps; the last logits vs transformers
    in fp32. fp32: as tight as the CPU test (x10). bf16: at most twice as far from the fp32
    reference as transformers' own bf16 model, plus 1e-3 (DESIGN rule 10 for a model)."""
    from transformers import AutoModelForCausalLM

    config = ModelConfig.from_pretrained(folder, dtype=dtype)
    model = build_model(config, device)
    seqs = prompts(lengths, config.vocab_size, seed=4)
    runner = paged_runner(model, block_size=16, num_blocks=64, device=device)
    got = runner.step(list(enumerate(seqs)))
    for _ in range(steps):
        nxt = [int(logits[-1].argmax()) for logits in got]
        for seq, token in zip(seqs, nxt):
            seq.append(token)
        got = runner.step([(i, [t]) for i, t in enumerate(nxt)], num_padding=3)
    hf_low = None
    if dtype != torch.float32:
        hf_low = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    for seq, logits in zip(seqs, got):
        ref = hf_logits(folder, seq)[-1]
        err = (logits[0].float().cpu() - ref).abs().max().item()
        if hf_low is None:
            assert err <= 10 * ATOL, err
        else:
            with torch.no_grad():
                low = hf_low(torch.tensor([seq])).logits[0, -1].float()
            assert err <= 2 * (low - ref).abs().max().item() + 1e-3, err


def test_bf16_within_transformers_bf16_error(make_tiny_deepseek, paged_runner):
    folder = make_tiny_deepseek("qlora-yarn")
    run_and_compare(folder, paged_runner, "cpu", torch.bfloat16, lengths=(7, 20), steps=2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_matches_hf(make_tiny_deepseek, paged_runner, dtype):
    """On the GPU: Triton MLA decode, cache write, paged attention and fused MoE."""
    run_and_compare(make_tiny_deepseek("qlora-yarn"), paged_runner, "cuda", dtype)
