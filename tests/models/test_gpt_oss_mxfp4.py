"""GPT-OSS checkpoints with MXFP4-packed experts (``*_blocks`` / ``*_scales``, as openai/gpt-oss
ships them) load as their exact bf16 dequantisation: the dequantiser equals transformers' own
(integrations/mxfp4.convert_moe_packed_tensors), and a tiny GPT-OSS saved with packed experts
loads into the same weights as the same model saved unpacked."""

from __future__ import annotations

import shutil

import pytest
import torch
from hf_compare import REPO, atom_model, build_tiny_hf, save_tokenizer, tiny_config

from atom.loader.mxfp4 import FP4_E2M1_VALUES, dequantize_mxfp4, dequantize_packed_pairs

CONFIG = REPO / "models" / "gpt_oss" / "tiny_config.json"


def quantize_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [..., R, C] (C % 32 == 0) -> (blocks [..., R, C/32, 16], scales [..., R, C/32]) uint8:
    per block of 32, the power of two that brings the largest |value| to at most 6, then each
    value rounded to the nearest FP4 magnitude with its sign (the format of atom/loader/mxfp4)."""
    g = w.float().reshape(*w.shape[:-1], w.shape[-1] // 32, 32)
    amax = g.abs().amax(dim=-1)
    exponent = torch.where(amax > 0, torch.ceil(torch.log2(amax / 6.0)), torch.zeros_like(amax))
    exponent = exponent.clamp(-127, 127)
    scaled = g / torch.exp2(exponent).unsqueeze(-1)
    magnitudes = torch.tensor(FP4_E2M1_VALUES)
    code = (scaled.abs().unsqueeze(-1) - magnitudes).abs().argmin(dim=-1)
    code = code + 8 * (scaled < 0).long()
    packed = (code[..., 0::2] | (code[..., 1::2] << 4)).to(torch.uint8)
    return packed, (exponent + 127).to(torch.uint8)


def test_dequantize_equals_transformers():
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 10, 4, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(110, 140, (3, 10, 4), generator=g, dtype=torch.uint8)
    ours = dequantize_mxfp4(blocks, scales)
    assert ours.shape == (3, 10, 128) and ours.dtype == torch.bfloat16
    ref = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)  # [3, 128, 10]
    assert torch.equal(ours.transpose(1, 2), ref)


def test_quantize_round_trip_is_exact_on_representable_values():
    g = torch.Generator().manual_seed(1)
    values = torch.tensor(FP4_E2M1_VALUES)[torch.randint(0, 8, (5, 64), generator=g)]
    signs = torch.where(torch.rand(5, 64, generator=g) < 0.5, -1.0, 1.0)
    scale = 2.0 ** torch.randint(-6, 4, (5, 1), generator=g).float()
    w = values * signs * scale
    w[:, ::32] = 6.0 * scale  # each block's largest magnitude is 6 * its scale
    assert torch.equal(dequantize_mxfp4(*quantize_mxfp4(w)).float(), w)


def test_incomplete_pair_is_named():
    pair = quantize_mxfp4(torch.randn(2, 32))
    with pytest.raises(ValueError, match="experts.down_proj_blocks"):
        list(dequantize_packed_pairs([("experts.down_proj_blocks", pair[0])]))
    with pytest.raises(ValueError, match="do not pair"):
        dequantize_mxfp4(pair[0], pair[1][:, :0])


def test_packed_checkpoint_loads_the_same_weights(tmp_path):
    """The HF model's experts are set to MXFP4-representable values and saved twice: unpacked
    (transformers' bf16 layout) and packed like the gpt-oss checkpoints."""
    from safetensors.torch import load_file, save_file

    model = build_tiny_hf(tiny_config(CONFIG), seed=0)
    packed = {}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for name in ("gate_up_proj", "down_proj"):
                param = getattr(layer.mlp.experts, name)  # [E, in, out]
                blocks, scales = quantize_mxfp4(param.transpose(1, 2))  # along the input dim
                param.copy_(dequantize_mxfp4(blocks, scales).float().transpose(1, 2))
                prefix = f"model.layers.{i}.mlp.experts.{name}"
                packed[prefix + "_blocks"], packed[prefix + "_scales"] = blocks, scales
    unpacked_dir, packed_dir = tmp_path / "unpacked", tmp_path / "packed"
    model.save_pretrained(unpacked_dir)
    save_tokenizer(unpacked_dir, 256)
    shutil.copytree(unpacked_dir, packed_dir)
    tensors = load_file(unpacked_dir / "model.safetensors")
    for name in packed:
        tensors.pop(name.removesuffix("_blocks").removesuffix("_scales"), None)
    save_file({**tensors, **packed}, packed_dir / "model.safetensors", metadata={"format": "pt"})

    reference = atom_model(unpacked_dir).state_dict()
    loaded = atom_model(packed_dir).state_dict()
    assert reference.keys() == loaded.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, loaded[name]), name
    assert loaded["model.layers.1.mlp.experts.w13"].abs().sum() > 0
