"""Loading checkpoint tensors into a model's parameters.

A model declares how checkpoint names map onto its parameters, as data:
- ``packed_modules_mapping``: {checkpoint module name: (merged module name, shard id)}, e.g.
  {"q_proj": ("qkv_proj", "q"), "gate_proj": ("gate_up_proj", 0)}; the merged parameter's
  ``weight_loader(param, tensor, shard_id)`` puts the tensor into its slice (and this rank's shard).
- ``checkpoint_renames`` (optional): {checkpoint module name: ATOM module name}, for plain renames.
- ``skip_checkpoint_weights`` (optional): regexes of checkpoint names to ignore (e.g. rotary
  ``inv_freq`` buffers that old checkpoints saved).
Names match whole dot-separated components, so "q_proj" never matches "q_proj_a".

A module that owns a set of checkpoint names (e.g. FusedMoE: "experts.7.gate_proj.weight" or a
fused "experts.gate_up_proj") says so by having ``load_checkpoint_tensor(relative name, tensor)``;
every checkpoint tensor under such a module's name goes there (after the renames, before the
packed mapping), and its ``missing_checkpoint_parts()`` replaces the per-parameter completeness
check for its parameters.

MXFP4-packed pairs (``X_blocks`` + ``X_scales``, GPT-OSS's experts) arrive dequantised, as the
bf16 tensor ``X`` (atom/loader/mxfp4.py).

Every other parameter is loaded by its ``weight_loader(param, tensor)`` (sharded layers) or a
plain shape-checked copy. A checkpoint tensor that maps to no parameter, or a parameter that no
tensor fills, raises ValueError naming it. With tied embeddings the LM head shares the embedding
parameter; a checkpoint's separate lm_head.weight is then skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from atom.layers.linear import default_weight_loader
from atom.loader.mxfp4 import dequantize_packed_pairs

_ALWAYS_SKIPPED = (r"rotary_emb\.inv_freq$",)


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's files: those named by model.safetensors.index.json if there is one, else
    model.safetensors, else every *.safetensors file of the folder (but consolidated*)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [model_dir / name for name in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{str(index)!r} names missing shards: {missing}")
        return files
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    # Mistral-style repos also ship consolidated.safetensors: the same weights under other names.
    files = sorted(
        f for f in model_dir.glob("*.safetensors") if not f.name.startswith("consolidated")
    )
    if not files:
        raise ValueError(f"no *.safetensors weights in {str(model_dir)!r}")
    return files


def iterate_safetensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor on the CPU) for every tensor of the checkpoint, one shard open at a time."""
    from safetensors import safe_open

    for file in safetensors_files(model_dir):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118  (safe_open is not a mapping)
                yield name, f.get_tensor(name)


def _rename(name: str, renames: dict[str, str]) -> str:
    parts = name.split(".")
    return ".".join(renames.get(p, p) for p in parts)


def _packed_target(name: str, mapping: dict[str, tuple[str, object]]) -> tuple[str, object] | None:
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in mapping:
            merged, shard_id = mapping[part]
            return ".".join([*parts[:i], merged, *parts[i + 1 :]]), shard_id
    return None


def load_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Loads (checkpoint name, tensor) pairs into ``model`` (see the module docstring)."""
    params = dict(model.named_parameters())
    packed = getattr(model, "packed_modules_mapping", {})
    renames = getattr(model, "checkpoint_renames", {})
    skips = [
        re.compile(p) for p in (*_ALWAYS_SKIPPED, *getattr(model, "skip_checkpoint_weights", ()))
    ]
    tied = getattr(model, "tie_word_embeddings", False)
    owners = _checkpoint_owners(model)
    filled: set[str] = set()
    for ckpt_name, tensor in dequantize_packed_pairs(weights):
        if any(p.search(ckpt_name) for p in skips):
            continue
        name = _rename(ckpt_name, renames)
        owned = _owner_of(name, owners)
        if owned is not None:
            owner, relative = owned
            try:
                owners[owner].load_checkpoint_tensor(relative, tensor)
            except ValueError as e:
                raise ValueError(
                    f"cannot load checkpoint weight {ckpt_name!r} into {owner!r}: {e}"
                ) from e
            continue
        target = _packed_target(name, packed)
        if target is not None:
            name, shard_id = target
        if name not in params:
            if tied and name == "lm_head.weight":
                continue  # the LM head is the embedding table
            raise ValueError(f"checkpoint weight {ckpt_name!r} matches no parameter of the model")
        param = params[name]
        loader = getattr(param, "weight_loader", None)
        try:
            if target is not None:
                loader(param, tensor, shard_id)
            elif loader is not None:
                loader(param, tensor)
            else:
                default_weight_loader(param, tensor)
        except ValueError as e:
            raise ValueError(
                f"cannot load checkpoint weight {ckpt_name!r} into {name!r}: {e}"
            ) from e
        filled.add(name if target is None else f"{name}[{shard_id}]")
    _check_complete(params, packed, filled, owners)


def _checkpoint_owners(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that load their own checkpoint tensors, by dotted name."""
    return {
        name: module
        for name, module in model.named_modules()
        if name and callable(getattr(module, "load_checkpoint_tensor", None))
    }


def _owner_of(name: str, owners: dict[str, nn.Module]) -> tuple[str, str] | None:
    """(owner module name, name relative to it) for the innermost owner above ``name``."""
    if not owners:
        return None
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in owners:
            return prefix, ".".join(parts[i:])
    return None


def _check_complete(
    params: dict[str, nn.Parameter],
    packed: dict,
    filled: set[str],
    owners: dict[str, nn.Module] | None = None,
) -> None:
    shards_of: dict[str, set] = {}
    for merged, shard_id in packed.values():
        shards_of.setdefault(merged, set()).add(shard_id)
    missing = []
    for owner_name, owner in (owners or {}).items():
        parts = getattr(owner, "missing_checkpoint_parts", lambda: [])()
        missing += [f"{owner_name}: {part}" for part in parts]
    for name in params:
        if owners and _owner_of(name, owners) is not None:
            continue  # the owner module answered above
        module = name.rpartition(".")[0].rpartition(".")[2]
        if module in shards_of and name not in filled:  # filled by parts, or whole (pre-merged)
            missing += [f"{name}[{s}]" for s in shards_of[module] if f"{name}[{s}]" not in filled]
        elif name not in filled:
            missing.append(name)
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(f"the checkpoint has no weights for {len(missing)} parameters: {shown}")


_CPU_DRAW_LIMIT = 1 << 22


def load_dummy_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Fills every parameter with seeded N(0, std^2) values (norm weights with 1 + N(0, std^2)).

    Parameters up to ``_CPU_DRAW_LIMIT`` elements are drawn on the CPU in fp32, so a small model gets
    the same weights on every device (tests rely on it); larger ones are drawn on their own device,
    since drawing an 8B model on the CPU takes minutes (same seed, same device: same weights)."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        device = param.device if param.numel() > _CPU_DRAW_LIMIT else torch.device("cpu")
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(seed)
        values = torch.randn(
            param.shape, generator=generators[device], dtype=torch.float32, device=device
        )
        values *= std
        owner = name.rpartition(".")[0].rpartition(".")[2]  # "input_layernorm" of "...weight"
        if "norm" in owner:
            values += 1.0
        param.data.copy_(values)
