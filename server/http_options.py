"""The HTTP options vLLM users pass, applied to the FastAPI app and to uvicorn (both servers).

- CORS (`--allowed-origins`, `--allowed-methods`, `--allowed-headers`, `--allow-credentials`):
  Starlette's CORSMiddleware, outermost, with vLLM's defaults (any origin, method and header; no
  credentials).
- `--root-path`: FastAPI's root_path as vLLM sets it: a request routes with or without the
  prefix, and the OpenAPI schema names the prefix as its server.
- `--disable-fastapi-docs`: no /docs, /redoc, /openapi.json (served by default, as vLLM).
- uvicorn: `--ssl-keyfile` / `--ssl-certfile` (HTTPS), `--uvicorn-log-level` (default: the
  `--log-level`), `--disable-uvicorn-access-log` (wins over `--access-log`).
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from server.args import ServerArgs


def docs_kwargs(args: ServerArgs) -> dict[str, Any]:
    """FastAPI constructor arguments for the documentation routes."""
    if args.disable_fastapi_docs:
        return {"docs_url": None, "redoc_url": None, "openapi_url": None}
    return {"docs_url": "/docs", "redoc_url": "/redoc", "openapi_url": "/openapi.json"}


def install_http_options(app: FastAPI, args: ServerArgs) -> None:
    """Root path and CORS. Call after every other middleware: CORS must be the outermost, so
    preflight requests and error answers (401, 413) carry its headers."""
    if args.root_path:
        app.root_path = args.root_path  # the attribute, as vLLM (the argument is deprecated)
    app.add_middleware(CORSMiddleware, allow_origins=args.allowed_origins,
                       allow_credentials=args.allow_credentials,
                       allow_methods=args.allowed_methods, allow_headers=args.allowed_headers)


def uvicorn_kwargs(args: ServerArgs) -> dict[str, Any]:
    """uvicorn.Config arguments the options decide."""
    kwargs: dict[str, Any] = {
        "host": args.host, "port": args.port,
        "log_level": args.uvicorn_log_level or args.log_level.lower(),
        "access_log": args.access_log and not args.disable_uvicorn_access_log,
    }
    if args.ssl_certfile:
        kwargs.update(ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    return kwargs


def base_url(args: ServerArgs) -> str:
    """The URL clients use, for log lines: https with --ssl-certfile, the root path after."""
    scheme = "https" if args.ssl_certfile else "http"
    host = "localhost" if args.host in ("0.0.0.0", "::", "") else args.host
    return f"{scheme}://{host}:{args.port}{args.root_path or ''}"

