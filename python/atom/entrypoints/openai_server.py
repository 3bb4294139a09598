"""The OpenAI-compatible HTTP server (seeds/003 §1; SPEC §3).

    python -m atom.entrypoints.openai_server [engine flags] [--host 0.0.0.0] [--server-port 8000]
        [--api-key KEY] [--served-model-name NAME ...]

FastAPI + Uvicorn on one event loop; the engine runs in one background thread (``AsyncEngine``),
so many concurrent requests share one engine and the event loop never waits on a model step.
``--port`` stays the engine's internal port; the HTTP port is ``--server-port``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from http import HTTPStatus
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

import atom
from atom import envs
from atom.entrypoints.async_engine import AsyncEngine, EngineDeadError
from atom.entrypoints.errors import APIError, error_response, install_error_handlers, parse_body
from atom.entrypoints.metrics import PROMETHEUS_CONTENT_TYPE, ServerMetrics
from atom.entrypoints.middleware import APIKeyAuth, BodySizeLimit
from atom.entrypoints.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from atom.entrypoints.serving_chat import create_chat_completion, render_chat
from atom.entrypoints.serving_common import ServingContext, now
from atom.entrypoints.serving_completion import create_completion

logger = logging.getLogger("atom.entrypoints.openai_server")

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
# /health waits this long for the engine thread to answer between two steps before it reports
# the last statistics it has (a long prefill step is not a dead engine).
_HEALTH_STATS_TIMEOUT_S = 2.0


def build_app(ctx: ServingContext, api_key: str | None = None,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Any:  # fmt: skip
    """The ASGI app: FastAPI routes wrapped in the auth and body-size middleware."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        ctx.engine.start(asyncio.get_running_loop())
        yield
        await asyncio.to_thread(ctx.engine.shutdown)

    app = FastAPI(
        title="ATOM OpenAI-compatible server", version=atom.__version__, lifespan=lifespan
    )
    install_error_handlers(app)

    @app.exception_handler(EngineDeadError)
    async def _engine_dead(_: Request, exc: EngineDeadError):
        return error_response(f"the engine stopped: {exc}", HTTPStatus.SERVICE_UNAVAILABLE)

    @app.get("/health")
    async def health():
        stats, fresh = ctx.engine.last_stats, False
        if ctx.engine.is_alive:
            with contextlib.suppress(asyncio.TimeoutError):
                stats = await asyncio.wait_for(ctx.engine.get_stats(), _HEALTH_STATS_TIMEOUT_S)
                fresh = True
        alive = ctx.engine.is_alive and stats.healthy
        body = {
            "status": "ok" if alive else "error",
            "error": None if alive else (ctx.engine.error or stats.error),
            "engine": {
                "running": stats.num_running,
                "waiting": stats.num_waiting,
                "free_blocks": stats.num_free_blocks,
                "total_blocks": stats.num_total_blocks,
                "kv_usage": stats.kv_usage,
                "prefix_cache_queries": stats.prefix_cache_queries,
                "prefix_cache_hits": stats.prefix_cache_hits,
                "steps": ctx.engine.num_steps,
                "stats_fresh": fresh,
            },
        }
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/v1/models")
    async def models():
        data = [
            {
                "id": name,
                "object": "model",
                "created": now(),
                "owned_by": "atom",
                "root": ctx.model_names[0],
                "max_model_len": ctx.max_model_len,
            }  # fmt: skip
            for name in ctx.model_names
        ]
        return {"object": "list", "data": data}

    @app.get("/version")
    async def version():
        return {"version": atom.__version__}

    @app.post("/v1/completions")
    async def completions(raw_request: Request):
        req = await parse_body(raw_request, CompletionRequest)
        return await create_completion(ctx, req, raw_request)

    @app.post("/v1/chat/completions")
    async def chat_completions(raw_request: Request):
        req = await parse_body(raw_request, ChatCompletionRequest)
        return await create_chat_completion(ctx, req, raw_request)

    @app.post("/start_profile")
    async def start_profile():
        await _profile_call(ctx, "start_profile")
        return {"status": "profiling"}

    @app.post("/stop_profile")
    async def stop_profile():
        await _profile_call(ctx, "stop_profile")
        return {"status": "stopped"}

    @app.get("/metrics")
    async def metrics():
        stats = await ctx.engine.get_stats()
        return Response(ctx.metrics.render(stats), media_type=PROMETHEUS_CONTENT_TYPE)

    # vLLM's tokenizer routes; lm-eval's local-completions uses them when they exist.
    @app.post("/tokenize")
    async def tokenize(raw_request: Request):
        req = await parse_body(raw_request, TokenizeRequest)
        if req.messages is not None:
            ids = render_chat(ctx, req.messages, req.add_generation_prompt,
                              template_kwargs=req.chat_template_kwargs)  # fmt: skip
        else:
            ids = ctx.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": ctx.max_model_len}

    @app.post("/detokenize")
    async def detokenize(raw_request: Request):
        req = await parse_body(raw_request, DetokenizeRequest)
        bad = next((t for t in req.tokens if t >= ctx.vocab_size), None)
        if bad is not None:
            raise APIError(f"tokens: id {bad} is outside the vocabulary [0, {ctx.vocab_size})")
        return {"prompt": ctx.tokenizer.decode(req.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        tok = ctx.tokenizer
        return {
            "tokenizer_class": type(tok).__name__,
            "eos_token": tok.eos_token,
            "bos_token": tok.bos_token,
            "pad_token": tok.pad_token,
            "chat_template": getattr(tok, "chat_template", None),
            "model_max_length": ctx.max_model_len,
        }

    wrapped: Any = BodySizeLimit(app, max_body_bytes)
    if api_key:
        wrapped = APIKeyAuth(wrapped, api_key)
    return wrapped


async def _profile_call(ctx: ServingContext, method: str) -> None:
    try:
        await ctx.engine.call(lambda engine: getattr(engine, method)())
    except (RuntimeError, ValueError) as exc:
        # e.g. no --torch-profiler-dir, or stop without start: the caller's mistake, not ours.
        if isinstance(exc, EngineDeadError):
            raise
        raise APIError(f"{method}: {exc}") from exc


def engine_limits(engine: Any) -> tuple[int, int]:
    """(max_model_len, vocab_size) of a created engine."""
    config = engine.config
    return int(config.max_model_len), int(config.model_config.vocab_size)


def make_context(engine: Any, served_model_names: list[str] | None, model: str) -> ServingContext:
    max_model_len, vocab_size = engine_limits(engine)
    names = list(served_model_names or [model])
    return ServingContext(
        engine=AsyncEngine(engine),
        tokenizer=engine.tokenizer,
        model_names=names,
        max_model_len=max_model_len,
        vocab_size=vocab_size,
        metrics=ServerMetrics(names[0]),
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m atom.entrypoints.openai_server",
        description="ATOM's OpenAI-compatible server (FastAPI + Uvicorn)",
    )
    atom.EngineArgs.add_cli_args(parser)
    s = parser.add_argument_group("server")
    s.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    s.add_argument("--server-port", "--server_port", dest="server_port", type=int, default=8000,
                   help="HTTP port (default 8000); --port is the engine's internal port")  # fmt: skip
    s.add_argument("--api-key", "--api_key", dest="api_key",
                   default=envs.api_key(),
                   help="require 'Authorization: Bearer KEY' on /v1 and profile routes "
                   "(default: $ATOM_API_KEY, else none)")  # fmt: skip
    s.add_argument("--served-model-name", "--served_model_name", dest="served_model_name",
                   nargs="+", default=None,
                   help="model name(s) clients use (default: --model); the first is reported")  # fmt: skip
    s.add_argument("--max-request-bytes", "--max_request_bytes", dest="max_request_bytes",
                   type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="largest accepted request body; larger gets 413 (default 32 MiB)")  # fmt: skip
    s.add_argument("--uvicorn-log-level", "--uvicorn_log_level", dest="uvicorn_log_level",
                   default="info", choices=("critical", "error", "warning", "info", "debug"))  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not 0 < args.server_port < 65536:
        raise SystemExit(f"--server-port {args.server_port} is not a TCP port")
    logger.info("creating the engine for model %r", args.model)
    engine = atom.EngineArgs.from_cli_args(args).create_engine()
    ctx = make_context(engine, args.served_model_name, args.model)
    app = build_app(ctx, api_key=args.api_key, max_body_bytes=args.max_request_bytes)
    logger.info("serving %s on http://%s:%d (max_model_len %d)", ctx.model_names, args.host,
                args.server_port, ctx.max_model_len)  # fmt: skip
    config = uvicorn.Config(app, host=args.host, port=args.server_port,
                            log_level=args.uvicorn_log_level, timeout_keep_alive=30)  # fmt: skip
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
