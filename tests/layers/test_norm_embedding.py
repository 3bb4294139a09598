"""RMSNorm (plain and fused with the residual add), the gated activation, and the vocab-sharded
embedding / LM head."""

from __future__ import annotations

import pytest
import torch

from atom.layers.activation import gated_activation
from atom.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from atom.layers.norm import RMSNorm


def test_rms_norm_matches_transformers_llama():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x, residual = torch.randn(7, 40), torch.randn(7, 40)
    ours, theirs = RMSNorm(40, 1e-5), LlamaRMSNorm(40, 1e-5)
    theirs.weight.data.uniform_(0.5, 1.5)
    ours.weight.data.copy_(theirs.weight.data)
    torch.testing.assert_close(ours(x), theirs(x))
    expected_residual = x + residual
    normed, new_residual = ours(x.clone(), residual.clone())  # the fused op may work in place
    torch.testing.assert_close(new_residual, expected_residual)
    torch.testing.assert_close(normed, theirs(expected_residual))


def test_silu_and_mul():
    x = torch.randn(5, 12)
    torch.testing.assert_close(
        gated_activation("silu")(x), torch.nn.functional.silu(x[:, :6]) * x[:, 6:]
    )
    with pytest.raises(ValueError, match="'gelu_fancy'"):
        gated_activation("gelu_fancy")


@pytest.mark.parametrize("tp_size", [1, 2, 3])
def test_vocab_shards_cover_the_table(tp_size):
    vocab, dim = 11, 4  # 11 rows do not split evenly: the last rank is padded
    table = torch.randn(vocab, dim)
    pieces = []
    for rank in range(tp_size):
        emb = VocabParallelEmbedding(vocab, dim, tp_rank=rank, tp_size=tp_size)
        emb.weight.weight_loader(emb.weight, table)
        pieces.append(emb.weight.data)
    stacked = torch.cat(pieces)
    torch.testing.assert_close(stacked[:vocab], table)
    assert torch.all(stacked[vocab:] == 0)


def test_lm_head_logits_and_tying():
    emb, head = VocabParallelEmbedding(10, 4), ParallelLMHead(10, 4)
    emb.weight.data.normal_()
    head.tie_to(emb)
    hidden = torch.randn(3, 4, dtype=torch.float32)
    logits = head(hidden)
    assert logits.dtype == torch.float32 and logits.shape == (3, 10)
    torch.testing.assert_close(logits, hidden @ emb.weight.T)
    torch.testing.assert_close(emb(torch.tensor([3, 7])), emb.weight[[3, 7]])
    with pytest.raises(ValueError, match=r"\(9, 4\)"):
        emb.weight.weight_loader(emb.weight, torch.zeros(9, 4))
