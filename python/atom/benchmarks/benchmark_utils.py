"""Result helpers shared by the benchmarks: the PyTorch OSS benchmark database format and a JSON
writer that survives ``inf`` (a request rate of ``inf`` is common) and numpy scalars."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from atom import envs


def convert_to_pytorch_benchmark_format(
    args: argparse.Namespace, metrics: dict[str, list], extra_info: dict[str, Any]
) -> list[dict[str, Any]]:
    """One record per metric, in the schema of the PyTorch OSS benchmark database
    (github.com/pytorch/pytorch/wiki/How-to-integrate-with-PyTorch-OSS-benchmark-database):
    ``{"benchmark": {"name", "extra_info": {"args"}}, "model": {"name"},
    "metric": {"name", "benchmark_values", "extra_info"}}``.

    Returns [] unless ``$SAVE_TO_PYTORCH_BENCHMARK_FORMAT`` is set, so callers can always call it.
    """
    if not envs.save_pytorch_benchmark_format():
        return []
    records = []
    arg_values = {k: _jsonable(v) for k, v in vars(args).items()}
    for name, values in metrics.items():
        if not isinstance(values, list):
            raise ValueError(f"metric {name!r}: values must be a list, got {type(values).__name__}")
        records.append(
            {
                "benchmark": {"name": "atom benchmark", "extra_info": {"args": arg_values}},
                "model": {"name": getattr(args, "model", None)},
                "metric": {
                    "name": name,
                    "benchmark_values": [_jsonable(v) for v in values],
                    "extra_info": {k: _jsonable(v) for k, v in extra_info.items()},
                },
            }
        )
    return records


def _jsonable(value: Any) -> Any:
    """inf/nan become strings ("inf"), numpy scalars become Python numbers; the rest recurses."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_to_json(filename: str | os.PathLike, records: Any) -> None:
    path = Path(filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(records), indent=2) + "\n")
