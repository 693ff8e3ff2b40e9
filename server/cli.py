"""`pagedserve serve [MODEL] [options]`: the command-line entry point (also `python -m server`)."""
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
    parser = make_parser()
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
