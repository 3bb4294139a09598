"""MXFP4-packed checkpoint tensors (GPT-OSS's experts), dequantised while loading.

Format (OCP Microscaling MXFP4, as the gpt-oss checkpoints store it): a weight W [..., R, C] is
kept as two tensors,
    NAME_blocks [..., R, C / 32, 16] uint8: 32 FP4 (E2M1) codes per block, two per byte, the low
                nibble first (element 2j in the low 4 bits of byte j, 2j + 1 in the high bits);
    NAME_scales [..., R, C / 32]     uint8: one shared power of two per block, biased by 127;
and W[..., r, 32 g + i] = FP4(code_i) * 2^(scale[r, g] - 127), FP4 codes 0..15 meaning
    0, 0.5, 1, 1.5, 2, 3, 4, 6, and the same with the sign bit (code | 8) set.
GPT-OSS stores its experts this way in nn.Linear orientation ([E, 2I, H] for gate_up, [E, H, I]
for down); the bf16 checkpoints that transformers writes hold the transposes ([E, H, 2I] and
[E, I, H], named without the suffix). ``dequantize_packed_pairs`` turns each (blocks, scales) pair
of a checkpoint stream into that bf16 tensor, so the models load one layout.

Every value is exact in bf16 (FP4 has 2 mantissa bits and bf16's exponent range is fp32's).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_SUFFIXES = ("_blocks", "_scales")


def dequantize_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """blocks [..., R, G, 16] uint8, scales [..., R, G] uint8 -> W [..., R, 32 G] in ``dtype``."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"MXFP4 blocks/scales must be uint8, got {blocks.dtype}/{scales.dtype}")
    if (
        blocks.dim() < 2
        or blocks.shape[-1] != 16
        or tuple(blocks.shape[:-1]) != tuple(scales.shape)
    ):
        raise ValueError(
            f"MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not pair: "
            "expected blocks [..., G, 16] and scales [..., G]"
        )
    if blocks.dim() > 3:  # one leading slice (expert) at a time: the fp32 temporaries stay small
        out = torch.empty(
            *blocks.shape[:-2], blocks.shape[-2] * 32, dtype=dtype, device=blocks.device
        )
        for i in range(blocks.shape[0]):
            out[i] = dequantize_mxfp4(blocks[i], scales[i], dtype)
        return out
    magnitudes = torch.tensor(FP4_E2M1_VALUES, dtype=torch.float32, device=blocks.device)
    lut = torch.cat([magnitudes, -magnitudes])  # code -> value; bit 3 is the sign
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).flatten(-2)  # [R, G, 32]
    values = lut[codes.long()]
    exponents = scales.to(torch.int32) - 127
    values = torch.ldexp(values, exponents.unsqueeze(-1).to(torch.float32))
    return values.flatten(-2).to(dtype)  # [R, 32 G]


def dequantize_packed_pairs(
    weights: Iterable[tuple[str, torch.Tensor]],
) -> Iterator[tuple[str, torch.Tensor]]:
    """Passes (name, tensor) pairs through, except that ``X_blocks`` and ``X_scales`` (uint8) are
    held until both have arrived and then yielded as one ``X``: the dequantised weight with its
    last two dims swapped (the bf16 checkpoint layout, see the module docstring). A pair left
    incomplete at the end raises ValueError naming it."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        suffix = next((s for s in _SUFFIXES if name.endswith(s)), None)
        if suffix is None or tensor.dtype != torch.uint8:
            yield name, tensor
            continue
        base = name[: -len(suffix)]
        parts = pending.setdefault(base, {})
        parts[suffix] = tensor
        if len(parts) == 2:
            del pending[base]
            weight = dequantize_mxfp4(parts["_blocks"], parts["_scales"])
            yield base, weight.transpose(-1, -2).contiguous()
    if pending:
        raise ValueError(
            "MXFP4 checkpoint tensors without their pair: "
            + ", ".join(f"{base}{next(iter(parts))}" for base, parts in pending.items())
        )
