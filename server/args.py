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
from dataclasses import dataclass
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
}
_HELP = {
    "model": "HF hub id, local HF folder or .gguf file (default: SmolLM2-135M-Instruct)",
    "num_kv_blocks": "KV blocks in the device pool (default: sized from memory)",
    "max_num_batched_tokens": "token budget per engine step (default: 1024 on a GPU, where "
                              "such steps replay CUDA graphs; 2048 on the CPU)",
    "max_cuda_graph_tokens": "steps mixing prompts and decodes up to this many tokens replay "
                             "a CUDA graph (0: eager)",
    "preemption_mode": "how a running request is preempted when blocks run out",
    "swap_space": "GiB of CPU memory for swapped-out KV blocks",
    "served_model_name": "the model name clients use (default: MODEL as given)",
    "chat_template": "Jinja chat template: a file path or the template text",
    "max_queue_len": "answer 429 while more than this many requests wait",
    "hf_overrides": "JSON object of HF config overrides",
    "speculative_config": "JSON object: speculative decoding, e.g. '{\"method\": \"ngram\", "
                          "\"num_speculative_tokens\": 4}' (methods: ngram, draft_model, "
                          "eagle3)",
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
}


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
    if base is dict or typing.get_origin(base) is dict:
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
        group.add_argument(_flag(f.name), **kwargs)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagedserve",
                                     description="OpenAI-compatible LLM server (PagedAttention).")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model over HTTP")
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
