"""Forwards of made-up sequences that the model runner runs at startup, before any request.

- ``profile_forward``: a full batch (``max_num_batched_tokens`` tokens over up to ``max_num_seqs``
  prompts) on a throwaway KV cache, whose peak memory sizes the real cache on a GPU.
- ``warm_up_kernels`` (GPU): the prompt and mixed step shapes that neither the profile forward
  (short prompts) nor the decode graphs (decode-only batches) reach, so that Triton compiles
  their kernels now rather than in front of the first requests (seconds each).

A step is described by its ``shape``: one (new tokens, tokens already in the cache before them)
pair per sequence. The sequences' KV blocks are laid out one after the other from block 0, their
token ids are 0, and every sequence's last token gets logits; nothing is sampled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from atom.engine.model_runner import ModelRunner, StepInput

Shape = list[tuple[int, int]]  # (new tokens, context before them) per sequence


def blocks_for(shape: Shape, block_size: int) -> int:
    return sum(-(-(n + before) // block_size) for n, before in shape)


def synthetic_step(runner: ModelRunner, shape: Shape) -> StepInput:
    bs = runner.block_size
    tables, next_block = [], 0
    for n, before in shape:
        used = -(-(n + before) // bs)
        tables.append(list(range(next_block, next_block + used)))
        next_block += used
    query_lens = [n for n, _ in shape]
    positions = [p for n, before in shape for p in range(before, before + n)]
    slots = [
        t[p // bs] * bs + p % bs
        for t, (n, before) in zip(tables, shape)
        for p in range(before, before + n)
    ]  # fmt: skip
    return runner._build_step_input(
        input_ids=[0] * len(positions), positions=positions, query_lens=query_lens,
        seq_lens=[n + before for n, before in shape], block_tables=tables, slots=slots,
        logits_rows=[sum(query_lens[: i + 1]) - 1 for i in range(len(shape))], sample_seqs=[],
    )  # fmt: skip


@torch.inference_mode()
def profile_forward(runner: ModelRunner) -> None:
    """The full-batch forward on caches of its own, freed afterwards (the real caches, if any,
    are bound again)."""
    cfg = runner.config
    num_tokens = min(cfg.max_num_batched_tokens, cfg.max_num_seqs * cfg.max_model_len)
    num_seqs = min(cfg.max_num_seqs, num_tokens)
    shape = [(num_tokens // num_seqs + (i < num_tokens % num_seqs), 0) for i in range(num_seqs)]
    caches = runner._allocate_kv_cache(blocks_for(shape, runner.block_size))
    runner.execute(synthetic_step(runner, shape))
    del caches
    # Unbind the profile caches so that their memory is freed (rebind the real ones, if any).
    if getattr(runner, "kv_caches", None):
        for layer, (k, v) in zip(runner.attn_layers, runner.kv_caches):
            layer.bind_kv_cache(k, v, runner._kv_scale, runner._kv_scale)
    else:
        runner._allocate_kv_cache(0)


def warm_up_shapes(max_num_batched_tokens: int, max_model_len: int, group: int) -> list[Shape]:
    """A long prompt; a decode next to a long chunk that continues a cached prefix; and the same
    two with the short chunks whose tile heights differ (the prefill kernel's tile is the longest
    chunk's tokens times the GQA group, 16..128 rows, each height its own compiled variant). Also
    a decode of a 2-token sequence before a prompt: a short context takes the decode kernel's
    unsplit variant, which GPU decode steps (with RoPE in the kernel) never compile (an H100
    offline run compiled it mid-run, 0.65 s, found with triton.knobs.runtime.jit_cache_hook)."""
    chunk = min(256, max_num_batched_tokens - 1, max_model_len // 2)
    if chunk < 2:
        return []
    short = sorted({rows // group for rows in (16, 32, 64)} - {0, 1})
    lengths = [chunk] + [q for q in short if q < chunk]
    prompts = [[(q, 0)] for q in lengths] + [[(1, 1), (chunk, 0)]]
    return prompts + [[(1, chunk), (q, chunk)] for q in lengths]


def warm_up_kernels(runner: ModelRunner) -> None:
    """Runs the warm_up_shapes steps on the real KV cache. They write blocks from block 0 up: no
    block is in use yet, and a block is always written before it is read, so the values they
    leave are never seen."""
    group = max(layer.num_heads // layer.num_kv_heads for layer in runner.attn_layers)
    cfg = runner.config
    for shape in warm_up_shapes(cfg.max_num_batched_tokens, cfg.max_model_len, group):
        if blocks_for(shape, runner.block_size) <= runner.num_blocks:
            runner.execute(synthetic_step(runner, shape))
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
