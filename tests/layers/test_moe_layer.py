"""FusedMoE weight loading and its sharding hooks.

Tensor/expert parallelism are checked without a process group: every rank's layer is built and
loaded from the same checkpoint tensors, run with reduce_results=False, and the partial outputs
summed by hand must equal the unsharded layer (what the all-reduce would produce).
"""

from __future__ import annotations

import pytest
import torch

from atom.kernels.reference.moe import fused_moe_ref
from atom.layers.moe import FusedMoE

E, K, H, INTER = 8, 3, 24, 40


def _checkpoint(seed: int, bias: bool) -> dict[str, torch.Tensor]:
    """Per-expert tensors named as in the released checkpoints (relative to mlp.experts)."""
    g = torch.Generator().manual_seed(seed)
    ckpt = {}
    for e in range(E):
        ckpt[f"{e}.gate_proj.weight"] = torch.randn(INTER, H, generator=g) * 0.2
        ckpt[f"{e}.up_proj.weight"] = torch.randn(INTER, H, generator=g) * 0.2
        ckpt[f"{e}.down_proj.weight"] = torch.randn(H, INTER, generator=g) * 0.2
        if bias:
            ckpt[f"{e}.gate_proj.bias"] = torch.randn(INTER, generator=g)
            ckpt[f"{e}.up_proj.bias"] = torch.randn(INTER, generator=g)
            ckpt[f"{e}.down_proj.bias"] = torch.randn(H, generator=g)
    return ckpt


def _loaded(ckpt, bias, activation="silu", **parallel) -> FusedMoE:
    moe = FusedMoE(E, K, H, INTER, activation=activation, has_bias=bias, **parallel)
    for name, t in ckpt.items():
        moe.load_checkpoint_tensor(name, t)
    return moe


def _routing(t: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(t)]).to(torch.int32)
    return torch.rand(t, K, generator=g), ids


def test_loaded_layout_is_gate_then_up():
    ckpt = _checkpoint(0, bias=True)
    moe = _loaded(ckpt, bias=True)
    torch.testing.assert_close(moe.w13[3, :INTER], ckpt["3.gate_proj.weight"])
    torch.testing.assert_close(moe.w13[3, INTER:], ckpt["3.up_proj.weight"])
    torch.testing.assert_close(moe.w2[3], ckpt["3.down_proj.weight"])
    torch.testing.assert_close(moe.b13[5, INTER:], ckpt["5.up_proj.bias"])
    torch.testing.assert_close(moe.b2[5], ckpt["5.down_proj.bias"])


def test_gptoss_fused_layout_deinterleaves():
    """GPT-OSS stores gate_up_proj [E, H, 2I] with gate/up interleaved columns."""
    ckpt = _checkpoint(1, bias=True)
    interleaved_w = torch.empty(E, H, 2 * INTER)
    interleaved_b = torch.empty(E, 2 * INTER)
    for e in range(E):
        interleaved_w[e, :, 0::2] = ckpt[f"{e}.gate_proj.weight"].T
        interleaved_w[e, :, 1::2] = ckpt[f"{e}.up_proj.weight"].T
        interleaved_b[e, 0::2] = ckpt[f"{e}.gate_proj.bias"]
        interleaved_b[e, 1::2] = ckpt[f"{e}.up_proj.bias"]
    down = torch.stack([ckpt[f"{e}.down_proj.weight"].T for e in range(E)])  # [E, I, H]
    down_b = torch.stack([ckpt[f"{e}.down_proj.bias"] for e in range(E)])
    moe = FusedMoE(E, K, H, INTER, "gptoss_swiglu", has_bias=True, fused_layout="gptoss")
    for name, t in (("gate_up_proj", interleaved_w), ("gate_up_proj_bias", interleaved_b)):
        moe.load_checkpoint_tensor(name, t)
    moe.load_checkpoint_tensor("down_proj", down)
    moe.load_checkpoint_tensor("down_proj_bias", down_b)
    ref = _loaded(ckpt, bias=True, activation="gptoss_swiglu")
    for name in ("w13", "w2", "b13", "b2"):
        torch.testing.assert_close(getattr(moe, name), getattr(ref, name))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tp_size,ep_size", [(2, 1), (1, 2), (2, 2), (1, 4)])
def test_sharded_ranks_sum_to_the_full_layer(bias, tp_size, ep_size):
    activation = "gptoss_swiglu" if bias else "silu"
    ckpt = _checkpoint(2, bias)
    full = _loaded(ckpt, bias, activation)
    x = torch.randn(11, H)
    weights, ids = _routing(11, seed=3)
    expected = full(x, weights, ids)
    total = torch.zeros_like(expected)
    for tp_rank in range(tp_size):
        for ep_rank in range(ep_size):
            part = _loaded(
                ckpt, bias, activation, tp_rank=tp_rank, tp_size=tp_size,
                ep_rank=ep_rank, ep_size=ep_size, reduce_results=False,
            )  # fmt: skip
            assert part.w13.shape == (E // ep_size, 2 * INTER // tp_size, H)
            total += part(x, weights, ids)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)


def test_invalid_ids_are_skipped():
    ckpt = _checkpoint(4, bias=False)
    moe = _loaded(ckpt, bias=False)
    x = torch.randn(5, H)
    weights, ids = _routing(5, seed=5)
    dropped = ids.clone()
    dropped[:, 0] = -1
    kept = fused_moe_ref(x, moe.w13, moe.w2, weights[:, 1:], ids[:, 1:])
    torch.testing.assert_close(moe(x, weights, dropped), kept)


def test_loader_rejects_bad_input():
    moe = FusedMoE(E, K, H, INTER)
    with pytest.raises(ValueError, match="unknown MoE expert tensor"):
        moe.load_checkpoint_tensor("0.fc1.weight", torch.zeros(INTER, H))
    with pytest.raises(ValueError, match="has none"):
        moe.load_checkpoint_tensor("0.gate_proj.bias", torch.zeros(INTER))
    with pytest.raises(ValueError, match="expected"):
        moe.load_checkpoint_tensor("0.gate_proj.weight", torch.zeros(INTER + 1, H))
    with pytest.raises(ValueError, match="expert_id=8"):
        moe.load_checkpoint_tensor("8.up_proj.weight", torch.zeros(INTER, H))
    with pytest.raises(ValueError, match="not divisible"):
        FusedMoE(E, K, H, INTER, tp_size=3)
    with pytest.raises(ValueError, match="not divisible"):
        FusedMoE(E, K, H, INTER, ep_size=3)
    with pytest.raises(ValueError, match="activation"):
        FusedMoE(E, K, H, INTER, activation="gelu")
    with pytest.raises(ValueError, match="swiglu_limit"):
        FusedMoE(E, K, H, INTER, activation="gptoss_swiglu", swiglu_limit=10.0)


def test_missing_checkpoint_parts():
    ckpt = _checkpoint(6, bias=True)
    del ckpt["3.up_proj.weight"], ckpt["6.down_proj.bias"]
    moe = _loaded(ckpt, bias=True)
    assert moe.missing_checkpoint_parts() == ["expert 3 up (w3)", "expert 6 down bias (b2)"]
    moe.load_checkpoint_tensor("down_proj", torch.zeros(E, H, INTER))  # whole-layer tensor
    moe.load_checkpoint_tensor("3.up_proj.weight", torch.zeros(INTER, H))
    assert moe.missing_checkpoint_parts() == ["expert 6 down bias (b2)"]
    # An expert-parallel rank only waits for its own experts.
    part = _loaded(
        {n: t for n, t in ckpt.items() if int(n.split(".")[0]) >= 4}, True, ep_rank=1, ep_size=2
    )
    assert part.missing_checkpoint_parts() == ["expert 6 down bias (b2)"]
