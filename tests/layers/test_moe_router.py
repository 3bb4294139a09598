"""Routers + FusedMoE against transformers' own MoE blocks (tiny random configs, fp32).

For each architecture: the HF block's router and ours pick the same experts with the same
weights, and our router + FusedMoE (torch reference, and the Triton kernel where it can run)
reproduce the block's output. Weights travel through FusedMoE.load_checkpoint_tensor from the HF
module's own tensor names, so the checkpoint layouts are tested too.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from atom.layers.moe import FusedMoE, MoeRouter

H, INTER = 48, 80


def _triton_device() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else None


def _randomize(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for name, b in module.named_buffers():
            if "correction_bias" in name:  # big enough to change which experts are picked
                b.copy_(torch.rand(b.shape, generator=g) * 0.5)


def _same_routing(ours, theirs_weights, theirs_ids):
    w, ids = ours
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    ids_sorted, order = ids.long().sort(dim=-1)
    ref_sorted, ref_order = theirs_ids.long().sort(dim=-1)
    assert torch.equal(ids_sorted, ref_sorted)
    torch.testing.assert_close(
        w.gather(1, order), theirs_weights.float().gather(1, ref_order), rtol=1e-5, atol=1e-6
    )


def _check_experts(moe: FusedMoE, x, weights, ids, expected, atol=2e-5):
    torch.testing.assert_close(moe(x, weights, ids), expected, rtol=1e-4, atol=atol)
    device = _triton_device()
    if device is None:
        return
    from atom.kernels.triton.moe import fused_moe_triton

    moe = moe.to(device)
    out = fused_moe_triton(
        x.to(device), moe.w13, moe.w2, weights.to(device), ids.to(device),
        moe.activation, moe.b13, moe.b2,
    )  # fmt: skip
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("per_expert_names", [True, False])
def test_qwen3_moe_block(norm_topk_prob, per_expert_names):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = Qwen3MoeConfig(
        hidden_size=H, moe_intermediate_size=INTER, num_experts=8, num_experts_per_tok=3,
        norm_topk_prob=norm_topk_prob, hidden_act="silu",
    )  # fmt: skip
    hf = Qwen3MoeSparseMoeBlock(cfg).eval()
    _randomize(hf, seed=1)
    router = MoeRouter(H, 8, 3, scoring="softmax", renormalize=norm_topk_prob)
    router.weight.data.copy_(hf.gate.weight)
    moe = FusedMoE(8, 3, H, INTER)
    if per_expert_names:  # the released checkpoints: experts.{e}.{gate,up,down}_proj.weight
        for e in range(8):
            gate, up = hf.experts.gate_up_proj[e].chunk(2, dim=0)
            moe.load_checkpoint_tensor(f"{e}.gate_proj.weight", gate)
            moe.load_checkpoint_tensor(f"{e}.up_proj.weight", up)
            moe.load_checkpoint_tensor(f"{e}.down_proj.weight", hf.experts.down_proj[e])
    else:  # transformers >= 5 state dict: fused [E, 2I, H]
        moe.load_checkpoint_tensor("gate_up_proj", hf.experts.gate_up_proj)
        moe.load_checkpoint_tensor("down_proj", hf.experts.down_proj)

    x = torch.randn(33, H, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, hf_w, hf_ids = hf.gate(x)
        expected = hf(x[None])[0]
        routed = router(x)
        _same_routing(routed, hf_w, hf_ids)
        _check_experts(moe, x, *routed, expected)


def _deepseek_like(arch: str):
    if arch == "deepseek_v3":
        from transformers import DeepseekV3Config as Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE as Block
    else:
        from transformers import Glm4MoeConfig as Config
        from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeMoE as Block
    return Config, Block


@pytest.mark.parametrize(
    "arch,n_group,topk_group,top_k,scale,norm",
    [
        ("deepseek_v3", 4, 2, 4, 2.5, True),  # grouped, like DeepSeek-V3 (8 groups, 4 kept)
        ("deepseek_v3", 1, 1, 6, 2.827, True),  # Kimi-K2: one group
        ("deepseek_v3", 4, 3, 2, 1.0, False),
        ("glm4_moe", 1, 1, 4, 1.0, True),  # GLM-4.5 style
        ("glm4_moe", 2, 1, 3, 2.5, True),
    ],
)
def test_sigmoid_grouped_block(arch, n_group, topk_group, top_k, scale, norm):
    Config, Block = _deepseek_like(arch)
    e = 16
    cfg = Config(
        hidden_size=H, moe_intermediate_size=INTER, intermediate_size=96, n_routed_experts=e,
        num_experts_per_tok=top_k, n_group=n_group, topk_group=topk_group,
        routed_scaling_factor=scale, norm_topk_prob=norm, n_shared_experts=1, hidden_act="silu",
    )  # fmt: skip
    hf = Block(cfg).eval()
    _randomize(hf, seed=3)
    router = MoeRouter(
        H, e, top_k, scoring="sigmoid_grouped", renormalize=norm, n_group=n_group,
        topk_group=topk_group, routed_scaling_factor=scale,
    )  # fmt: skip
    router.weight.data.copy_(hf.gate.weight)
    router.e_score_correction_bias.data.copy_(hf.gate.e_score_correction_bias)
    moe = FusedMoE(e, top_k, H, INTER)
    moe.load_checkpoint_tensor("gate_up_proj", hf.experts.gate_up_proj)
    moe.load_checkpoint_tensor("down_proj", hf.experts.down_proj)

    x = torch.randn(33, H, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, hf_w, hf_ids = hf.gate(x)
        routed = router(x)
        _same_routing(routed, hf_w, hf_ids)
        # The model adds the shared experts (an ordinary MLP) to the routed output.
        expected = hf(x) - hf.shared_experts(x)
        _check_experts(moe, x, *routed, expected)


def test_correction_bias_steers_choice_not_weights():
    """A large bias on one expert makes it chosen everywhere, yet its weight is the raw score."""
    router = MoeRouter(H, 8, 2, scoring="sigmoid_grouped", n_group=2, topk_group=2)
    torch.nn.init.normal_(router.weight, std=0.3)
    router.e_score_correction_bias.data[5] = 100.0
    x = torch.randn(9, H)
    w, ids = router(x)
    assert (ids == 5).any(dim=1).all()
    raw = torch.sigmoid(x @ router.weight.T)
    torch.testing.assert_close(w, raw.gather(1, ids.long()))


def test_grouped_router_gate_stays_fp32_under_model_cast():
    router = MoeRouter(H, 8, 2, scoring="sigmoid_grouped", n_group=2, topk_group=1)
    torch.nn.init.normal_(router.weight)
    exact = router.weight.detach().clone()
    router.to(torch.bfloat16)
    assert router.weight.dtype == torch.float32 and torch.equal(router.weight, exact)
    assert router.e_score_correction_bias.dtype == torch.float32
    softmax_router = MoeRouter(H, 8, 2).to(torch.bfloat16)
    assert softmax_router.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("top_k", [1, 4])
def test_gpt_oss_block(top_k):
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    e = 8
    cfg = GptOssConfig(
        hidden_size=H, intermediate_size=INTER, num_local_experts=e, num_experts_per_tok=top_k
    )
    hf = GptOssMLP(cfg).eval()
    _randomize(hf, seed=5)
    router = MoeRouter(H, e, top_k, scoring="topk_softmax", bias=True)
    router.weight.data.copy_(hf.router.weight)
    router.bias.data.copy_(hf.router.bias)
    moe = FusedMoE(
        e, top_k, H, INTER, activation="gptoss_swiglu", has_bias=True, fused_layout="gptoss"
    )
    for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
        moe.load_checkpoint_tensor(name, getattr(hf.experts, name))

    # Scale up so the SwiGLU clamps (|gate|, |up| > 7) are exercised.
    x = 3 * torch.randn(33, H, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        _, hf_w, hf_ids = hf.router(x)
        expected, _ = hf(x[None])
        routed = router(x)
        _same_routing(routed, hf_w, hf_ids)
        gate_up = x @ moe.w13[0].T + moe.b13[0]
        assert gate_up[:, :INTER].max() > 7 and gate_up[:, INTER:].abs().max() > 7
        _check_experts(moe, x, *routed, expected[0], atol=2e-4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scoring="nope"), "scoring"),
        (dict(top_k=9), "top_k"),
        (dict(scoring="sigmoid_grouped", n_group=3), "n_group"),
        (dict(scoring="sigmoid_grouped", n_group=8), "fewer than 2"),
        (dict(scoring="sigmoid_grouped", n_group=2, topk_group=3), "topk_group"),
        (dict(scoring="sigmoid_grouped", n_group=4, topk_group=1, top_k=3), "exceeds"),
    ],
)
def test_router_rejects_bad_config(kwargs, match):
    args = dict(hidden_size=H, num_experts=8, top_k=2) | kwargs
    with pytest.raises(ValueError, match=match):
        MoeRouter(**args)
