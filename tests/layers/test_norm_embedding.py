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


def _bf16_head(vocab: int, hidden: int, device: str, seed: int = 0) -> ParallelLMHead:
    g = torch.Generator().manual_seed(seed)
    head = ParallelLMHead(vocab, hidden).to(device, torch.bfloat16)
    head.weight.data.copy_(torch.randn(vocab, hidden, generator=g) / hidden**0.5)
    return head


@pytest.mark.parametrize("rows", [1, 4])
def test_lm_head_on_the_cpu_is_f_linear(rows):
    """The CPU path stays F.linear(...).float(), bit for bit, at decode row counts too."""
    head = _bf16_head(1000, 64, "cpu")
    hidden = torch.randn(rows, 64).bfloat16()
    assert not head.uses_fused_gemv(hidden)
    logits = head(hidden)
    assert logits.dtype == torch.float32 and logits.shape == (rows, 1000)
    assert torch.equal(logits, torch.nn.functional.linear(hidden, head.weight).float())


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 4])
def test_lm_head_fused_gemv_gpu(rows):
    """Decode rows on a GPU: the fused GEMV with an fp32 output, for a small weight at M <= 4 and
    a large one (above SMALL_WEIGHT elements) at M = 1 only; vocab sizes not a multiple of any
    block. Within bf16 GEMM tolerance of F.linear(...).float(), and nearer the fp32 truth."""
    from atom.kernels.triton.gemv import SMALL_WEIGHT

    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    small, large = _bf16_head(1001, 256, "cuda"), _bf16_head(128257, 512, "cuda", seed=1)
    assert small.weight.numel() <= SMALL_WEIGHT < large.weight.numel()
    for head, fused in ((small, True), (large, rows == 1)):
        hidden = torch.randn(rows, head.weight.shape[1], device="cuda").bfloat16()
        assert head.uses_fused_gemv(hidden) == fused
        assert not head.uses_fused_gemv(hidden.float())  # the weight's dtype only
        logits = head(hidden)
        vocab = head.weight.shape[0]
        assert logits.dtype == torch.float32 and logits.shape == (rows, vocab)
        cublas = torch.nn.functional.linear(hidden, head.weight).float()
        truth = (hidden.cpu().float() @ head.weight.cpu().float().T).cuda()  # no TF32
        scale = truth.abs().max().item()
        torch.testing.assert_close(logits, cublas, rtol=1.6e-2, atol=1e-2 * scale)
        if fused:  # the fp32 sums, not a bf16 result cast: as near the truth as fp32 sums get
            torch.testing.assert_close(logits, truth, rtol=1e-4, atol=1e-4 * scale)
            assert (logits != logits.bfloat16().float()).any()
        else:
            assert torch.equal(logits, cublas)
    five = torch.randn(5, 256, device="cuda").bfloat16()
    assert not small.uses_fused_gemv(five)  # above 4 rows: cuBLAS
