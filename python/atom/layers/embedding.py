"""Token embedding and the LM head, sharded over the vocabulary, and tied when the model says so.

With tensor parallelism rank r holds rows [r * V/tp, (r+1) * V/tp) of the [V, hidden] table
(V padded up to a multiple of tp). The embedding looks up only its own ids (others give zeros)
and all-reduces; the LM head computes its slice of the logits and all-gathers them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from atom import kernels


class VocabParallelEmbedding(nn.Module):
    """input_ids: [T] int64 -> [T, embedding_dim] in the weight's dtype."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        tp_rank: int = 0,
        tp_size: int = 1,
        tp_group=None,
    ):
        super().__init__()
        if not 0 <= tp_rank < tp_size:
            raise ValueError(f"tp_rank={tp_rank} is outside tensor_parallel_size={tp_size}")
        self.num_embeddings = num_embeddings
        self.tp_rank, self.tp_size, self.tp_group = tp_rank, tp_size, tp_group
        self.rows_per_rank = -(-num_embeddings // tp_size)
        self.vocab_start = tp_rank * self.rows_per_rank
        self.weight = nn.Parameter(
            torch.empty(self.rows_per_rank, embedding_dim), requires_grad=False
        )
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if loaded.shape[0] != self.num_embeddings or loaded.shape[1] != param.shape[1]:
            raise ValueError(
                f"embedding of shape {tuple(loaded.shape)} does not fit "
                f"[{self.num_embeddings}, {param.shape[1]}]"
            )
        rows = min(self.rows_per_rank, self.num_embeddings - self.vocab_start)
        param.data[rows:].zero_()  # padding rows of the last rank
        param.data[:rows].copy_(loaded[self.vocab_start : self.vocab_start + rows])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        mine = (local >= 0) & (local < self.rows_per_rank)
        out = F.embedding(local.clamp(0, self.rows_per_rank - 1), self.weight)
        out = out * mine.unsqueeze(-1).to(out.dtype)
        torch.distributed.all_reduce(out, group=self.tp_group)
        return out


class ParallelLMHead(VocabParallelEmbedding):
    """hidden [N, H] -> logits [N, vocab] fp32. ``tie_to(embedding)`` shares the embedding table
    (tie_word_embeddings), and the checkpoint's lm_head.weight, if any, is then ignored.

    Decode steps of a few rows on a GPU (``uses_fused_gemv``) run the fused GEMV with an fp32
    output (atom.kernels.fused_gemv) instead of F.linear(...).float(): one kernel instead of a
    GEMM and a cast, and a weight stream near copy bandwidth (the kernel's large-weight rate on
    the H100; cuBLAS took 367 us for Llama-3-8B's LM head, whose bound is 349 us). Its logits are
    the fp32 sums, not a 16-bit GEMM result cast to fp32. Every other case keeps F.linear, the
    CPU among them."""

    def tie_to(self, embedding: VocabParallelEmbedding) -> None:
        if embedding.weight.shape != self.weight.shape:
            raise ValueError("the tied embedding and LM head differ in shape")
        self.weight = embedding.weight

    def uses_fused_gemv(self, hidden: torch.Tensor) -> bool:
        """One rank, a GPU, hidden [M, H] of a 16-bit dtype with a weight of the same dtype, and
        few rows: M <= 4, or M == 1 for a weight above SMALL_WEIGHT elements (every real vocab),
        where the fused GEMV beats cuBLAS (as layers/small_batch.max_tokens_for decides)."""
        weight = self.weight
        if self.tp_size != 1 or not hidden.is_cuda or hidden.dim() != 2 or weight.dim() != 2:
            return False
        if hidden.dtype not in (torch.bfloat16, torch.float16) or weight.dtype != hidden.dtype:
            return False
        if not weight.is_contiguous() or hidden.stride(-1) != 1:
            return False
        from atom.kernels.triton.gemv import SMALL_WEIGHT

        rows = hidden.shape[0]
        return 1 <= rows <= (4 if weight.numel() <= SMALL_WEIGHT else 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.uses_fused_gemv(hidden):
            logits = kernels.fused_gemv(hidden, self.weight, out_dtype=torch.float32)
        else:
            logits = F.linear(hidden, self.weight).float()
        if self.tp_size > 1:
            parts = [torch.empty_like(logits) for _ in range(self.tp_size)]
            torch.distributed.all_gather(parts, logits, group=self.tp_group)
            logits = torch.cat(parts, dim=-1)
        return logits[..., : self.num_embeddings]
