"""CUDA-graph stand-ins for the CPU: `EagerGraphRunner` is the engine's `CudaGraphRunner` whose
"graphs" run their captured forward again, eagerly, on the same static buffers at each replay.

Graph capture needs CUDA; with these, CPU tests check what the GPU path relies on (padding
rows, decode rows through the decode kernel, prefills in fixed slots, buffers reused between
sizes and steps, what a captured forward returns), with Triton under its CPU interpreter.
"""
from __future__ import annotations

import torch

from engine.cuda_graphs import CudaGraphRunner


class EagerReplay:
    def __init__(self, fn):
        self.fn = fn
        self.replays = 0

    def replay(self):
        self.replays += 1
        self.fn()


class EagerGraphRunner(CudaGraphRunner):
    """CudaGraphRunner whose 'graphs' run the captured forward eagerly at replay."""

    def _capture_one(self, meta, n, pool, graphs, outputs):
        model = self.runner.model

        def forward():
            outputs[n] = model(self.input_ids[:n], self.positions[:n], meta)

        forward()
        graphs[n] = EagerReplay(forward)
        return None


def replays(graphs: CudaGraphRunner) -> tuple[int, int]:
    """(decode graph replays, mixed graph replays) so far."""
    return (sum(g.replays for g in graphs.graphs.values()),
            sum(g.replays for g in graphs.mixed_graphs.values()))


def capture_eagerly(monkeypatch) -> list:
    """Make every ModelRunner's `capture_graphs` install an EagerGraphRunner, whatever its
    device; returns the list of runners that captured, in order."""
    from engine.model_runner import ModelRunner

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    captured = []

    def capture(runner):
        runner.graphs = EagerGraphRunner(runner)
        runner.graphs.capture()
        captured.append(runner)

    monkeypatch.setattr(ModelRunner, "capture_graphs", capture)
    return captured
