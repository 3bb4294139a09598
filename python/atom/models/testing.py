"""Running a model over a paged KV cache without the engine, for tests and checks of models.

``PagedRunner`` stands in for the engine's block manager and input preparation: it allocates a
paged KV cache with shuffled (non-trivial) block tables, builds AttentionMetadata for a flat batch
of chunks (prefills, chunked prefills and decodes mixed), runs the model and returns each chunk's
logits. Unwritten cache slots are NaN and unused block-table entries far out of range, so a kernel
that reads what it must not shows it. The engine's own path is atom/engine/model_runner.py."""

from __future__ import annotations

import torch

from atom.forward_context import AttentionMetadata


class PagedRunner:
    """PagedRunner(model, block_size, num_blocks, seed, device, kv_dtype); ``step(chunks)`` runs
    one batch."""

    def __init__(
        self,
        model,
        block_size: int = 4,
        num_blocks: int = 64,
        seed: int = 0,
        device="cpu",
        kv_dtype: torch.dtype | None = None,
    ):
        self.model, self.block_size, self.device = model, block_size, torch.device(device)
        self.num_blocks = num_blocks
        order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))
        self.free_blocks = order.tolist()
        # The cache is in the model's dtype unless told otherwise.
        dtype = kv_dtype or next((p.dtype for p in model.parameters()), torch.float32)
        for layer in model.attention_layers():
            shape = (num_blocks, block_size, layer.num_kv_heads, layer.head_dim)
            k = torch.full(shape, float("nan"), dtype=dtype, device=self.device)
            layer.bind_kv_cache(k, torch.full_like(k, float("nan")))
        self.blocks: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}

    def step(self, chunks: list[tuple[int, list[int]]], num_padding: int = 0) -> list[torch.Tensor]:
        """chunks: (sequence id, its next tokens) each. Returns logits [len(tokens), vocab] per
        chunk. ``num_padding`` extra tokens (slot -1) pad the batch, as CUDA graphs do."""
        bs = self.block_size
        ids, positions, slots, cu, seq_lens = [], [], [], [0], []
        for seq, tokens in chunks:
            start = self.lengths.get(seq, 0)
            end = start + len(tokens)
            blocks = self.blocks.setdefault(seq, [])
            while len(blocks) * bs < end:
                if not self.free_blocks:
                    raise ValueError(f"all {self.num_blocks} KV blocks are in use")
                blocks.append(self.free_blocks.pop())
            slots += [blocks[p // bs] * bs + p % bs for p in range(start, end)]
            ids += tokens
            positions += range(start, end)
            cu.append(cu[-1] + len(tokens))
            seq_lens.append(end)
            self.lengths[seq] = end
        width = max(len(self.blocks[seq]) for seq, _ in chunks) + 2
        tables = torch.full((len(chunks), width), 1 << 30, dtype=torch.int32)  # junk past the end
        for row, (seq, _) in enumerate(chunks):
            tables[row, : len(self.blocks[seq])] = torch.tensor(self.blocks[seq])
        ids += [0] * num_padding
        positions += [0] * num_padding
        slots += [-1] * num_padding
        query_lens = [len(t) for _, t in chunks]
        dev = self.device
        meta = AttentionMetadata(
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=tables.to(dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            max_seqlen_q=max(query_lens),
            max_seqlen_k=max(seq_lens),
            seq_lens_cpu=seq_lens,
            query_lens_cpu=query_lens,
        )
        with torch.no_grad():
            hidden = self.model(
                torch.tensor(ids, dtype=torch.int64, device=dev),
                torch.tensor(positions, dtype=torch.int64, device=dev),
                meta,
            )
            logits = self.model.compute_logits(hidden[: cu[-1]])
        return list(logits.split(query_lens))
