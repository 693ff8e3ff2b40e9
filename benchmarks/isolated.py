"""Run one benchmark engine as a child process with a time limit.

The child gets its own session (process group), so a timeout kills everything it started, e.g.
vLLM's engine-core process, which would otherwise keep holding GPU memory for the next engine.
"""
from __future__ import annotations

import os
import signal
import subprocess
from typing import Optional


def run_isolated(cmd: list[str], timeout: float, label: str) -> Optional[str]:
    """Run `cmd` (output inherited); None on success, else what went wrong, naming `label`."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return f"{label}: subprocess timed out after {timeout:g} s"
    finally:
        try:  # whatever the child left behind (a crashed child's helpers)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return None if rc == 0 else f"{label}: subprocess exited with {rc}"
