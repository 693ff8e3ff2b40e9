"""`pagedserve serve [MODEL] [options]`: the command-line entry point (also `python -m server`).

Also `pagedserve bench throughput|latency|serve ...` (server/bench_cli.py) and
`pagedserve export-tokenizer DIR [MODEL]` (server/export_tokenizer.py).
"""
from __future__ import annotations

import logging
import sys
from typing import Optional

from server.args import make_parser, resolve_args


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Optional[list[str]] = None) -> int:
    """Parse arguments and run the chosen command; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # pagedserve bench throughput|latency|serve (server/bench_cli.py)
        from server.bench_cli import main as bench_main
        return bench_main(argv[1:])
    if argv[:1] == ["export-tokenizer"]:
        from server.export_tokenizer import main as export_main
        return export_main(argv[1:])
    parser = make_parser()
    if argv[:1] == ["serve"]:
        from server.vllm_flags import UnsupportedFlag, check_argv
        try:
            argv = check_argv(argv)
        except UnsupportedFlag as exc:  # one line, argparse's exit code
            print(f"pagedserve serve: error: {exc}", file=sys.stderr)
            return 2
    ns = parser.parse_args(argv)
    if ns.command == "serve":
        try:
            engine_args, server_args = resolve_args(ns)
        except (ValueError, TypeError, OSError) as exc:
            parser.error(str(exc))
        setup_logging(server_args.log_level)
        from server.api_server import run_server
        try:
            return run_server(engine_args, server_args)
        except ValueError as exc:  # bad model path, unsupported architecture, bad option value
            logging.getLogger("pagedserve.server").error("%s", exc)
            return 2
    parser.error(f"unknown command {ns.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
