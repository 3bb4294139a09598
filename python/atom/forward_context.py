"""Per-step state that crosses from the model runner into the layers.

One explicit object, passed as an argument down the model (no hidden globals), so that CUDA graphs
can capture a step against persistent buffers and replay it with new contents.

KV-cache layout (every attention backend reads and writes this):
    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    token t of a sequence lives in slot ``block_table[t // block_size] * block_size + t % block_size``
    (a slot s is row ``s // block_size``, column ``s % block_size`` of the cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Describes one flat token batch: ``num_seqs`` sequences, their new tokens back to back.

    Sequence b contributes ``q_len_b = cu_seqlens_q[b+1] - cu_seqlens_q[b]`` new tokens whose
    positions are ``seq_lens[b] - q_len_b ... seq_lens[b] - 1``; its earlier tokens (a cached
    prefix, earlier chunks, earlier decode steps) are already in the paged cache. Tokens past
    ``cu_seqlens_q[-1]`` are padding (CUDA-graph batch sizes): their outputs are never read.
    """

    cu_seqlens_q: torch.Tensor  # [num_seqs + 1] int32, on the model's device
    seq_lens: torch.Tensor  # [num_seqs] int32: context length after this step's tokens
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32; unused entries are junk
    slot_mapping: torch.Tensor  # [num_tokens] int64; -1 = do not write (padding)
    max_seqlen_q: int  # host copies, so kernels can size their grids without a sync
    max_seqlen_k: int
    # Host copies of the per-sequence lengths, for the torch reference paths (no device sync).
    seq_lens_cpu: list[int] | None = None
    query_lens_cpu: list[int] | None = None

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def is_decode_only(self) -> bool:
        return self.max_seqlen_q == 1
