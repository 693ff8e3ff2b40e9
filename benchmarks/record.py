"""Recording benchmark results: one JSON line per run in benchmarks/results/<bench>.jsonl.

Every record carries what is needed to compare runs honestly: the device, library versions,
the git sha of the code measured, the date, the parameters and the metrics.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from typing import Any

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def device_name() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except Exception:  # torch missing or broken: still record the CPU
        pass
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "triton", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = "absent"
    try:
        import torch
        out["cuda"] = str(torch.version.cuda)
    except Exception:
        pass
    return out


def git_sha() -> str:
    """PAGEDSERVE_GIT_SHA when set (a copied tree's own .git may be stale), else git's HEAD."""
    if os.environ.get("PAGEDSERVE_GIT_SHA"):
        return os.environ["PAGEDSERVE_GIT_SHA"]
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if len(sha) != 40:  # no history here (e.g. a copied tree on the GPU machine)
            return os.environ.get("PAGEDSERVE_GIT_SHA", "unknown")
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return os.environ.get("PAGEDSERVE_GIT_SHA", "unknown")


def make_record(bench: str, params: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "bench": bench,
        "device": device_name(),
        "versions": versions(),
        "git_sha": git_sha(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "params": params,
        "metrics": metrics,
    }


def append_result(bench: str, params: dict[str, Any], metrics: dict[str, Any],
                  results_dir: str | None = None) -> dict[str, Any]:
    """Append one record to `<results_dir>/<bench>.jsonl` (also under $OUT when that is set)."""
    return append_record(make_record(bench, params, metrics), results_dir)


def append_record(record: dict[str, Any], results_dir: str | None = None) -> dict[str, Any]:
    """Append an already made record (e.g. one completed after its run) as append_result does."""
    dirs = [results_dir or RESULTS_DIR]
    if os.environ.get("OUT"):
        dirs.append(os.environ["OUT"])
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{record['bench']}.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
    return record
