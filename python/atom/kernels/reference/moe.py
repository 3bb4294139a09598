"""Mixture-of-experts FFN: the torch reference of ``fused_moe``.

    out[t] = sum_j  w[t, j] * expert_{ids[t, j]}(x[t])
    expert_e(x) = w2[e] @ act(w13[e] @ x + b13[e]) + b2[e]

Layouts (shared with every implementation):
    hidden:        [T, H]       bf16 | fp16 | fp32
    w13:           [E, 2I, H]   rows [0, I) are the gate projection, rows [I, 2I) the up projection
    w2:            [E, H, I]
    b13 / b2:      [E, 2I] / [E, H], optional (GPT-OSS has them)
    topk_weights:  [T, k]       fp32 routing weights (already normalised / scaled by the router)
    topk_ids:      [T, k]       int32 expert of each (token, slot) pair, in [0, E); pairs with
                                an id outside it (expert parallelism: not this rank's) are skipped

Activations act(gate, up), computed in fp32:
    "silu":          silu(gate) * up                                   (Llama/Qwen/DeepSeek/GLM)
    "gptoss_swiglu": g = min(gate, 7); u = clamp(up, -7, 7);
                     (u + 1) * g * sigmoid(1.702 * g)                    (GPT-OSS, transformers'
                     GptOssExperts._apply_gate). GPT-OSS checkpoints interleave gate/up columns;
                     the FusedMoE weight loader de-interleaves them into the [gate | up] halves above.

Precision contract (the Triton kernel does the same, so the reference also serves as "torch at the
kernel's precision" in tests): the projections multiply in the input dtype with fp32 accumulation;
biases and the activation are applied in fp32 and the intermediate [*, I] is rounded to the input
dtype before the down projection; each weighted expert output is rounded to the input dtype and
the k outputs of a token are summed in fp32, then rounded once more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atom.kernels.registry import register

ACTIVATIONS = ("silu", "gptoss_swiglu")
GPTOSS_ALPHA = 1.702
GPTOSS_LIMIT = 7.0


def moe_activation(gate_up: torch.Tensor, activation: str) -> torch.Tensor:
    """gate_up: [..., 2I] = [gate | up] (any float dtype) -> act: [..., I] fp32."""
    i = gate_up.shape[-1] // 2
    gate, up = gate_up[..., :i].float(), gate_up[..., i:].float()
    if activation == "silu":
        return F.silu(gate) * up
    if activation == "gptoss_swiglu":
        gate = gate.clamp(max=GPTOSS_LIMIT)
        up = up.clamp(min=-GPTOSS_LIMIT, max=GPTOSS_LIMIT)
        return (up + 1.0) * gate * torch.sigmoid(GPTOSS_ALPHA * gate)
    raise ValueError(f"unknown MoE activation {activation!r}; known: {ACTIVATIONS}")


def check_moe_args(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str,
    b13: torch.Tensor | None,
    b2: torch.Tensor | None,
) -> None:
    """Shape/dtype checks shared by every implementation (no device syncs)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown MoE activation {activation!r}; known: {ACTIVATIONS}")
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [T, H], got shape {tuple(hidden.shape)}")
    if hidden.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"hidden dtype {hidden.dtype} is not bf16/fp16/fp32")
    t, h = hidden.shape
    if w13.dim() != 3 or w13.shape[2] != h or w13.shape[1] % 2:
        raise ValueError(f"w13 must be [E, 2I, H={h}], got {tuple(w13.shape)}")
    e, two_i, _ = w13.shape
    if tuple(w2.shape) != (e, h, two_i // 2):
        raise ValueError(f"w2 must be [E={e}, H={h}, I={two_i // 2}], got {tuple(w2.shape)}")
    if w13.dtype != hidden.dtype or w2.dtype != hidden.dtype:
        raise ValueError(f"weights {w13.dtype}/{w2.dtype} differ from hidden's {hidden.dtype}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != t:
        raise ValueError(f"topk_ids must be [T={t}, k], got {tuple(topk_ids.shape)}")
    if tuple(topk_weights.shape) != tuple(topk_ids.shape):
        raise ValueError(
            f"topk_weights {tuple(topk_weights.shape)} and topk_ids {tuple(topk_ids.shape)} differ"
        )
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_ids dtype {topk_ids.dtype} is not int32/int64")
    if b13 is not None and tuple(b13.shape) != (e, two_i):
        raise ValueError(f"b13 must be [E={e}, 2I={two_i}], got {tuple(b13.shape)}")
    if b2 is not None and tuple(b2.shape) != (e, h):
        raise ValueError(f"b2 must be [E={e}, H={h}], got {tuple(b2.shape)}")


def fused_moe_ref(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
    b13: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loops over the experts that received tokens. Returns [T, H] in hidden's dtype."""
    check_moe_args(hidden, w13, w2, topk_weights, topk_ids, activation, b13, b2)
    t, h = hidden.shape
    num_experts, k = w13.shape[0], topk_ids.shape[1]
    dtype = hidden.dtype
    acc = torch.zeros(t, h, dtype=torch.float32, device=hidden.device)
    flat_ids = topk_ids.reshape(-1).long()
    flat_weights = topk_weights.reshape(-1).float()
    # Ids outside [0, E) (another expert-parallel rank's experts) contribute nothing: send them to
    # an extra bucket E that is never computed.
    flat_ids = torch.where((flat_ids >= 0) & (flat_ids < num_experts), flat_ids, num_experts)
    # Group the T*k (token, slot) pairs by expert: one sort instead of E boolean masks.
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=num_experts + 1)[:num_experts].tolist()
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        pairs = order[start : start + count]
        start += count
        tokens = pairs // k
        gate_up = (hidden[tokens] @ w13[expert].T).float()
        if b13 is not None:
            gate_up += b13[expert].float()
        act = moe_activation(gate_up, activation).to(dtype)
        out = (act @ w2[expert].T).float()
        if b2 is not None:
            out += b2[expert].float()
        out = (out * flat_weights[pairs, None]).to(dtype)
        acc.index_add_(0, tokens, out.float())
    return acc.to(dtype)


@register("fused_moe", "torch")
def fused_moe(hidden, w13, w2, topk_weights, topk_ids, activation="silu", b13=None, b2=None):
    return fused_moe_ref(hidden, w13, w2, topk_weights, topk_ids, activation, b13, b2)
