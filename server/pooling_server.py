"""`pagedserve serve --runner pooling MODEL`: an embedding server (vLLM's runner name).

Routes: `POST /v1/embeddings`, `GET /v1/models`, `GET /health`, `GET /version`, `GET /metrics`
(request and prompt-token counters), `POST /tokenize`. The pooling model runs in this process in
one worker thread (`OpenAIServingEmbedding` batches concurrent requests); it is loaded before
the port opens, so a connectable server is a ready one.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from server.args import ServerArgs
from server.auth import APIKeyMiddleware, RequestIdMiddleware
from server.errors import from_value_error, install_exception_handlers
from server.http_options import base_url, docs_kwargs, install_http_options, uvicorn_kwargs
from server.openapi import install_openapi
from server.metrics import PREFIX
from server.protocol import ModelCard, ModelList, TokenizeRequest, dump
from server.serving_embeddings import EmbeddingRequest, OpenAIServingEmbedding

logger = logging.getLogger("pagedserve.server")

# EngineArgs fields the pooling engine understands; any other engine option given is refused.
POOLING_FIELDS = ("model", "tokenizer", "dtype", "device", "max_model_len",
                  "max_num_batched_tokens", "load_format", "trust_remote_code", "hf_overrides",
                  "seed", "block_size", "attention_backend", "served_model_name")


def pooling_engine_kwargs(engine_args: Any) -> dict[str, Any]:
    """PoolingEngine options from EngineArgs; ValueError naming an option it cannot honour."""
    from engine.config import EngineArgs

    defaults = EngineArgs()
    for name in EngineArgs.field_names():
        if name not in POOLING_FIELDS and name not in ("chat_template", "max_queue_len") \
                and getattr(engine_args, name) != getattr(defaults, name):
            raise ValueError(f"{name}: not an option of the pooling runner "
                             f"(it takes {', '.join(POOLING_FIELDS)})")
    return {name: getattr(engine_args, name) for name in POOLING_FIELDS}


def build_pooling_app(engine: Any, args: ServerArgs, served_model_names: list[str]) -> FastAPI:
    serving = OpenAIServingEmbedding(engine, served_model_names)
    registry = CollectorRegistry()
    labels = ["model_name"]
    requests = Counter(PREFIX + "embedding_requests", "Embedding requests served.", labels,
                       registry=registry).labels(served_model_names[0])
    tokens = Counter(PREFIX + "embedding_prompt_tokens", "Tokens embedded.", labels,
                     registry=registry).labels(served_model_names[0])
    counted = {"requests": 0, "tokens": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("Pooling runner ready; serving %s", ", ".join(served_model_names))
        try:
            yield
        finally:
            await serving.close()

    app = FastAPI(title="pagedserve (pooling)", lifespan=lifespan, **docs_kwargs(args))
    install_exception_handlers(app)
    install_openapi(app)
    app.add_middleware(APIKeyMiddleware, api_key=args.api_key)
    app.add_middleware(RequestIdMiddleware)
    install_http_options(app, args)
    app.state.serving_embeddings = serving

    @app.post("/v1/embeddings")
    async def create_embedding(body: EmbeddingRequest):
        return await serving.create(body)

    @app.get("/v1/models")
    async def list_models():
        root = engine.model_config.model
        cards = [ModelCard(id=n, root=root, max_model_len=engine.model_config.max_model_len)
                 for n in served_model_names]
        return dump(ModelList(data=cards))

    @app.get("/health")
    async def health():
        return Response(status_code=200)

    @app.get("/version")
    async def version():
        from server.api_server import VERSION
        return {"version": VERSION}

    @app.get("/metrics")
    async def metrics():
        requests.inc(serving.num_requests - counted["requests"])
        tokens.inc(serving.num_prompt_tokens - counted["tokens"])
        counted.update(requests=serving.num_requests, tokens=serving.num_prompt_tokens)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        serving.check_model(body.model)
        if body.prompt is None:
            raise from_value_error(ValueError("prompt: the pooling runner tokenizes 'prompt' only"))
        try:
            ids = engine.tokenize(body.prompt, 0, "prompt")
        except ValueError as exc:
            raise from_value_error(exc, "prompt") from exc
        return {"count": len(ids), "max_model_len": engine.model_config.max_model_len,
                "tokens": ids}

    return app


def run_pooling_server(engine_args: Any, args: ServerArgs) -> int:
    import uvicorn

    from engine.pooling import PoolingEngine
    from server.api_server import default_served_name

    kwargs = pooling_engine_kwargs(engine_args)
    check_pooling_server_args(args)
    engine = PoolingEngine(**kwargs)
    if args.cpu_threads:
        import torch
        torch.set_num_threads(args.cpu_threads)
    names = [engine_args.served_model_name
             or default_served_name(engine_args.model, engine.model_config)]
    app = build_pooling_app(engine, args, names)
    logger.info("Serving embeddings of %s on %s", names[0], base_url(args))
    uvicorn.run(app, **uvicorn_kwargs(args), timeout_graceful_shutdown=args.shutdown_timeout)
    return 0


# Server options of text generation only: the pooling runner refuses them when changed.
GENERATE_ONLY = ("max_logprobs", "response_role", "return_tokens_as_token_ids",
                 "enable_log_requests")


def check_pooling_server_args(args: ServerArgs) -> None:
    defaults = ServerArgs()
    for name in GENERATE_ONLY:
        if getattr(args, name) != getattr(defaults, name):
            raise ValueError(f"{name}: not an option of the pooling runner (text generation "
                             "only)")
