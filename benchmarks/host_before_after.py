"""Shared driver of the host-cost micro-benchmarks that time a new code path against the one it
replaced (benchmarks/ngram_lookup.py, benchmarks/penalty_tokens.py)."""
from __future__ import annotations

import argparse
from typing import Callable

from benchmarks.record import append_result


def run(doc: str, bench: str, batch: int, contexts: list[int], names: tuple[str, str],
        ms_per_step: Callable[[int, int, int, bool], float], params: dict) -> None:
    """`--batch`, `--context` (several), `--steps` from the command line; for each context,
    ms_per_step(batch, context, steps, new) for the new path and the old one (a quarter of the
    steps: it is the slow one), printed and recorded to benchmarks/results/<bench>.jsonl."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--context", type=int, nargs="+", default=contexts)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    new_name, old_name = names
    for context in a.context:
        new = ms_per_step(a.batch, context, a.steps, True)
        old = ms_per_step(a.batch, context, max(2, a.steps // 4), False)
        print(f"batch {a.batch}, context {context}: {new_name} {new:.2f} ms/step, "
              f"{old_name} {old:.2f} ms/step ({old / new:.1f}x)")
        append_result(bench, {"batch": a.batch, "context": context, **params},
                      {f"{new_name}_ms_per_step": new, f"{old_name}_ms_per_step": old,
                       "speedup": old / new})
