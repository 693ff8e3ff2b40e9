"""Command-line and YAML options of `pagedserve serve`.

Engine flags are generated from the `EngineArgs` dataclass (one `--kebab-case` flag per field,
typed from its annotation), so a new engine option is a new flag with no change here. Server-only
options live in `ServerArgs`. Precedence: command line > YAML (`--config`) > defaults; every flag
is parsed with `default=SUPPRESS` so "given on the command line" is exactly "present".
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from engine.config import LOAD_FORMATS, PREEMPTION_MODES, EngineArgs

API_KEY_ENV = "PAGEDSERVE_API_KEY"

# Engine fields the server also reads (they appear once, as engine flags).
_SHARED_FIELDS = ("served_model_name", "chat_template", "max_queue_len")
_CHOICES = {
    "preemption_mode": list(PREEMPTION_MODES),
    "load_format": list(LOAD_FORMATS),
    "attention_backend": ["auto", "torch", "triton"],
    "runner": ["generate", "pooling"],
    "uvicorn_log_level": ["critical", "error", "warning", "info", "debug", "trace"],
}
_HELP = {
    "model": "HF hub id, local HF folder or .gguf file (default: SmolLM2-135M-Instruct)",
    "num_kv_blocks": "KV blocks in the device pool (default: sized from memory)",
    "max_num_batched_tokens": "token budget per engine step (default: 1024 on a GPU, where "
                              "such steps replay CUDA graphs; 2048 on the CPU)",
    "max_cuda_graph_tokens": "steps mixing prompts and decodes up to this many tokens replay "
                             "a CUDA graph (0: eager; with speculative decoding raised to "
                             "max_num_seqs x (k + 1) verify rows, at most 2048)",
    "preemption_mode": "how a running request is preempted when blocks run out",
    "swap_space": "GiB of CPU memory for swapped-out KV blocks",
    "served_model_name": "the model name clients use (default: MODEL as given)",
    "chat_template": "Jinja chat template: a file path or the template text",
    "max_queue_len": "answer 429 while more than this many requests wait",
    "hf_overrides": "JSON object of HF config overrides",
    "speculative_config": "JSON object: speculative decoding, e.g. '{\"method\": \"ngram\", "
                          "\"num_speculative_tokens\": 4}' (methods: ngram, draft_model, "
                          "eagle3)",
    "generation_config": "sampling defaults for requests that leave them unset: 'auto' (the "
                         "model's generation_config.json: temperature, top_p, top_k, min_p, "
                         "repetition_penalty, max_new_tokens), 'vllm' (none) or a FOLDER "
                         "holding a generation_config.json (default: auto)",
    "override_generation_config": "JSON object of generation config keys merged over those "
                                  "defaults, e.g. '{\"temperature\": 0.5}' (null drops one)",
}


# The server's step budget on a GPU (the offline LLM keeps the engine's 8192): every step then
# fits a mixed-step CUDA graph (max_cuda_graph_tokens), so prompts arriving under load cost the
# running decodes at most one such step (H200, 8B: ~8 ms at p50, ~26 ms at p99) instead of an
# eager multi-thousand token step, and TPOT/ITL stay bounded. Long prompts are chunked at this
# size. On an H200 (Llama-3-8B shape, 500 sharegpt_like requests at 32 req/s, engine side) 1024
# cut TTFT p99 from 76 to 56 ms against 512 with TPOT unchanged; 2048 gained nothing more and
# doubled the worst mixed step.
SERVER_GPU_BATCHED_TOKENS = 1024


def _serves_on_cuda(device: str) -> bool:
    import torch
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


@dataclass
class ServerArgs:
    """HTTP-side options (the engine's live in `EngineArgs`)."""

    host: str = "0.0.0.0"
    port: int = 8000
    api_key: Optional[str] = None
    chat_template: Optional[str] = None  # template text, read from the file when a path is given
    max_queue_len: Optional[int] = None
    shutdown_timeout: float = 30.0
    engine_mode: str = "process"  # process | inproc
    log_level: str = "INFO"
    log_stats_interval: float = 5.0
    access_log: bool = False
    cpu_threads: Optional[int] = None  # torch threads of the engine core (CPU: cores - 1, GPU: 1)
    max_request_body_bytes: int = 8 * 1024 * 1024
    engine_restart: bool = True  # restart a dead engine core (else exit non-zero)
    engine_restart_retries: int = 3
    engine_step_timeout: float = 120.0
    core_factory: Optional[str] = None  # module:callable building the core (tests)
    runner: str = "generate"  # generate | pooling (embeddings: server/pooling_server.py)
    enable_auto_tool_choice: bool = False  # tool_choice "auto" (needs tool_call_parser)
    tool_call_parser: Optional[str] = None  # hermes | llama3_json | mistral | pythonic
    # vLLM's frontend options (server/http_options.py; README "Coming from vLLM").
    allowed_origins: list = field(default_factory=lambda: ["*"])  # CORS
    allowed_methods: list = field(default_factory=lambda: ["*"])
    allowed_headers: list = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    root_path: Optional[str] = None  # the path prefix of a proxy in front
    ssl_keyfile: Optional[str] = None
    ssl_certfile: Optional[str] = None
    uvicorn_log_level: Optional[str] = None  # None: follows log_level
    disable_uvicorn_access_log: bool = False  # wins over access_log
    enable_log_requests: bool = False
    disable_log_requests: bool = False  # vLLM's older name for "not enable_log_requests"
    disable_log_stats: bool = False  # wins over log_stats_interval
    disable_fastapi_docs: bool = False
    max_logprobs: int = 20  # -1: the whole vocabulary
    response_role: str = "assistant"
    return_tokens_as_token_ids: bool = False  # default of the request field of that name

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be in [0, 65535], got {self.port}")
        if self.shutdown_timeout < 0:
            raise ValueError("shutdown_timeout: must be >= 0")
        if self.engine_mode not in ("process", "inproc"):
            raise ValueError(f"engine_mode: must be process or inproc, got {self.engine_mode!r}")
        if self.runner not in ("generate", "pooling"):
            raise ValueError(f"runner: must be generate or pooling, got {self.runner!r}")
        if self.max_queue_len is not None and self.max_queue_len < 0:
            raise ValueError("max_queue_len: must be >= 0")
        if self.max_request_body_bytes < 1:
            raise ValueError("max_request_body_bytes: must be >= 1")
        if self.engine_restart_retries < 0:
            raise ValueError("engine_restart_retries: must be >= 0")
        if not self.engine_step_timeout > 0:
            raise ValueError("engine_step_timeout: must be > 0")
        if self.tool_call_parser is not None:
            from server.tool_parsers import get_tool_parser
            get_tool_parser(self.tool_call_parser)  # ValueError naming it when unknown
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("enable_auto_tool_choice: needs --tool-call-parser")
        for name in ("allowed_origins", "allowed_methods", "allowed_headers"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name}: must be a JSON list of strings, e.g. "
                                 f"'[\"https://example.com\"]', got {value!r}")
        if self.root_path is not None and (not self.root_path.startswith("/")
                                           or self.root_path.endswith("/")):
            raise ValueError(f"root_path: must start with '/' and not end with one, got "
                             f"{self.root_path!r}")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile: needs --ssl-certfile")
        for name in ("ssl_keyfile", "ssl_certfile"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}: no such file '{path}'")
        if self.uvicorn_log_level not in (None, *_CHOICES["uvicorn_log_level"]):
            raise ValueError(f"uvicorn_log_level: must be one of "
                             f"{', '.join(_CHOICES['uvicorn_log_level'])}, got "
                             f"{self.uvicorn_log_level!r}")
        if self.enable_log_requests and self.disable_log_requests:
            raise ValueError("enable_log_requests: cannot be combined with "
                             "--disable-log-requests")
        if self.max_logprobs < -1:
            raise ValueError(f"max_logprobs: must be >= 0 or -1 (the whole vocabulary), got "
                             f"{self.max_logprobs}")
        if not self.response_role:
            raise ValueError("response_role: must not be empty")

    @property
    def log_requests(self) -> bool:
        return self.enable_log_requests and not self.disable_log_requests


_SERVER_HELP = {
    "host": "address to bind (default 0.0.0.0)",
    "port": "port to bind (default 8000)",
    "api_key": f"require 'Authorization: Bearer KEY' on /v1/*, /tokenize, /detokenize "
               f"(default: env {API_KEY_ENV})",
    "shutdown_timeout": "seconds in-flight requests get to finish after SIGTERM (default 30)",
    "engine_mode": "run the engine core in its own process (default) or in this one",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_stats_interval": "seconds between engine stats log lines while busy (0: off)",
    "access_log": "log every HTTP request",
    "enable_auto_tool_choice": "allow tool_choice 'auto': the model's output is parsed for tool "
                               "calls with --tool-call-parser",
    "tool_call_parser": "how auto tool calls are written: hermes, llama3_json, mistral or "
                        "pythonic",
    "runner": "generate (text) or pooling (embeddings at /v1/embeddings: BERT-family encoders "
              "mean-pooled, decoders last-token pooled)",
    "cpu_threads": "torch threads of the engine core process (default: CPU cores - 1, min 1, on "
                   "the CPU; 1 on a GPU unless OMP_NUM_THREADS is set)",
    "max_request_body_bytes": "larger request bodies get 413 (default 8 MiB)",
    "engine_restart": "restart a dead engine core (default); --no-engine-restart exits non-zero",
    "engine_restart_retries": "consecutive restart attempts before giving up (default 3)",
    "engine_step_timeout": "seconds an engine step may take before /health reports 503 "
                           "(default 120)",
    "allowed_origins": "CORS: JSON list of allowed origins (default '[\"*\"]')",
    "allowed_methods": "CORS: JSON list of allowed methods (default '[\"*\"]')",
    "allowed_headers": "CORS: JSON list of allowed request headers (default '[\"*\"]')",
    "allow_credentials": "CORS: allow credentials (cookies, authorization headers)",
    "root_path": "path prefix under which a proxy serves this server (FastAPI root_path): "
                 "requests may carry it or not, the OpenAPI schema names it",
    "ssl_keyfile": "serve HTTPS with this private key file (needs --ssl-certfile)",
    "ssl_certfile": "serve HTTPS with this certificate file",
    "uvicorn_log_level": "log level of uvicorn's own loggers (default: --log-level)",
    "disable_uvicorn_access_log": "no per-HTTP-request access log lines (the default; wins "
                                  "over --access-log)",
    "enable_log_requests": "log one line per engine request (id, prompt size, sampling "
                           "params; the prompt's token ids at DEBUG)",
    "disable_log_requests": "no per-request log lines (the default; vLLM's older flag)",
    "disable_log_stats": "no periodic engine stats log line (wins over --log-stats-interval)",
    "disable_fastapi_docs": "serve no /docs, /redoc and /openapi.json",
    "max_logprobs": "most logprobs, top_logprobs and prompt_logprobs a request may ask for; "
                    "more is a 400 (default 20; -1: the whole vocabulary)",
    "response_role": "role of generated chat messages when the prompt asks for a new turn "
                     "(default assistant)",
    "return_tokens_as_token_ids": "default of the request field return_tokens_as_token_ids: "
                                  "logprobs name tokens 'token_id:<id>'",
}


# vLLM's short forms of options pagedserve has under the same long name.
_SHORT_FLAGS = {"tensor_parallel_size": "-tp", "data_parallel_size": "-dp"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _arg_type(hint: Any) -> tuple[Any, bool]:
    """(argparse type, is_bool) for a dataclass field annotation."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
    if base is bool:
        return None, True
    if base in (int, float, str):
        return base, False
    if base in (dict, list) or typing.get_origin(base) in (dict, list):
        return json.loads, False
    return str, False


def _add_dataclass_flags(group: argparse._ArgumentGroup, cls: type, helps: dict[str, str],
                         skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        typ, is_bool = _arg_type(hints[f.name])
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name,
                                  "help": helps.get(f.name)}
        if is_bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = typ
            if f.name in _CHOICES:
                kwargs["choices"] = _CHOICES[f.name]
        short = (_SHORT_FLAGS[f.name],) if f.name in _SHORT_FLAGS else ()
        group.add_argument(_flag(f.name), *short, **kwargs)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagedserve",
                                     description="OpenAI-compatible LLM server (PagedAttention).")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="serve a model over HTTP",
        epilog="vLLM users: --enable-chunked-prefill and --tokenizer-mode auto|hf are accepted "
               "(pagedserve always chunks prefills and uses the Hugging Face tokenizer); vLLM "
               "flags pagedserve does not support (--enable-lora, --pipeline-parallel-size, "
               "--revision, ...: server/vllm_flags.py) stop with a line saying what to use "
               "instead.")
    serve.add_argument("model_positional", nargs="?", metavar="MODEL", default=None,
                       help=_HELP["model"])
    serve.add_argument("--config", default=None, metavar="FILE.yaml",
                       help="YAML file of options (flag names, - or _); flags override it")
    server = serve.add_argument_group("server")
    _add_dataclass_flags(server, ServerArgs, _SERVER_HELP,
                         skip=_SHARED_FIELDS + ("core_factory",))
    server.add_argument("--core-factory", dest="core_factory", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    engine = serve.add_argument_group("engine")
    _add_dataclass_flags(engine, EngineArgs, _HELP)
    return parser


def load_yaml(path: str) -> dict[str, Any]:
    """Options from a YAML mapping; keys may use - or _."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config: {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve_args(ns: argparse.Namespace) -> tuple[EngineArgs, ServerArgs]:
    """Merge defaults < YAML < command line into (EngineArgs, ServerArgs)."""
    cli = {k: v for k, v in vars(ns).items()
           if k not in ("command", "config", "model_positional")}
    if ns.model_positional is not None:
        if "model" in cli and cli["model"] != ns.model_positional:
            raise ValueError("model: given both as MODEL and --model, with different values")
        cli["model"] = ns.model_positional
    merged = load_yaml(ns.config) if ns.config else {}
    if merged:
        from server.vllm_flags import check_config
        merged = check_config(merged, ns.config)
    engine_names = set(EngineArgs.field_names())
    server_names = {f.name for f in dataclasses.fields(ServerArgs)}
    unknown = sorted(set(merged) - engine_names - server_names)
    if unknown:
        raise ValueError(f"config: unknown option(s) {', '.join(unknown)} in {ns.config}")
    merged.update(cli)
    if merged.get("api_key") is None and os.environ.get(API_KEY_ENV):
        merged["api_key"] = os.environ[API_KEY_ENV]
    template = merged.get("chat_template")
    if template and os.path.isfile(template):
        with open(template, encoding="utf-8") as fh:
            merged["chat_template"] = fh.read()
    if "max_num_batched_tokens" not in merged and _serves_on_cuda(merged.get("device", "auto")):
        merged["max_num_batched_tokens"] = SERVER_GPU_BATCHED_TOKENS
    engine_args = EngineArgs(**{k: v for k, v in merged.items() if k in engine_names})
    server_args = ServerArgs(**{k: v for k, v in merged.items()
                                if k in server_names and k not in engine_names},
                             **{k: merged.get(k) for k in ("chat_template", "max_queue_len")})
    return engine_args, server_args
