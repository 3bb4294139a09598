"""The Attention layer over a paged cache against dense causal attention written out in torch,
for each feature flag: RoPE, per-head q/k norm, sliding window, sinks, no RoPE."""

from __future__ import annotations

import pytest
import torch

from atom.kernels.reference.norm import rms_norm_ref
from atom.kernels.reference.rotary import apply_rope_ref
from atom.layers.attention import Attention
from atom.layers.rotary import get_rope
from atom.models.testing import PagedRunner

HQ, HKV, D = 4, 2, 8


def dense_attention(q, k, v, scale, window=None, sinks=None):
    """q: [L, Hq, D], k, v: [L, Hkv, D] of one sequence -> [L, Hq, D], causal."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = torch.einsum("lhd,shd->hls", q, k) * scale
    i = torch.arange(q.shape[0])
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed &= i[:, None] - i[None, :] < window
    scores = scores.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        sink = sinks.view(-1, 1, 1).expand(-1, q.shape[0], 1)
        probs = torch.softmax(torch.cat([scores, sink], -1), -1)[..., :-1]
    else:
        probs = torch.softmax(scores, -1)
    return torch.einsum("hls,shd->lhd", probs, v)


class OneLayer(torch.nn.Module):
    """The smallest 'model' PagedRunner can drive: q, k, v are fixed functions of the token."""

    def __init__(self, attn: Attention, table: torch.Tensor):
        super().__init__()
        self.attn, self.table = attn, table  # table: [vocab, (HQ + 2 HKV) * D]

    def attention_layers(self):
        return [self.attn]

    def forward(self, ids, positions, meta):
        q, k, v = self.table[ids].split([HQ * D, HKV * D, HKV * D], -1)
        return self.attn(q, k, v, positions, meta)

    def compute_logits(self, hidden):
        return hidden


FLAGS = {
    "rope": {"rope": True},
    "rope+qk_norm": {"rope": True, "qk_norm": True},
    "qk_norm, no rope": {"qk_norm": True},
    "plain": {},
    "sliding_window": {"rope": True, "sliding_window": 5},
    "sinks": {"rope": True, "sinks": True},
}


@pytest.mark.parametrize("name", list(FLAGS))
def test_paged_attention_layer_matches_dense(name):
    flags = FLAGS[name]
    torch.manual_seed(0)
    rope = get_rope(D, D, 64, 10000.0) if flags.get("rope") else None
    attn = Attention(
        HQ, HKV, D, D**-0.5,
        rotary_emb=rope,
        qk_norm=flags.get("qk_norm", False),
        sliding_window=flags.get("sliding_window"),
        sinks=flags.get("sinks", False),
    )  # fmt: skip
    if attn.q_norm is not None:
        attn.q_norm.weight.data.uniform_(0.5, 1.5)
        attn.k_norm.weight.data.uniform_(0.5, 1.5)
    if attn.sinks is not None:
        attn.sinks.data.normal_()
    table = torch.randn(50, (HQ + 2 * HKV) * D)
    model = OneLayer(attn, table)
    tokens = torch.randint(0, 50, (19,))

    runner = PagedRunner(model, block_size=4, num_blocks=16)
    got = torch.cat(
        [*runner.step([(0, tokens[:11].tolist())]), *runner.step([(0, tokens[11:].tolist())])]
    )

    q, k, v = table[tokens].split([HQ * D, HKV * D, HKV * D], -1)
    q, k, v = q.view(-1, HQ, D), k.view(-1, HKV, D), v.view(-1, HKV, D)
    if attn.q_norm is not None:
        q = rms_norm_ref(q, attn.q_norm.weight, attn.qk_norm_eps)
        k = rms_norm_ref(k, attn.k_norm.weight, attn.qk_norm_eps)
    if rope is not None:
        pos = torch.arange(len(tokens))
        q, k = (
            apply_rope_ref(q, pos, rope.cos_sin_cache, True),
            apply_rope_ref(k, pos, rope.cos_sin_cache, True),
        )
    ref = dense_attention(q, k, v, D**-0.5, flags.get("sliding_window"), attn.sinks)
    torch.testing.assert_close(got, ref.reshape(len(tokens), HQ * D), atol=1e-5, rtol=1e-5)


def test_bad_attention_settings_are_value_errors():
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        Attention(4, 3, 8, 1.0)
    with pytest.raises(ValueError, match="sliding_window"):
        Attention(4, 2, 8, 1.0, sliding_window=0)
