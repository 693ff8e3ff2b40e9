"""The static buffers a mixed-step CUDA graph replays on give the eager step's tokens.

Graph capture needs CUDA; here each "graph" replays its captured forward eagerly on the same
static buffers (tests/graph_replay.py; Triton under its CPU interpreter).
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("msgspec")  # the engine package needs it; absent on the bare GPU image

from engine import LLM, SamplingParams
from engine.cuda_graphs import mixed_token_sizes
from tests.graph_replay import EagerGraphRunner, replays


def test_mixed_token_sizes():
    assert mixed_token_sizes(0) == []
    assert mixed_token_sizes(512)[:4] == [16, 32, 64, 96] and mixed_token_sizes(512)[-1] == 512
    assert mixed_token_sizes(100) == [16, 32, 64, 96, 100]
    big = mixed_token_sizes(2048)
    assert big[-1] == 2048 and big[16:19] == [512, 576, 640] and big[24:26] == [1024, 1152]
    assert all(b - a <= 0.125 * b for a, b in zip(big, big[1:]) if b >= 256)  # padding < 12.5%


def test_graph_layout_matches_eager(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    llm = LLM(model=tiny_model_dir("llama"), device="cpu", dtype="float32",
              attention_backend="triton", max_num_batched_tokens=48, max_num_seqs=16,
              max_cuda_graph_tokens=48, num_kv_blocks=64, max_model_len=128)
    runner = llm.llm_engine.core.runner
    prompts = [list(range(5 + 7 * i, 5 + 7 * i + n)) for i, n in enumerate([3, 17, 40, 9, 2, 25])]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    eager = [o.outputs[0].token_ids for o in llm.generate(
        [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)]

    graphs = EagerGraphRunner(runner)
    assert graphs.mixed_sizes == [16, 32, 48]
    graphs.capture()
    runner.graphs = graphs
    with_graphs = [o.outputs[0].token_ids for o in llm.generate(
        [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)]
    assert with_graphs == eager
    decode, mixed = replays(graphs)
    assert decode > 0 and mixed > 0


def test_rows_past_the_decode_graphs_replay_a_mixed_graph(tiny_model_dir, monkeypatch):
    """Short prompts attend as one row per token (engine/model_inputs.py): a step of more such
    rows than the decode graphs hold (max_num_seqs 2 here) replays a mixed graph, not eagerly."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    llm = LLM(model=tiny_model_dir("llama"), device="cpu", dtype="float32",
              attention_backend="triton", max_num_batched_tokens=32, max_num_seqs=2,
              max_cuda_graph_tokens=32, num_kv_blocks=32, max_model_len=64)
    runner = llm.llm_engine.core.runner
    prompts = [{"prompt_token_ids": list(range(7 + 3 * i, 13 + 3 * i))} for i in range(2)]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    eager = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]

    graphs = EagerGraphRunner(runner)
    assert graphs.max_bs == 2 and graphs.mixed_sizes == [16, 32]
    graphs.capture()
    runner.graphs = graphs
    fits = []
    can_run = graphs.can_run
    graphs.can_run = lambda inputs: (fits.append((inputs.meta.num_seqs, can_run(inputs))),
                                     fits[-1][1])[1]
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)] == eager
    assert (12, True) in fits and all(ok for _, ok in fits)  # 2 prompts x 6 rows: mixed graph
    decode, mixed = replays(graphs)
    assert decode > 0 and mixed > 0
