"""The decode fast path on a GPU (run on the device machine): graph replay against the eager step
on the same inputs, every level against plain eager through LLMEngine, every architecture's tiny
model through graphs + torch.compile, one host-device synchronization per decode step, and the
fallback when a capture is impossible."""

from __future__ import annotations

import random
import sys
import warnings
from pathlib import Path

import pytest
import torch

from atom import LLMEngine, SamplingParams
from atom.engine.cuda_graph import DecodeBatch

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "models"))  # hf_compare: the tiny-model builder

ARCHS = ["llama", "qwen3", "qwen3_moe", "glm4_moe", "gpt_oss", "deepseek_v3"]
# A greedy token may differ between two fp32 paths only where the top two logits are this close
# (padded and unpadded GEMMs may round differently).
NEAR_TIE = 1e-3


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from hf_compare import save_tiny_hf

    root = tmp_path_factory.mktemp("fastpath_models")
    return {a: save_tiny_hf(root / a, REPO / "models" / a / "tiny_config.json") for a in ARCHS}


def engine(folder, **kw) -> LLMEngine:
    kw = {"num_kv_blocks": 256, "block_size": 16, "max_model_len": 128, **kw}
    return LLMEngine(model=str(folder), **kw)


def random_prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(5, 40))] for _ in range(n)]


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


def random_decode_batch(runner, n: int, seed: int) -> DecodeBatch:
    """n sequences of random lengths over random distinct blocks (the cache is random too)."""
    rng = random.Random(seed)
    bs = runner.block_size
    blocks = list(range(runner.num_blocks))
    rng.shuffle(blocks)
    ids, positions, slots, lens, tables = [], [], [], [], []
    for _ in range(n):
        length = rng.randint(1, runner.config.max_model_len)
        table = [blocks.pop() for _ in range(-(-length // bs))]
        p = length - 1
        ids.append(rng.randrange(runner.model_config.vocab_size))
        positions.append(p)
        slots.append(table[p // bs] * bs + p % bs)
        lens.append(length)
        tables.append(table)
    return DecodeBatch(ids, positions, slots, lens, tables)


@pytest.mark.parametrize("level, dtype", [(1, "bfloat16"), (1, "float32"), (3, "bfloat16")])
def test_replay_equals_the_same_step_run_eagerly(tiny_models, level, dtype):
    """Bit-for-bit: a replay computes what the captured function computes on the same buffers
    (no stale capture-time value, no missing input copy), across sizes and new contents."""
    eng = engine(tiny_models["llama"], dtype=dtype, level=level, cudagraph_capture_sizes=(1, 4, 8))
    runner = eng.runner
    graphs = runner.decode_graphs
    assert graphs is not None and graphs.use_graphs, runner.fast_path
    for k, v in runner.kv_caches:
        k.normal_()
        v.normal_()
    for seed, n in enumerate([1, 3, 8, 5, 2]):
        batch = random_decode_batch(runner, n, seed)
        logits, ids = graphs.run(batch)
        logits, ids = logits.clone(), ids.clone()
        size = graphs.size_for(n)
        with torch.inference_mode():
            ref_logits, ref_ids = graphs.forward(
                graphs.input_ids[:size], graphs.positions[:size], graphs.metadata(size)
            )
        assert torch.equal(logits, ref_logits[:n]), f"n={n}"
        assert torch.equal(ids, ref_ids[:n])
        assert torch.equal(ids, logits.argmax(dim=-1))


def _check_same_greedy(got: list[list[int]], want: list[list[int]], ref_engine, prompts):
    for prompt, ours, ref in zip(prompts, got, want):
        if ours == ref:
            continue
        i = next(k for k, (a, b) in enumerate(zip(ours, ref)) if a != b)
        out = ref_engine.generate([prompt + ref[:i]], greedy(1, logprobs=2))[0]
        top = sorted(out["logprobs"][0].values(), reverse=True)
        assert top[0] - top[1] < NEAR_TIE, f"token {i}: {ours[i]} vs {ref[i]} (no near-tie)"


@pytest.mark.parametrize("level", [1, 2, 3])
def test_levels_give_the_eager_tokens(tiny_models, level):
    """fp32 greedy through LLMEngine: 4 prompts (a capture size: no padding) and 5 (padded to
    8) with different lengths, so batches shrink through sizes as requests finish."""
    folder = tiny_models["llama"]
    base = engine(folder, dtype="float32", level=0)
    assert base.runner.fast_path == "eager"
    fast = engine(folder, dtype="float32", level=level)
    assert "failed" not in fast.runner.fast_path, fast.runner.fast_path
    for n in (4, 5):
        prompts = random_prompts(n, base.model_config.vocab_size, seed=n)
        params = [greedy(8 + 5 * i) for i in range(n)]
        want = [o["token_ids"] for o in base.generate(prompts, params)]
        got = [o["token_ids"] for o in fast.generate(prompts, params)]
        _check_same_greedy(got, want, base, prompts)


@pytest.mark.parametrize(
    "arch, level",
    [("qwen3", 1), ("qwen3_moe", 3), ("glm4_moe", 1), ("gpt_oss", 3), ("deepseek_v3", 3)],
)
def test_every_architecture_through_graphs(tiny_models, arch, level):
    """Each model family captures (no fallback) and its fp32 greedy tokens are plain eager's;
    level 3 (compiled step in the graphs) for the kernels Llama does not use: MoE, sinks and
    sliding window, MLA (compiling takes time, so the other two only capture)."""
    folder = tiny_models[arch]
    fast = engine(folder, dtype="float32", level=level)
    expected = "torch.compile (inductor) + CUDA graphs" if level == 3 else "CUDA graphs"
    assert fast.runner.fast_path.startswith(expected), fast.runner.fast_path
    base = engine(folder, dtype="float32", level=0)
    vocab = base.model_config.vocab_size
    prompts = random_prompts(6, vocab, seed=7)
    params = [greedy(6 + 3 * i) for i in range(6)]
    want = [o["token_ids"] for o in base.generate(prompts, params)]
    got = [o["token_ids"] for o in fast.generate(prompts, params)]
    _check_same_greedy(got, want, base, prompts)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_one_synchronization_per_decode_step(tiny_models, async_scheduling):
    """CUDA's sync debug mode reports every stream-synchronizing call: a synchronous greedy
    decode step (graph replay) makes exactly one, the read of its sampled tokens. With
    asynchronous scheduling a step waits only on the event after its own tokens' copy (which
    the mode does not report), never for the stream, whose next step is already queued."""
    eng = engine(tiny_models["llama"], dtype="bfloat16", level=1, async_scheduling=async_scheduling)
    eng.add_request(random_prompts(3, eng.model_config.vocab_size, seed=1), greedy(40))
    for _ in range(3):  # prefill, then the first decodes
        eng.step()
    steps = 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                eng.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # (The mode also warns once that it is a prototype: only the per-call warnings count.)
    syncs = [w for w in caught if "called a synchronizing" in str(w.message)]
    assert len(syncs) == (0 if async_scheduling else steps), [str(w.message) for w in syncs[:5]]


def test_capture_failure_falls_back_to_eager(tiny_models):
    """The torch reference attention reads lengths back to the host, which a capture cannot
    do: the engine says so and runs eagerly, with the tokens of plain eager on the same ops."""
    from atom.kernels import registry

    folder = tiny_models["llama"]
    prompts = random_prompts(2, 256, seed=3)  # the tiny Llama's vocabulary
    try:
        eng = engine(folder, dtype="float32", level=1, kernel_backends=("torch",))
        assert eng.runner.fast_path.startswith("eager; graph capture failed"), eng.runner.fast_path
        assert eng.runner.decode_graphs is None
        got = [o["token_ids"] for o in eng.generate(prompts, greedy(5))]
        base = engine(folder, dtype="float32", level=0, kernel_backends=("torch",))
        want = [o["token_ids"] for o in base.generate(prompts, greedy(5))]
    finally:
        registry.set_preference(registry.DEFAULT_PREFERENCE)
    assert got == want
