"""FusedMoE: the routed experts of an MoE block, as two stacked weight tensors.

    w13: [E_local, 2 * I_local, H]   rows [0, I_local) gate, [I_local, 2 I_local) up
    w2:  [E_local, H, I_local]
    b13: [E_local, 2 * I_local], b2: [E_local, H]   (only with has_bias, GPT-OSS)

forward(hidden [T, H], topk_weights [T, k] fp32, topk_ids [T, k] int32) -> [T, H] calls
``atom.kernels.fused_moe``. The router and any shared experts belong to the model's MoE block.

Sharding (the hooks exist at size 1 and are exercised by the tests with simulated ranks):
- tensor parallel: rank r holds the slice [r * I/tp, (r+1) * I/tp) of every expert's intermediate
  dim (gate and up rows, down columns); partial outputs are summed over ``tp_group``; b2 is added
  on rank 0 only so the sum counts it once.
- expert parallel: rank r holds experts [r * E/ep, (r+1) * E/ep); ids of other ranks' experts are
  mapped to -1 (the kernels skip them) and partial outputs are summed over ``ep_group``.
``reduce_results=False`` leaves the sum to the caller (to fuse it with the shared experts').

Checkpoint names (relative to this module, which models name ``experts``) are data, in
CHECKPOINT_NAMES; ``load_checkpoint_tensor(name, tensor)`` routes a tensor to its slot.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from atom import kernels
from atom.kernels.reference.moe import ACTIVATIONS, GPTOSS_ALPHA, GPTOSS_LIMIT

# checkpoint name pattern -> (parameter, shard). Per-expert tensors carry the expert id in group 1.
# "w1" gate [I, H], "w3" up [I, H], "w2" down [H, I] (nn.Linear orientation); "b1"/"b3"/"b2" their
# biases. Whole-layer tensors: "w13_all" [E, 2I, H] = [gate | up] (transformers >= 5 state dicts of
# Qwen3-MoE / DeepSeek-V3 / GLM-4-MoE), "w2_all" [E, H, I].
PER_EXPERT_NAMES: dict[str, tuple[str, str]] = {
    r"(\d+)\.(?:gate_proj|w1)\.weight": ("w13", "w1"),
    r"(\d+)\.(?:up_proj|w3)\.weight": ("w13", "w3"),
    r"(\d+)\.(?:down_proj|w2)\.weight": ("w2", "w2"),
    r"(\d+)\.(?:gate_proj|w1)\.bias": ("b13", "b1"),
    r"(\d+)\.(?:up_proj|w3)\.bias": ("b13", "b3"),
    r"(\d+)\.(?:down_proj|w2)\.bias": ("b2", "b2"),
}
FUSED_NAMES: dict[str, dict[str, tuple[str, str]]] = {
    # Gate and up as consecutive halves of the 2I dim, weights [E, out, in].
    "concatenated": {
        "gate_up_proj": ("w13", "w13_all"),
        "down_proj": ("w2", "w2_all"),
    },
    # GPT-OSS: weights stored [E, in, out] (x @ W), gate/up INTERLEAVED along 2I (gate = even
    # columns, up = odd; transformers GptOssExperts._apply_gate uses [..., ::2] and [..., 1::2]).
    "gptoss": {
        "gate_up_proj": ("w13", "gptoss_w13_all"),
        "gate_up_proj_bias": ("b13", "gptoss_b13_all"),
        "down_proj": ("w2", "gptoss_w2_all"),
        "down_proj_bias": ("b2", "b2_all"),
    },
}


class FusedMoE(nn.Module):
    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        activation: str = "silu",
        has_bias: bool = False,
        fused_layout: str = "concatenated",
        swiglu_alpha: float = GPTOSS_ALPHA,
        swiglu_limit: float = GPTOSS_LIMIT,
        reduce_results: bool = True,
        tp_rank: int = 0,
        tp_size: int = 1,
        tp_group=None,
        ep_rank: int = 0,
        ep_size: int = 1,
        ep_group=None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown MoE activation {activation!r}; known: {ACTIVATIONS}")
        if fused_layout not in FUSED_NAMES:
            raise ValueError(f"unknown fused_layout {fused_layout!r}; known: {sorted(FUSED_NAMES)}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
        if (swiglu_alpha, swiglu_limit) != (GPTOSS_ALPHA, GPTOSS_LIMIT):
            # The kernels bake in GPT-OSS's constants (config.swiglu_alpha / swiglu_limit).
            raise ValueError(
                f"swiglu_alpha={swiglu_alpha}, swiglu_limit={swiglu_limit}: only GPT-OSS's "
                f"{GPTOSS_ALPHA}, {GPTOSS_LIMIT} are supported"
            )
        for name, rank, size, total in (
            ("tensor", tp_rank, tp_size, intermediate_size),
            ("expert", ep_rank, ep_size, num_experts),
        ):
            if not 0 <= rank < size:
                raise ValueError(f"{name}-parallel rank {rank} is outside size {size}")
            if total % size:
                what = "moe_intermediate_size" if name == "tensor" else "num_experts"
                raise ValueError(f"{what}={total} is not divisible by {name}-parallel size {size}")
        self.num_experts, self.top_k, self.hidden_size = num_experts, top_k, hidden_size
        self.intermediate_size, self.activation = intermediate_size, activation
        self.fused_layout, self.reduce_results = fused_layout, reduce_results
        self.tp_rank, self.tp_size, self.tp_group = tp_rank, tp_size, tp_group
        self.ep_rank, self.ep_size, self.ep_group = ep_rank, ep_size, ep_group
        self.local_experts = num_experts // ep_size
        self.first_expert = ep_rank * self.local_experts
        self.inter_local = intermediate_size // tp_size

        e, i, h = self.local_experts, self.inter_local, hidden_size
        self.w13 = self._param(e, 2 * i, h)
        self.w2 = self._param(e, h, i)
        self.b13 = self._param(e, 2 * i) if has_bias else None
        self.b2 = self._param(e, h) if has_bias else None
        self._loaded_parts: set[tuple[int, str]] = set()  # (local expert, "w1" | "w3" | ...)

    def _param(self, *shape: int) -> nn.Parameter:
        p = nn.Parameter(torch.empty(*shape), requires_grad=False)
        p.weight_loader = self.weight_loader
        return p

    # ------------------------------------------------------------------ forward
    def forward(
        self, hidden: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor:
        """hidden [T, H]; topk_weights [T, k] fp32; topk_ids [T, k] int32 (global expert ids)."""
        if self.ep_size > 1:  # global -> local expert ids; other ranks' experts become -1
            local = topk_ids - self.first_expert
            topk_ids = torch.where((local >= 0) & (local < self.local_experts), local, -1)
        b2 = self.b2 if self.tp_rank == 0 else None  # added once across tensor-parallel ranks
        out = kernels.fused_moe(
            hidden, self.w13, self.w2, topk_weights, topk_ids, self.activation, self.b13, b2
        )
        if self.reduce_results:
            if self.tp_size > 1:
                torch.distributed.all_reduce(out, group=self.tp_group)
            if self.ep_size > 1:
                torch.distributed.all_reduce(out, group=self.ep_group)
        return out

    # ------------------------------------------------------------------ loading
    def load_checkpoint_tensor(self, name: str, loaded: torch.Tensor) -> None:
        """``name`` is relative to this module: "7.gate_proj.weight", "gate_up_proj", ..."""
        for pattern, (param_name, shard) in PER_EXPERT_NAMES.items():
            m = re.fullmatch(pattern, name)
            if m:
                self.weight_loader(self._get(param_name, name), loaded, shard, int(m.group(1)))
                return
        fused = FUSED_NAMES[self.fused_layout]
        if name in fused:
            param_name, shard = fused[name]
            self.weight_loader(self._get(param_name, name), loaded, shard)
            return
        raise ValueError(
            f"unknown MoE expert tensor {name!r} (layout {self.fused_layout!r}); known: "
            f"{list(PER_EXPERT_NAMES)} and {list(fused)}"
        )

    def _get(self, param_name: str, name: str) -> nn.Parameter:
        param = getattr(self, param_name)
        if param is None:
            raise ValueError(f"checkpoint tensor {name!r} is a bias but the layer has none")
        return param

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str, expert_id: int | None = None
    ) -> None:
        """Copies this rank's part of a checkpoint tensor. Per-expert shards ("w1", "w3", "w2",
        "b1", "b3", "b2") take ``expert_id`` (global); whole-layer ones end in "_all"."""
        if shard_id.endswith("_all"):
            for e in range(self.local_experts):
                self._load_expert_all(param, loaded, shard_id, self.first_expert + e)
            return
        if expert_id is None:
            raise ValueError(f"shard {shard_id!r} needs an expert_id")
        if not 0 <= expert_id < self.num_experts:
            raise ValueError(f"expert_id={expert_id} is outside [0, {self.num_experts})")
        local = expert_id - self.first_expert
        if not 0 <= local < self.local_experts:
            return  # another expert-parallel rank's expert
        self._load_shard(param, local, loaded, shard_id)

    def _load_expert_all(self, param, loaded: torch.Tensor, shard_id: str, expert: int) -> None:
        if loaded.shape[0] != self.num_experts:
            raise ValueError(
                f"{shard_id} tensor has {loaded.shape[0]} experts, expected {self.num_experts}"
            )
        local, src, i = expert - self.first_expert, loaded[expert], self.intermediate_size
        if shard_id == "w13_all":  # [2I, H] = [gate | up]
            self._load_shard(param, local, src[:i], "w1")
            self._load_shard(param, local, src[i:], "w3")
        elif shard_id == "w2_all":
            self._load_shard(param, local, src, "w2")
        elif shard_id == "gptoss_w13_all":  # [H, 2I], gate/up interleaved columns
            self._load_shard(param, local, src[:, 0::2].T, "w1")
            self._load_shard(param, local, src[:, 1::2].T, "w3")
        elif shard_id == "gptoss_b13_all":  # [2I] interleaved
            self._load_shard(param, local, src[0::2], "b1")
            self._load_shard(param, local, src[1::2], "b3")
        elif shard_id == "gptoss_w2_all":  # [I, H]
            self._load_shard(param, local, src.T, "w2")
        elif shard_id == "b2_all":
            self._load_shard(param, local, src, "b2")
        else:
            raise ValueError(f"unknown whole-layer shard {shard_id!r}")

    def _load_shard(self, param, local: int, src: torch.Tensor, shard_id: str) -> None:
        """Copies this rank's part of one expert's full checkpoint tensor ``src`` into
        ``param[local]``."""
        dst = param.data[local]
        i, il, r = self.intermediate_size, self.inter_local, self.tp_rank
        if shard_id in ("w1", "w3", "b1", "b3"):
            expected = (i, self.hidden_size) if shard_id[0] == "w" else (i,)
            offset = 0 if shard_id in ("w1", "b1") else il
            target = dst.narrow(0, offset, il)
            piece = src.narrow(0, r * il, il) if tuple(src.shape) == expected else None
        elif shard_id == "w2":
            expected = (self.hidden_size, i)
            target = dst
            piece = src.narrow(1, r * il, il) if tuple(src.shape) == expected else None
        elif shard_id == "b2":
            expected, target = (self.hidden_size,), dst
            piece = src if tuple(src.shape) == expected else None
        else:
            raise ValueError(f"unknown MoE shard_id {shard_id!r}")
        if piece is None:
            raise ValueError(f"{shard_id} tensor of shape {tuple(src.shape)}, expected {expected}")
        target.copy_(piece)
        self._loaded_parts.add((local, shard_id))

    def missing_checkpoint_parts(self) -> list[str]:
        """What no checkpoint tensor has filled yet, e.g. ["expert 3 up (w3)"]; the model
        loader's completeness check asks this instead of looking at w13/w2 by name."""
        parts = ["w1", "w3", "w2"] + (["b1", "b3", "b2"] if self.b13 is not None else [])
        names = {"w1": "gate", "w3": "up", "w2": "down", "b1": "gate bias", "b3": "up bias"}
        names["b2"] = "down bias"
        return [
            f"expert {self.first_expert + e} {names[p]} ({p})"
            for e in range(self.local_experts)
            for p in parts
            if (e, p) not in self._loaded_parts
        ]

    def extra_repr(self) -> str:
        return (
            f"experts={self.local_experts}/{self.num_experts}, top_k={self.top_k}, "
            f"hidden={self.hidden_size}, inter={self.inter_local}/{self.intermediate_size}, "
            f"act={self.activation}, bias={self.b13 is not None}, "
            f"tp={self.tp_rank}/{self.tp_size}, ep={self.ep_rank}/{self.ep_size}"
        )
