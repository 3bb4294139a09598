"""lm-eval against the server: the real `lm_eval --model local-completions` on two tiny local tasks
(a log-likelihood task and a generation task), and the requests lm-eval sends replayed from a
recorded file (tests/entrypoints/data/lm_eval_requests.json), both checked against LLMEngine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from atom import SamplingParams

DATA = Path(__file__).parent / "data"


def engine_loglikelihoods(engine, pairs: list[tuple[str, str]]) -> list[float]:
    """What lm-eval computes for each (context, continuation): the summed logprob of the
    continuation's tokens after the context, tokenized as lm-eval does (the whole text, then the
    context's length)."""
    tok = engine.tokenizer
    wholes = [tok.encode(c + x, add_special_tokens=False) for c, x in pairs]
    ctxlens = [len(tok.encode(c, add_special_tokens=False)) for c, _ in pairs]
    refs = engine.generate(wholes, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0))
    return [
        sum(ref["prompt_logprobs"][i][whole[i]] for i in range(ctxlen, len(whole)))
        for ref, whole, ctxlen in zip(refs, wholes, ctxlens)
    ]


def engine_greedy(engine, prompts: list[str], max_tokens: int, stop: list[str]) -> list[str]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, stop_strings=stop)
    return [r["text"] for r in engine.generate(prompts, params)]


# ---- the recorded requests, replayed ---------------------------------------------------------
def parse_logprobs(choice: dict, ctxlen: int, scoring_only: bool) -> tuple[float, bool]:
    """lm-eval's LocalCompletionsAPI.parse_logprobs for one choice."""
    end = None if scoring_only else -1  # the one generated token is not part of the continuation
    token_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:end]
    top = choice["logprobs"]["top_logprobs"][ctxlen:end]
    greedy = all(lp == max(t.values()) for lp, t in zip(token_logprobs, top))
    return sum(token_logprobs), greedy


def test_replayed_lm_eval_requests(server, engine):
    recorded = json.loads((DATA / "lm_eval_requests.json").read_text())
    tok = engine.tokenizer
    headers = server.headers
    for item in recorded["loglikelihood"]:
        body = item["body"]
        resp = httpx.post(server.url + "/v1/completions", json=body, headers=headers, timeout=120)
        assert resp.status_code == 200, resp.text
        choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
        assert len(choices) == len(item["continuations"])
        ctxlen = len(tok.encode(item["context"], add_special_tokens=False))
        pairs = [(item["context"], x) for x in item["continuations"]]
        expected = engine_loglikelihoods(engine, pairs)
        for choice, continuation, ll_ref in zip(choices, item["continuations"], expected):
            assert choice["text"].startswith(item["context"] + continuation)
            ll, _ = parse_logprobs(choice, ctxlen, scoring_only=body["max_tokens"] == 0)
            assert ll == pytest.approx(ll_ref, abs=1e-3)
    for item in recorded["generate_until"]:
        body = item["body"]
        resp = httpx.post(server.url + "/v1/completions", json=body, headers=headers, timeout=120)
        assert resp.status_code == 200, resp.text
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        texts = [c["text"] for c in sorted(resp.json()["choices"], key=lambda c: c["index"])]
        expected = engine_greedy(engine, prompts, body["max_tokens"], body["stop"])
        assert texts == expected
        assert all(not any(s in t for s in body["stop"]) for t in texts)


# ---- the real lm-eval ------------------------------------------------------------------------
def _write_tasks(folder: Path) -> None:
    tasks = json.loads((DATA / "lm_eval_tasks.json").read_text())
    for name, rows in (("mc", tasks["multiple_choice"]), ("gen", tasks["generation"])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = "dataset_path: json\ntest_split: test\n"
    (folder / "atom_tiny_mc.yaml").write_text(
        "task: atom_tiny_mc\n" + common
        + f"dataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        + "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        + "metric_list:\n  - metric: acc\n"
    )  # fmt: skip
    (folder / "atom_tiny_gen.yaml").write_text(
        "task: atom_tiny_gen\n" + common
        + f"dataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        + "output_type: generate_until\n"
        + "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_target: ' {{answer}}'\n"
        + "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 16\n  do_sample: false\n"
        + "metric_list:\n  - metric: exact_match\n"
    )  # fmt: skip


@pytest.mark.slow
def test_lm_eval_local_completions(server, engine, tmp_path):
    pytest.importorskip("lm_eval")
    lm_eval = shutil.which("lm_eval") or str(Path(sys.executable).parent / "lm_eval")
    _write_tasks(tmp_path)
    out = tmp_path / "out"
    model_args = (f"model={server.model},base_url={server.url}/v1/completions,num_concurrent=2,"
                  "max_retries=1,tokenized_requests=False")  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": server.api_key, "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"),
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    cmd = [lm_eval, "--model", "local-completions", "--model_args", model_args,
           "--include_path", str(tmp_path), "--tasks", "atom_tiny_mc,atom_tiny_gen",
           "--output_path", str(out), "--log_samples"]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    sample_files = list(out.rglob("samples_*.jsonl"))
    assert len(sample_files) == 2
    for path in sample_files:
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            doc = sample["doc"]
            if "choices" in doc:  # log-likelihood: each choice scored like the engine does
                pairs = [(doc["question"], " " + choice) for choice in doc["choices"]]
                expected = engine_loglikelihoods(engine, pairs)
                got = [float(resp[0][0]) for resp in sample["resps"]]
                assert got == pytest.approx(expected, abs=1e-3)
            else:  # generation: lm-eval's answer is the engine's greedy answer
                prompt = f"Question: {doc['question']}\nAnswer:"
                assert sample["resps"][0][0] == engine_greedy(engine, [prompt], 16, ["\n"])[0]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert "acc,none" in results["atom_tiny_mc"]
    assert "exact_match,none" in results["atom_tiny_gen"]
