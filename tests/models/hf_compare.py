"""Comparing a tiny random Hugging Face model with ATOM, shared by the per-architecture tests.

    folder = save_tiny_hf(out_dir, REPO / "models/qwen3/tiny_config.json", seed=0, **overrides)
    check_prefill_and_decode(folder)      # ATOM logits over the paged cache == HF logits
    check_engine_greedy(folder)           # LLMEngine greedy tokens == HF greedy tokens

``save_tiny_hf`` builds the transformers model of a config file (plus overrides) in fp32, gives
every bias, norm weight, attention sink and router correction bias seeded random values (HF
initialises them to 0 or 1, which would hide a bias that ATOM forgets to add), and saves it with
safetensors and a tiny word-level tokenizer (the engine loads a tokenizer; prompts are token
lists). The folder is what ATOM loads, exactly as it would load a real checkpoint.

Import it from a test module next to this file (``from hf_compare import ...``: pytest puts the
test's directory on sys.path).
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------- building
def tiny_config(config_file: str | Path, **overrides) -> dict:
    return {**json.loads(Path(config_file).read_text()), **overrides}


def build_tiny_hf(settings: dict, seed: int = 0, extras_std: float = 0.1):
    """The transformers model of ``settings`` (a config dict with model_type), fp32, eval."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(settings)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        tensors = list(model.named_parameters()) + list(model.named_buffers())
        for name, tensor in tensors:
            owner, _, leaf = name.rpartition(".")
            if "inv_freq" in leaf or not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator) * extras_std
            if leaf == "sinks":
                tensor.copy_(noise * 10)  # logits of order 1, comparable to the scores
            elif "bias" in leaf or "norm" in owner.rpartition(".")[2]:
                tensor.add_(noise)
    return model


def save_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer whose token i is "t{i}": enough for the engine's detokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="t0").save_pretrained(folder)


def save_tiny_hf(out_dir: Path, config_file: str | Path, seed: int = 0, **overrides) -> Path:
    """Builds (build_tiny_hf) and saves the model of ``config_file`` + overrides into out_dir."""
    settings = tiny_config(config_file, **overrides)
    model = build_tiny_hf(settings, seed)
    model.save_pretrained(out_dir)
    save_tokenizer(Path(out_dir), settings["vocab_size"])
    return Path(out_dir)


# --------------------------------------------------------------------------------- references
_loaded: dict = {}


def variant_folders(name: str, config_file: str | Path, variants: dict[str, dict]):
    """A module-scoped fixture ``folder``: ``folder(variant)`` is the tiny HF checkpoint of
    ``config_file`` with ``variants[variant]`` overrides, saved once per module."""

    @pytest.fixture(scope="module")
    def folder(tmp_path_factory):
        made: dict[str, Path] = {}

        def get(variant: str) -> Path:
            if variant not in made:
                out = tmp_path_factory.mktemp(f"{name}_{variant}")
                made[variant] = save_tiny_hf(out, config_file, seed=0, **variants[variant])
            return made[variant]

        return get

    return folder


def hf_model(folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The saved model reloaded by transformers (cached per folder, device and dtype)."""
    from transformers import AutoModelForCausalLM

    key = (str(folder), device, dtype)
    if key not in _loaded:
        _loaded[key] = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    return _loaded[key]


def hf_logits(model, tokens: list[int]) -> torch.Tensor:
    """[len(tokens), vocab] fp32 logits of one sequence in one causal forward."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(torch.tensor([tokens], device=device)).logits[0].float()


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation (argmax one token at a time through its own KV cache;
    never stops early)."""
    # transformers >= 5.2x calls the cache argument ``cache``; older releases ``past_key_values``.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    device = next(model.parameters()).device
    tokens = []
    with torch.no_grad():
        out = model(torch.tensor([prompt], device=device), use_cache=True)
        for _ in range(max_new_tokens):
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            step = torch.tensor([[token]], device=device)
            out = model(step, use_cache=True, **{name: getattr(out, name)})
    return tokens


def random_prompts(lengths: list[int], vocab: int, seed: int = 0, shared_prefix: int = 0):
    """Token-list prompts of the given lengths; the first ``shared_prefix`` tokens are common."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, vocab, (shared_prefix,), generator=g).tolist()
    return [
        prefix + torch.randint(0, vocab, (n - shared_prefix,), generator=g).tolist()
        for n in lengths
    ]


# --------------------------------------------------------------------------------- checks
def one_cpu_thread(check):
    """Runs a check with one intra-op thread: these models are tiny, and on a shared 2-core CI
    machine a second OpenMP thread costs more in synchronisation than it saves."""

    @functools.wraps(check)
    def run(*args, **kwargs):
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return check(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return run


def atom_model(folder: Path, device: str = "cpu", dtype: str | None = None):
    from atom.model_config import ModelConfig
    from atom.models import build_model

    return build_model(ModelConfig.from_pretrained(folder, dtype=dtype), device)


@one_cpu_thread
def check_prefill_and_decode(
    folder: Path,
    atol: float = 2e-5,
    device: str = "cpu",
    dtype: str | None = None,
    lengths: tuple[int, ...] = (7, 19, 33),
    block_size: int = 4,
    decode_steps: int = 3,
) -> None:
    """ATOM over the paged cache (PagedRunner: shuffled blocks, NaN-poisoned free slots) against
    transformers on the same folder: a flat batch of two whole prompts and the first chunk of a
    third, then that prompt's second chunk batched with the others' first decode step, then more
    decode steps with batch padding. Every logit row within ``atol`` of HF's full-sequence
    forward."""
    from atom.models.testing import PagedRunner

    torch_dtype = torch.float32 if dtype is None else getattr(torch, dtype)
    model = atom_model(folder, device, dtype)
    hf = hf_model(folder, device, torch_dtype)
    vocab = model.config.vocab_size
    seqs = random_prompts(list(lengths), vocab, seed=1)
    runner = PagedRunner(model, block_size=block_size, num_blocks=128, seed=2, device=device)

    cut = len(seqs[2]) // 2
    first = runner.step([(0, seqs[0]), (1, seqs[1]), (2, seqs[2][:cut])])
    for seq, got in zip(seqs[:2], first):
        torch.testing.assert_close(got, hf_logits(hf, seq), atol=atol, rtol=0)
    torch.testing.assert_close(first[2], hf_logits(hf, seqs[2][:cut]), atol=atol, rtol=0)

    for seq, got in zip(seqs[:2], first):
        seq.append(int(got[-1].argmax()))
    second = runner.step([(0, seqs[0][-1:]), (2, seqs[2][cut:]), (1, seqs[1][-1:])])
    torch.testing.assert_close(second[1], hf_logits(hf, seqs[2])[cut:], atol=atol, rtol=0)
    last = {0: second[0][-1], 1: second[2][-1], 2: second[1][-1]}
    for i in (0, 1):
        torch.testing.assert_close(last[i], hf_logits(hf, seqs[i])[-1], atol=atol, rtol=0)

    for _ in range(decode_steps):
        tokens = {i: int(logits.argmax()) for i, logits in last.items()}
        for i, t in tokens.items():
            seqs[i].append(t)
        out = runner.step([(i, [t]) for i, t in tokens.items()], num_padding=2)
        last = {i: o[-1] for i, o in zip(tokens, out)}
        for i, logits in last.items():
            torch.testing.assert_close(logits, hf_logits(hf, seqs[i])[-1], atol=atol, rtol=0)


def _greedy(max_tokens: int):
    from atom import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def engine_greedy(folder: Path, prompts: list[list[int]], max_tokens: int, **engine_kw):
    """(token lists, engine): ``prompts`` served together by one LLMEngine, greedily."""
    from atom import LLMEngine

    engine_kw.setdefault("cpu_kv_cache_bytes", 8 << 20)
    engine = LLMEngine(model=str(folder), **engine_kw)
    outs = engine.generate(prompts, _greedy(max_tokens))
    return [o["token_ids"] for o in outs], engine


@one_cpu_thread
def check_engine_greedy(
    folder: Path,
    num_prompts: int = 3,
    max_tokens: int = 32,
    shared_prefix: int = 12,
    lengths: tuple[int, ...] = (21, 30, 17, 26),
    device: str = "cpu",
    **engine_kw,
) -> None:
    """``num_prompts`` prompts sharing a ``shared_prefix``-token prefix, served together by
    LLMEngine with small blocks, a small token budget (so prompts are chunked and chunks mix with
    decodes) and prefix caching; then served again (now hitting the prefix cache). Both times the
    greedy tokens equal transformers' for every prompt."""
    hf = hf_model(folder, device)
    vocab = hf.config.get_text_config().vocab_size
    prompts = random_prompts(
        list(lengths[:num_prompts]), vocab, seed=3, shared_prefix=shared_prefix
    )
    expected = [hf_greedy(hf, p, max_tokens) for p in prompts]
    kw = {
        "block_size": 4,
        "max_num_batched_tokens": 16,
        "enable_prefix_caching": True,
        "max_model_len": 128,
        **engine_kw,
    }
    got, engine = engine_greedy(folder, prompts, max_tokens, **kw)
    for i, (ours, ref) in enumerate(zip(got, expected)):
        assert ours == ref, f"prompt {i}: ATOM {ours} != HF {ref}"
    again = engine.generate(prompts, _greedy(max_tokens))
    assert [o["token_ids"] for o in again] == expected
    stats = engine.get_stats()
    assert stats.prefix_cache_hits >= shared_prefix // kw["block_size"] * kw["block_size"]
    assert stats.num_free_blocks == stats.num_total_blocks


# Prompt lengths of the bf16 comparison: 462 positions (all under the tiny configs' 128
# positions). In the MoE models a bf16 rounding that flips a token's expert choice moves that
# token's logits by up to ~2, so the mean error is a rare-event count: over the first 71 positions
# alone, GPT-OSS's mqa-window7 variant measured 0.052 for ATOM and 0.052 for transformers on the
# CPU, but 0.010 for transformers on an H100, where no routing happened to flip.
BF16_PROMPT_LENGTHS = (7, 19, 45, 60, 90, 33, 77, 101, 30)


def bf16_errors(
    folder: Path, device: str = "cuda", lengths=BF16_PROMPT_LENGTHS
) -> dict[str, float]:
    """How far bf16 ATOM and bf16 transformers each are from fp32 transformers on the same
    prompts (a prefill batch and one chunked prompt over the paged cache): mean and max
    |logit error| and the share of positions whose argmax differs from fp32's."""
    from atom.models.testing import PagedRunner

    ref32 = hf_model(folder, device, torch.float32)
    ref16 = hf_model(folder, device, torch.bfloat16)
    model = atom_model(folder, device, "bfloat16")
    seqs = random_prompts(list(lengths), model.config.vocab_size, seed=4)
    runner = PagedRunner(model, block_size=16, num_blocks=64, seed=1, device=device)
    cut = len(seqs[-1]) // 2
    chunked_id = len(seqs)  # the last prompt runs in two chunks, under an id no other one has
    first = runner.step([(i, s) for i, s in enumerate(seqs[:-1])] + [(chunked_id, seqs[-1][:cut])])
    second = runner.step([(chunked_id, seqs[-1][cut:])])
    ours = torch.cat([*first[:-1], first[-1], second[0]]).float()
    exact = torch.cat([hf_logits(ref32, s) for s in seqs])
    theirs = torch.cat([hf_logits(ref16, s) for s in seqs])
    top = exact.argmax(-1)
    return {
        "atom_mean": (ours - exact).abs().mean().item(),
        "hf_mean": (theirs - exact).abs().mean().item(),
        "atom_max": (ours - exact).abs().max().item(),
        "hf_max": (theirs - exact).abs().max().item(),
        "atom_top1_miss": (ours.argmax(-1) != top).float().mean().item(),
        "hf_top1_miss": (theirs.argmax(-1) != top).float().mean().item(),
    }


@one_cpu_thread
def check_bf16_prefill(folder: Path, device: str = "cpu", slack: float = 3.0) -> None:
    """bf16 ATOM is at most ``slack`` times as far from fp32 transformers as bf16
    transformers is, on average over every logit (the tolerance comes from the reference, not a
    guess; the mean, because a routing choice that bf16 flips moves a few tokens' logits a lot,
    in either implementation), and picks fp32's argmax about as often."""
    e = bf16_errors(folder, device)
    assert e["atom_mean"] <= slack * e["hf_mean"] + 1e-4, e
    assert e["atom_top1_miss"] <= e["hf_top1_miss"] + 0.05, e


# --------------------------------------------------------------------------------- on a GPU
# GPU kernels may compute fp32 dot products in TF32 (10-bit mantissa): logits agree to ~1e-3, and
# a greedy choice may differ from transformers' only where HF's own top two logits are this close.
GPU_FP32_ATOL = 2e-3
NEAR_TIE = 5e-3


def assert_greedy_matches(hf, prompt: list[int], ours: list[int], ref: list[int]) -> None:
    """ours == ref, or they first differ where HF itself has a near tie (then both are right)."""
    if ours == ref:
        return
    i = next((k for k, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))
    assert i < min(len(ours), len(ref)), f"lengths differ: {len(ours)} vs {len(ref)}"
    logits = hf_logits(hf, prompt + ours[:i])[-1]
    gap = (logits[ref[i]] - logits[ours[i]]).item()
    assert gap <= NEAR_TIE, f"token {i}: ATOM {ours[i]} vs HF {ref[i]}, HF logit gap {gap}"


def check_engine_greedy_gpu(folder: Path, num_prompts: int = 4, max_tokens: int = 32, **kw):
    """fp32 LLMEngine on CUDA (its default GPU path: CUDA graphs, prefix caching, chunking)
    against fp32 transformers on the same GPU."""
    hf = hf_model(folder, "cuda")
    vocab = hf.config.get_text_config().vocab_size
    lengths = [21, 30, 17, 26, 40, 9][:num_prompts]
    prompts = random_prompts(lengths, vocab, seed=3, shared_prefix=8)
    engine_kw = {
        "dtype": "float32",
        "num_kv_blocks": 256,
        "max_model_len": 128,
        "block_size": 16,
        "enable_prefix_caching": True,
        "max_num_batched_tokens": 32,
        **kw,
    }
    got, engine = engine_greedy(folder, prompts, max_tokens, **engine_kw)
    assert engine.runner.device.type == "cuda"
    for prompt, ours in zip(prompts, got):
        assert_greedy_matches(hf, prompt, ours, hf_greedy(hf, prompt, max_tokens))


def check_on_gpu(folder: Path) -> None:
    """The GPU variant of every check: fp32 logits over the paged cache within TF32 tolerance,
    fp32 greedy tokens through LLMEngine, bf16 against transformers' own bf16 error."""
    check_prefill_and_decode(folder, atol=GPU_FP32_ATOL, device="cuda", block_size=16)
    check_engine_greedy_gpu(folder)
    check_bf16_prefill(folder, "cuda")
