"""Benchmark prompts: sharegpt, burstgpt, sonnet, random and hf, read from LOCAL files only.

Every sampler returns ``SampleRequest``s (prompt text, its token count, the output length to ask
for) and is deterministic for a given seed. Formats:

- sharegpt: a JSON list of ``{"conversations": [{"from": "human", "value"}, {"from": "gpt", ...}]}``;
  the first human turn is the prompt, the reply's token count the output length (unless given).
  As in vLLM, pairs with < 4 tokens on either side, prompt > 1024 or prompt + output > 2048 tokens
  are skipped when the output length comes from the data.
- burstgpt: the BurstGPT CSV (``Model, Request tokens, Response tokens, ...``); rows of one model
  (GPT-4 when present) give the lengths, the prompts are random tokens of that length.
- sonnet: a text file of lines; each prompt asks to pick lines from a random selection, the first
  ``prefix_len`` tokens' worth of lines shared by all prompts; chat-formatted when asked.
- random: random token ids (special tokens excluded) decoded to text, optionally after a shared
  random prefix; lengths uniform in ``[input_len * range_ratio, input_len]``.
- hf: a dataset saved on disk (``datasets.save_to_disk`` folder) or a local .json/.jsonl/.csv/
  .parquet file, with a ``conversations`` column (ShareGPT form) or a prompt column
  (``prompt``, ``question``, ``instruction``, ``input`` or ``text``).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SONNET_BASE_PROMPT = "Pick as many lines as you can from these poem lines:\n"
_PROMPT_COLUMNS = ("prompt", "question", "instruction", "input", "text")


@dataclass
class SampleRequest:
    prompt: str
    prompt_len: int  # tokens, counted with the benchmark's tokenizer (no special tokens)
    expected_output_len: int


def _local_path(path: str | None, dataset: str) -> Path:
    if not path:
        raise ValueError(f"--dataset-path is required for the {dataset!r} dataset")
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(
            f"dataset path {path!r} does not exist; the benchmark reads local files only "
            "(download the dataset yourself first)"
        )
    return p


def _num_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def _text_of_length(tokenizer, token_ids: list[int], target: int) -> tuple[str, int]:
    """Text that re-tokenizes to about ``target`` tokens. Decoding random ids and encoding the
    text again merges or splits some tokens, so trim (or pad with the original ids) and retry."""
    ids = list(token_ids)
    text = tokenizer.decode(ids)
    for _ in range(4):
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == target:
            break
        if len(encoded) > target:
            encoded = encoded[:target]
        else:
            encoded = encoded + ids[: target - len(encoded)]
        text = tokenizer.decode(encoded)
    return text, _num_tokens(tokenizer, text)


def _ordinary_token_ids(tokenizer) -> np.ndarray:
    special = set(tokenizer.all_special_ids)
    return np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)


def sample_random(
    tokenizer,
    num_requests: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 1.0,
    prefix_len: int = 0,
    seed: int = 0,
) -> list[SampleRequest]:
    if not 0.0 <= range_ratio <= 1.0:
        raise ValueError(f"--random-range-ratio {range_ratio} must be in [0, 1]")
    if input_len < 1 or output_len < 1 or prefix_len < 0:
        raise ValueError(f"random lengths must be positive: input {input_len}, output {output_len}")
    rng = np.random.default_rng(seed)
    vocab = _ordinary_token_ids(tokenizer)
    prefix = vocab[rng.integers(0, len(vocab), prefix_len)].tolist()
    input_lens = rng.integers(int(input_len * range_ratio), input_len + 1, num_requests)
    output_lens = rng.integers(max(1, int(output_len * range_ratio)), output_len + 1, num_requests)
    requests = []
    for i in range(num_requests):
        ids = prefix + vocab[rng.integers(0, len(vocab), int(input_lens[i]))].tolist()
        text, n = _text_of_length(tokenizer, ids, prefix_len + int(input_lens[i]))
        requests.append(SampleRequest(text, n, int(output_lens[i])))
    return requests


def _sharegpt_pairs(conversations: list[dict]) -> tuple[str, str] | None:
    turns = [t.get("value", t.get("content", "")) for t in conversations]
    return (turns[0], turns[1]) if len(turns) >= 2 else None


def _sample_pairs(
    pairs: list[tuple[str, str]],
    tokenizer,
    num_requests: int,
    output_len: int | None,
    seed: int,
) -> list[SampleRequest]:
    random.Random(seed).shuffle(pairs)
    requests: list[SampleRequest] = []
    for prompt, completion in pairs:
        if len(requests) == num_requests:
            break
        prompt_len = _num_tokens(tokenizer, prompt)
        out_len = output_len if output_len is not None else _num_tokens(tokenizer, completion)
        if output_len is None and (
            prompt_len < 4 or out_len < 4 or prompt_len > 1024 or prompt_len + out_len > 2048
        ):
            continue
        requests.append(SampleRequest(prompt, prompt_len, out_len))
    if not requests:
        raise ValueError("the dataset has no usable prompts")
    # Fewer usable prompts than asked: repeat them (vLLM oversamples the same way).
    return [requests[i % len(requests)] for i in range(num_requests)]


def sample_sharegpt(
    path: str, tokenizer, num_requests: int, output_len: int | None = None, seed: int = 0
) -> list[SampleRequest]:
    data = json.loads(_local_path(path, "sharegpt").read_text())
    pairs = [p for d in data if (p := _sharegpt_pairs(d.get("conversations", [])))]
    return _sample_pairs(pairs, tokenizer, num_requests, output_len, seed)


def sample_burstgpt(
    path: str, tokenizer, num_requests: int, seed: int = 0, model: str = "GPT-4"
) -> list[SampleRequest]:
    with _local_path(path, "burstgpt").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(float(r["Response tokens"])) > 0]
    chosen = [r for r in rows if r.get("Model") == model] or rows
    if not chosen:
        raise ValueError(f"{path!r} has no rows with Response tokens > 0")
    rng = random.Random(seed)
    picks = [chosen[rng.randrange(len(chosen))] for _ in range(num_requests)]
    vocab = _ordinary_token_ids(tokenizer)
    np_rng = np.random.default_rng(seed)
    requests = []
    for row in picks:
        in_len = max(1, int(float(row["Request tokens"])))
        ids = vocab[np_rng.integers(0, len(vocab), in_len)].tolist()
        text, n = _text_of_length(tokenizer, ids, in_len)
        requests.append(SampleRequest(text, n, int(float(row["Response tokens"]))))
    return requests


def sample_sonnet(
    path: str,
    tokenizer,
    num_requests: int,
    input_len: int = 550,
    output_len: int = 150,
    prefix_len: int = 200,
    apply_chat_template: bool = True,
    seed: int = 0,
) -> list[SampleRequest]:
    lines = [x for x in _local_path(path, "sonnet").read_text().splitlines() if x.strip()]
    if not lines:
        raise ValueError(f"{path!r} has no lines")
    base_len = _num_tokens(tokenizer, SONNET_BASE_PROMPT)
    if input_len <= base_len or prefix_len < base_len:
        raise ValueError(
            f"--sonnet-input-len {input_len} and --sonnet-prefix-len {prefix_len} must exceed the "
            f"base prompt's {base_len} tokens"
        )
    avg_line = sum(_num_tokens(tokenizer, x + "\n") for x in lines) / len(lines)
    num_prefix = round((prefix_len - base_len) / avg_line)
    num_lines = max(num_prefix, round((input_len - base_len) / avg_line))
    prefix_lines = lines[:num_prefix]
    rng = random.Random(seed)
    requests = []
    for _ in range(num_requests):
        picked = prefix_lines + rng.choices(lines, k=num_lines - num_prefix)
        prompt = SONNET_BASE_PROMPT + "".join(x + "\n" for x in picked)
        if apply_chat_template and getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        requests.append(SampleRequest(prompt, _num_tokens(tokenizer, prompt), output_len))
    return requests


def _load_hf_rows(path: Path, split: str, subset: str | None) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".jsonl":
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if path.is_file() and suffix == ".json":
        data = json.loads(path.read_text())
        return data if isinstance(data, list) else data[split]
    if path.is_file() and suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    try:
        import datasets  # only for parquet files and save_to_disk folders
    except ImportError as exc:
        raise ValueError(f"reading {str(path)!r} needs the `datasets` package") from exc
    if path.is_file() and suffix == ".parquet":
        return list(datasets.load_dataset("parquet", data_files=str(path), split="train"))
    loaded = datasets.load_from_disk(str(path / subset) if subset else str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"split {split!r} not in {list(loaded)} of {str(path)!r}")
        loaded = loaded[split]
    return list(loaded)


def sample_hf(
    path: str,
    tokenizer,
    num_requests: int,
    split: str = "train",
    subset: str | None = None,
    output_len: int | None = None,
    seed: int = 0,
) -> list[SampleRequest]:
    rows = _load_hf_rows(_local_path(path, "hf"), split, subset)
    if not rows:
        raise ValueError(f"{path!r} has no rows")
    if "conversations" in rows[0]:
        pairs = [p for r in rows if (p := _sharegpt_pairs(r["conversations"]))]
        return _sample_pairs(pairs, tokenizer, num_requests, output_len, seed)
    column = next((c for c in _PROMPT_COLUMNS if c in rows[0]), None)
    if column is None:
        raise ValueError(f"{path!r} has none of the columns conversations, {_PROMPT_COLUMNS}")
    pairs = [(str(r[column]), "") for r in rows]
    return _sample_pairs(pairs, tokenizer, num_requests, output_len or 128, seed)
