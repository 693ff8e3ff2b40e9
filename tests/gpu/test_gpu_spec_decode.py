"""Speculative decoding on a CUDA GPU with real CUDA graphs (`make test-gpu`): the target's
graphs return the auxiliary hidden states an EAGLE-3 head reads, and a draft model's runner
captures and replays graphs of its own. float32 on a tiny Llama (head size 64, which the GPU
attention kernels take) with the Triton backend named (fp32 alone stays on the torch path).
Verify chunks attend through the decode kernel like plain decodes (one row per token), but the
kernel's KV split count follows the batch's width, so at most one sequence may part from the
reference.
"""
from __future__ import annotations

import gc

import pytest
import torch

from tests.engine.spec_decode.test_spec_eagle3 import _random_head

pytestmark = pytest.mark.gpu

PROMPTS = [f"Request number {i} says: " + "word " * (3 + 5 * i) for i in range(4)]


def _tokens(llm):
    from engine import SamplingParams
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def target(tiny_model_dir):
    return tiny_model_dir("llama", hidden_size=256, num_attention_heads=4, head_dim=64)


@pytest.fixture(scope="module")
def reference(target):
    from engine import LLM
    llm = LLM(model=target, device="cuda", dtype="float32", attention_backend="triton",
              gpu_memory_utilization=0.2)
    assert llm.llm_engine.core.runner.graphs is not None
    out = _tokens(llm)
    del llm
    gc.collect()
    return out


def _close(got, ref) -> None:
    same = sum(a == b for a, b in zip(got, ref))
    assert same >= len(ref) - 1, (got, ref)


def test_eagle3_with_target_graphs(target, reference, tmp_path):
    from engine import LLM
    head = _random_head(tmp_path / "head", hidden=256)
    llm = LLM(model=target, device="cuda", dtype="float32", attention_backend="triton",
              gpu_memory_utilization=0.2,
              speculative_config={"method": "eagle3", "model": head,
                                  "num_speculative_tokens": 3})
    graphs = llm.llm_engine.core.runner.graphs
    assert graphs is not None
    assert all(isinstance(o, tuple) for o in graphs.outputs.values())
    assert all(isinstance(o, tuple) for o in graphs.mixed_outputs.values())
    rows = []
    run = graphs.run
    graphs.run = lambda inputs: (rows.append((inputs.meta.max_query_len,
                                              inputs.meta.num_tokens)), run(inputs))[1]
    _close(_tokens(llm), reference)
    # verify steps (k + 1 rows per sequence, more rows than the 4 requests) replayed graphs
    assert any(q == 1 and n > len(PROMPTS) for q, n in rows), rows
    stats = llm.stats()
    assert stats["spec_decode_num_drafts"] > 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    del llm
    gc.collect()
    torch.cuda.empty_cache()


def test_draft_model_with_graphs(target, reference):
    from engine import LLM
    llm = LLM(model=target, device="cuda", dtype="float32", attention_backend="triton",
              gpu_memory_utilization=0.2,
              speculative_config={"method": "draft_model", "model": target,
                                  "num_speculative_tokens": 3})
    core = llm.llm_engine.core
    draft_graphs = core.speculator.proposer.runner.graphs
    assert core.runner.graphs is not None and draft_graphs is not None
    runs = []
    run = draft_graphs.run
    draft_graphs.run = lambda inputs: (runs.append(inputs.meta.max_query_len), run(inputs))[1]
    _close(_tokens(llm), reference)
    assert runs and 1 in runs  # single-token drafting steps replayed the draft's graphs
    stats = llm.stats()
    assert stats["spec_decode_acceptance_rate"] > 0.9, stats  # the draft is the target
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    del llm
    gc.collect()
    torch.cuda.empty_cache()
