"""Shared benchmark workloads and the random-token prompts made from them.

A workload is a JSON list of `{"input_len": int, "output_len": int}` requests kept in
`../shared/workloads/<name>.json` (relative to the repository root). They are read from there at run
time, never copied, so every engine in the comparison measures the same requests. Prompts are random
token ids of each request's `input_len`; generation runs exactly `output_len` tokens (EOS ignored),
so a run measures the engine, not the model's taste in stopping.
"""
from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WORKLOAD_DIR = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "workloads"))
WORKLOAD_NAMES = ("fixed_512_256", "sharegpt_like", "alpaca_like")


@dataclass(frozen=True)
class WorkloadRequest:
    """One request of a workload: prompt length and exact number of tokens to generate."""

    input_len: int
    output_len: int

    def __post_init__(self) -> None:
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError(f"workload request lengths must be >= 1, got {self}")


def workload_path(name: str, workload_dir: Optional[str] = None) -> str:
    """Path of workload `name` (a bare name or a path to a .json file)."""
    if name.endswith(".json") or os.sep in name:
        return name
    return os.path.join(workload_dir or DEFAULT_WORKLOAD_DIR, f"{name}.json")


def load_workload(name: str, num_requests: Optional[int] = None,
                  workload_dir: Optional[str] = None) -> list[WorkloadRequest]:
    """The first `num_requests` requests of a workload, in arrival order."""
    path = workload_path(name, workload_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"workload '{name}' not found at {path}; known workloads: {', '.join(WORKLOAD_NAMES)} "
            f"(pass --workload-dir to read them from elsewhere)")
    with open(path) as f:
        raw = json.load(f)
    reqs = [WorkloadRequest(int(r["input_len"]), int(r["output_len"])) for r in raw]
    if num_requests is not None:
        if num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {num_requests}")
        if num_requests > len(reqs):
            raise ValueError(f"workload '{name}' has {len(reqs)} requests, {num_requests} asked")
        reqs = reqs[:num_requests]
    return reqs


def clip_to_context(reqs: Sequence[WorkloadRequest], max_model_len: int) -> list[WorkloadRequest]:
    """Shrink requests that would not fit a model's context (prompt first kept, then output cut).

    Returns new requests; callers record how many were clipped so the numbers stay honest.
    """
    out = []
    for r in reqs:
        if r.input_len + r.output_len <= max_model_len:
            out.append(r)
            continue
        inp = min(r.input_len, max_model_len - 1)
        out.append(WorkloadRequest(inp, max(1, max_model_len - inp)))
    return out


def random_prompt_token_ids(reqs: Iterable[WorkloadRequest], vocab_size: int, seed: int = 0,
                            exclude_ids: Iterable[int] = ()) -> list[list[int]]:
    """Random token ids of each request's input length, reproducible for a seed.

    `exclude_ids` (special tokens: BOS/EOS/pad) are never drawn, so a prompt cannot end early or
    collide with padding in the HF baseline.
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    excluded = {int(i) for i in exclude_ids if i is not None and 0 <= int(i) < vocab_size}
    rng = random.Random(seed)
    prompts = []
    for r in reqs:
        ids = []
        while len(ids) < r.input_len:
            tok = rng.randrange(vocab_size)
            if tok not in excluded:
                ids.append(tok)
        prompts.append(ids)
    return prompts


def summarize(reqs: Sequence[WorkloadRequest]) -> dict[str, float]:
    """Counts and means of a workload slice, recorded beside the metrics."""
    n = len(reqs)
    return {
        "num_requests": n,
        "prompt_tokens": sum(r.input_len for r in reqs),
        "output_tokens": sum(r.output_len for r in reqs),
        "mean_input_len": sum(r.input_len for r in reqs) / n if n else 0.0,
        "mean_output_len": sum(r.output_len for r in reqs) / n if n else 0.0,
    }


def add_workload_args(parser: argparse.ArgumentParser, default: str = "sharegpt_like",
                      default_num: Optional[int] = None) -> None:
    """The --workload / --workload-dir / --num-requests / --seed flags every script shares."""
    parser.add_argument("--workload", default=default,
                        help=f"one of {', '.join(WORKLOAD_NAMES)} or a path to a workload .json")
    parser.add_argument("--workload-dir", default=None,
                        help=f"folder holding the workloads (default {DEFAULT_WORKLOAD_DIR})")
    parser.add_argument("--num-requests", type=int, default=default_num,
                        help="use the first N requests (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
