"""One real server process for the whole session: the embedded SmolLM2 on 127.0.0.1, a free port,
an API key, a small KV cache, a 512-token context, prefix caching, and a torch profiler directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-123"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MAX_MODEL_LEN = 512
NUM_KV_BLOCKS = 384
MAX_REQUEST_BYTES = 1_000_000
_STARTUP_TIMEOUT_S = 300


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    api_key: str
    model: str
    max_model_len: int
    profile_dir: Path
    log_path: Path
    process: subprocess.Popen
    max_request_bytes: int = MAX_REQUEST_BYTES

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=30).json()

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_until_idle(self, timeout_s: float = 30.0) -> dict:
        """/health once no request runs or waits and every KV block is free again."""
        deadline = time.monotonic() + timeout_s
        while True:
            engine = self.health()["engine"]
            idle = engine["running"] == 0 and engine["waiting"] == 0
            if idle and engine["free_blocks"] == engine["total_blocks"]:
                return engine
            if time.monotonic() > deadline:
                raise AssertionError(f"the engine did not become idle: {engine}")
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    port = _free_port()
    work = tmp_path_factory.mktemp("server")
    profile_dir = work / "traces"
    log_path = work / "server.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "python"), env.get("PYTHONPATH")]))
    env.pop("ATOM_API_KEY", None)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tools/run_tests.sh
    cmd = [
        sys.executable, "-m", "atom.entrypoints.openai_server",
        "--host", "127.0.0.1", "--server-port", str(port), "--api-key", API_KEY,
        "--max-model-len", str(MAX_MODEL_LEN), "--num-kv-blocks", str(NUM_KV_BLOCKS),
        "--max-request-bytes", str(MAX_REQUEST_BYTES),
        "--torch-profiler-dir", str(profile_dir), "--uvicorn-log-level", "warning",
        "--enable-prefix-caching",
    ]  # fmt: skip
    with log_path.open("w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    srv = Server(f"http://127.0.0.1:{port}", API_KEY, MODEL, MAX_MODEL_LEN, profile_dir, log_path,
                 process)  # fmt: skip
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}):\n{srv.log_tail()}")
            try:
                if httpx.get(srv.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not come up:\n{srv.log_tail()}")
            time.sleep(0.5)
        yield srv
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def engine():
    """An in-process LLMEngine of the same model, the reference the server's answers must equal."""
    from atom import LLMEngine

    return LLMEngine(num_kv_blocks=128, max_model_len=MAX_MODEL_LEN)


@pytest.fixture(scope="session")
def tokenizer(engine):
    return engine.tokenizer


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0,
                         timeout=120)  # fmt: skip
