"""The FastAPI app (routes, middleware, lifespan) and the uvicorn runner.

`build_app` wires an `EngineClient` into the OpenAI routes; `run_server` resolves the engine
config, loads the tokenizer, starts the engine core (in its own process by default) from the
app's lifespan, and serves until SIGINT/SIGTERM. Uvicorn opens the port only after the lifespan
started the engine, so a connectable server is a ready one.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from typing import Any, AsyncIterator, Awaitable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import Response

from server.args import ServerArgs
from server.auth import APIKeyMiddleware, RequestIdMiddleware
from server.dashboard import DashboardMetrics, install_dashboard
from server.engine_client import AsyncEngineClient, EngineClient
from server.engine_health import RestartPolicy
from server.http_options import base_url, docs_kwargs, install_http_options, uvicorn_kwargs
from server.errors import (bad_request, engine_unavailable, install_exception_handlers,
                           model_not_found, shutting_down)
from server.limits import BodyLimitMiddleware
from server.metrics import CONTENT_TYPE_LATEST, ServerMetrics, StatsLogger
from server.openapi import install_openapi
from server.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                             ModelCard, ModelList, TokenizeRequest, dump)
from server.serving_base import ServingOptions
from server.serving_chat import OpenAIServingChat, render_chat
from server.serving_completions import OpenAIServingCompletion
from server.serving_responses import OpenAIServingResponses
from server.protocol_responses import ResponseRequest

logger = logging.getLogger("pagedserve.server")

try:
    from importlib.metadata import version as _pkg_version
    VERSION = _pkg_version("pagedserve")
except Exception:  # running from a source tree that is not installed
    VERSION = "0.1.0"


async def run_until_disconnect(request: Request, handler: Awaitable[Any]) -> Any:
    """Await `handler`, cancelling it if the client disconnects first.

    Cancellation reaches the handler's `finally`, which aborts its engine requests; a streaming
    handler returns its response at once and the response watches for disconnects itself.
    """
    task = asyncio.ensure_future(handler)

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    logger.info("Client disconnected; request %s aborted", request.state.request_id)
    return Response(status_code=499)


def build_app(engine: EngineClient, args: ServerArgs, served_model_names: list[str],
              metrics: Optional[ServerMetrics] = None, manage_engine: bool = True) -> FastAPI:
    """The HTTP app for one served model. With `manage_engine`, its lifespan starts and stops
    the engine (and the periodic stats log); otherwise the caller does."""
    metrics = metrics or DashboardMetrics(served_model_names[0])
    max_model_len = engine.model_config.max_model_len

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = []
        if manage_engine:
            await engine.start()
            logger.info("Engine ready; serving %s", ", ".join(served_model_names))
            url = base_url(args)
            logger.info("Ready: %s/v1 (live dashboard: %s/dashboard)", url, url)
        # The startup heap (torch, transformers, the tokenizer, the app: ~10^6 objects) leaves the
        # cyclic GC's passes. Unfrozen, each full pass over it stalled the event loop for 0.2 s
        # under load (every stream's next token and every new request's first one waited).
        gc.collect()
        gc.freeze()
        on_started = getattr(app.state, "on_started", None)
        if on_started is not None:
            on_started()
        if args.log_stats_interval > 0 and not args.disable_log_stats:
            tasks.append(asyncio.create_task(
                StatsLogger(engine.get_stats, args.log_stats_interval).run()))
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            if manage_engine:
                logger.info("Stopping the engine (%d requests in flight)", engine.num_in_flight)
                await engine.shutdown()

    app = FastAPI(title="pagedserve", version=VERSION, lifespan=lifespan, **docs_kwargs(args))
    install_exception_handlers(app)
    install_openapi(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=args.max_request_body_bytes)
    app.add_middleware(APIKeyMiddleware, api_key=args.api_key)
    app.add_middleware(RequestIdMiddleware)
    install_http_options(app, args)
    options = ServingOptions(max_logprobs=args.max_logprobs,
                             return_tokens_as_token_ids=args.return_tokens_as_token_ids,
                             log_requests=args.log_requests)
    completions = OpenAIServingCompletion(engine, served_model_names, args.max_queue_len,
                                          options)
    chat = OpenAIServingChat(engine, served_model_names, args.max_queue_len, args.chat_template,
                             enable_auto_tool_choice=args.enable_auto_tool_choice,
                             tool_call_parser=args.tool_call_parser, options=options,
                             response_role=args.response_role)
    responses = OpenAIServingResponses(engine, served_model_names, args.max_queue_len,
                                       args.chat_template,
                                       enable_auto_tool_choice=args.enable_auto_tool_choice,
                                       tool_call_parser=args.tool_call_parser, options=options)
    app.state.engine = engine
    app.state.metrics = metrics
    install_dashboard(app, engine, metrics)

    @app.post("/v1/completions")
    async def create_completion(body: CompletionRequest, request: Request):
        return await run_until_disconnect(request, completions.create(body))

    @app.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest, request: Request):
        return await run_until_disconnect(request, chat.create(body))

    @app.post("/v1/responses")
    async def create_response(body: ResponseRequest, request: Request):
        return await run_until_disconnect(request, responses.create(body))

    def card(name: str) -> ModelCard:
        return ModelCard(id=name, root=engine.model_config.model, max_model_len=max_model_len)

    @app.get("/v1/models")
    async def list_models():
        return dump(ModelList(data=[card(name) for name in served_model_names]))

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str):
        if model_id not in served_model_names:
            raise model_not_found(model_id)
        return dump(card(model_id))

    @app.get("/health")
    async def health():
        problem = engine.health_problem()
        if problem is not None:
            raise engine_unavailable(problem)
        return Response(status_code=200)

    @app.get("/metrics")
    async def get_metrics():
        metrics.update_engine_stats(await engine.get_stats())
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def get_version():
        return {"version": VERSION}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        completions.check_model(body.model)
        completions.require_tokenizer("prompt" if body.messages is None else "messages")
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("Give exactly one of 'prompt' or 'messages'.", "prompt")
        if body.messages is not None:
            text = render_chat(engine.tokenizer, body.messages, args.chat_template,
                               body.add_generation_prompt,
                               continue_final_message=body.continue_final_message,
                               chat_template_kwargs=body.chat_template_kwargs)
            ids = await engine.tokenize(text, add_special_tokens=False)
        else:
            ids = await engine.tokenize(body.prompt, add_special_tokens=body.add_special_tokens)
        return {"count": len(ids), "max_model_len": max_model_len, "tokens": list(ids)}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        completions.check_model(body.model)
        completions.require_tokenizer("tokens")
        vocab = len(engine.tokenizer)
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"tokens: ids outside the vocabulary (size {vocab}): {bad[:5]}",
                              "tokens")
        return {"prompt": engine.tokenizer.decode(body.tokens)}

    return app


def default_served_name(model_arg: Optional[str], model_config: Any) -> str:
    """The name clients use: the MODEL argument as given, or the default model's short name."""
    if model_arg:
        return model_arg
    base = os.path.basename(str(getattr(model_config, "gguf_file", None) or model_config.model))
    base = base.removesuffix(".gguf")
    stem, dot, quant = base.rpartition(".")
    return stem if dot and quant.upper().startswith(("Q", "F", "IQ", "BF")) else base


class _Server:
    """Uvicorn's server plus two ways out: the shutdown timeout ends what still runs with a
    'server shutting down' error (an SSE error event and [DONE] for streams) instead of cutting
    connections, and a fatal engine death (fail-fast policy) exits non-zero."""

    def __init__(self, uv_config: Any, engine: EngineClient, shutdown_timeout: float):
        import uvicorn

        outer = self

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                if not self.should_exit:
                    outer._schedule_drain_deadline()
                super().handle_exit(sig, frame)

        self.uv = Server(uv_config)
        self.engine = engine
        self.shutdown_timeout = shutdown_timeout
        self.fatal: Optional[str] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None

    def _schedule_drain_deadline(self) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return

        def expire() -> None:
            if self.engine.num_in_flight:
                logger.warning("Shutdown timeout: ending %d requests still running",
                               self.engine.num_in_flight)
            self.engine.fail_in_flight(shutting_down())

        loop.call_soon_threadsafe(loop.call_later, self.shutdown_timeout, expire)

    def on_fatal(self, reason: str) -> None:
        """The engine is gone for good (--no-engine-restart, or restarts exhausted)."""
        logger.error("Exiting: the engine core died (%s)", reason)
        self.fatal = reason
        self.uv.should_exit = True


def run_server(engine_args: Any, args: ServerArgs) -> int:
    """Build everything and serve until a signal; 0 on a clean shutdown, 1 when the engine
    died for good or never started."""
    import uvicorn

    if args.runner == "pooling":
        from server.pooling_server import run_pooling_server
        return run_pooling_server(engine_args, args)
    config = engine_args.create_engine_config()
    defaults = config.model.generation_defaults
    if defaults.as_dict():  # as vLLM, say which defaults requests that set none get
        logger.info("Using default sampling params from %s: %s", defaults.source,
                    defaults.describe())
    names = [engine_args.served_model_name or default_served_name(engine_args.model, config.model)]
    if config.model.model not in names and engine_args.model:
        names.append(config.model.model)  # the resolved path/id works as an alias
    metrics = DashboardMetrics(names[0])
    holder: dict[str, _Server] = {}
    def make_client(index: int, core_metrics: Any) -> AsyncEngineClient:
        return AsyncEngineClient(
            config, mode=args.engine_mode, core_factory=args.core_factory, metrics=core_metrics,
            log_level=args.log_level, cpu_threads=args.cpu_threads,
            restart=RestartPolicy(enabled=args.engine_restart,
                                  max_retries=args.engine_restart_retries),
            step_timeout_s=args.engine_step_timeout,
            skip_tokenizer_init=engine_args.skip_tokenizer_init,
            on_fatal=lambda reason: holder["server"].on_fatal(f"engine {index}: {reason}"))

    engine: EngineClient
    if config.parallel.data_parallel_size > 1:
        from server.data_parallel import DataParallelEngineClient
        engine = DataParallelEngineClient(make_client, config.parallel.data_parallel_size,
                                          metrics)
    else:
        engine = make_client(0, metrics)
    app = build_app(engine, args, names, metrics)
    # Uvicorn's own graceful timeout is the backstop; ours ends streams cleanly first.
    uv_config = uvicorn.Config(app, **uvicorn_kwargs(args),
                               timeout_graceful_shutdown=args.shutdown_timeout + 5,
                               timeout_keep_alive=5,
                               # "auto" takes httptools and uvloop when installed (not required:
                               # no gain measured, benchmarks/frontend_cost.py compares them)
                               http=os.environ.get("PAGEDSERVE_UVICORN_HTTP", "auto"),
                               loop=os.environ.get("PAGEDSERVE_UVICORN_LOOP", "auto"))
    server = holder["server"] = _Server(uv_config, engine, args.shutdown_timeout)
    app.state.on_started = lambda: setattr(server, "loop", asyncio.get_running_loop())
    # Uvicorn handles SIGINT/SIGTERM (graceful shutdown), then re-raises them to the handlers it
    # found; these make that re-raise a no-op so a clean shutdown exits 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: logger.info("Shut down on signal %d", signum))
    logger.info("Serving %s on %s://%s:%d (engine %s)", names[0],
                "https" if args.ssl_certfile else "http", args.host, args.port, args.engine_mode)
    server.uv.run()
    if not server.uv.started or server.fatal is not None:
        return 1
    return 0
