"""Async scheduling on a CUDA GPU for requests whose sampling reads their latest tokens
(`make test-gpu`): penalties and grammars sample on the runner's sampling thread once the
previous step's tokens are known, while the next forward pass runs. Their outputs must equal the
synchronous engine's. float32, tiny Llama with head size 64 (the GPU attention kernels' sizes).
"""
from __future__ import annotations

import gc

import pytest
import torch

pytestmark = pytest.mark.gpu

PROMPTS = [f"Request {i}: " + "alpha beta gamma " * (1 + 3 * i) for i in range(6)]


def _params():
    from engine import SamplingParams
    from engine.structured_output import StructuredOutputsParams as SO
    return [SamplingParams(temperature=0, max_tokens=32, repetition_penalty=1.8,
                           ignore_eos=True),
            SamplingParams(temperature=0.9, seed=2, max_tokens=24, presence_penalty=1.5),
            SamplingParams(temperature=0, max_tokens=28, frequency_penalty=2.0,
                           ignore_eos=True),
            SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
            SamplingParams(temperature=0, max_tokens=30, structured_outputs=SO(regex=r"[a-c ]+")),
            SamplingParams(temperature=0.8, seed=6, max_tokens=16, frequency_penalty=-1.0,
                           repetition_penalty=1.3)]


def test_penalties_and_grammars_overlap_with_sync_outputs(tiny_model_dir):
    from engine import LLM
    path = tiny_model_dir("llama", hidden_size=256, num_attention_heads=4, head_dim=64)
    outs = {}
    for mode in (False, True):
        llm = LLM(model=path, device="cuda", dtype="float32", gpu_memory_utilization=0.2,
                  async_scheduling=mode)
        assert llm.llm_engine.core.async_scheduling == mode
        outs[mode] = [[c.token_ids for c in o.outputs]
                      for o in llm.generate(PROMPTS, _params(), use_tqdm=False)]
        stats = llm.stats()
        assert stats["num_free_blocks"] == stats["num_total_blocks"]
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    assert outs[True] == outs[False]
