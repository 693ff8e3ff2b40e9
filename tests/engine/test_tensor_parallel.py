"""Tensor parallelism on the CPU (gloo): a TP=2 engine generates exactly what the one-rank engine
generates, for every architecture's tiny fp32 model.

One engine pair per architecture; one `generate` batch exercises the features together: chunked
prefill (16-token steps), preemption (a 6-block pool; swap for half the architectures, recompute
for the others), prefix caching (prompts sharing a 2-block prefix), n=2 seeded sampling and beam
search. Qwen3 runs with a single KV head, replicated over both ranks. A dead worker makes the next
step raise instead of hanging.
"""
from __future__ import annotations

import os
import signal

import pytest

from engine import LLM, SamplingParams
from tests.fixtures_models import NEW_ARCHS, TINY_ARCHS

SHARED = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
PROMPTS = [SHARED + " sixteen", SHARED + " and more", "Hello world",
           "Paged attention stores the KV cache in blocks", "A"]
PARAMS = [SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=1),
          SamplingParams(temperature=0, max_tokens=10, ignore_eos=True),
          SamplingParams(n=2, temperature=0.9, seed=7, max_tokens=8, ignore_eos=True),
          SamplingParams(n=2, best_of=2, use_beam_search=True, temperature=0, max_tokens=6,
                         ignore_eos=True),
          SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)]
# Mistral and Qwen3-MoE run the same classes as Llama and Qwen3 + Qwen2-MoE.
ARCHS = tuple(a for a in TINY_ARCHS + NEW_ARCHS if a not in ("mistral", "qwen3_moe"))
# Qwen3 with one KV head: both ranks hold a copy of it.
OVERRIDES = {"qwen3": {"num_key_value_heads": 1}}


def _run(path: str, tp: int, preemption: str):
    llm = LLM(model=path, device="cpu", max_num_batched_tokens=16, num_kv_blocks=6,
              block_size=8, preemption_mode=preemption, enable_prefix_caching=True,
              tensor_parallel_size=tp, distributed_timeout_s=120)
    try:
        outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
        return [[c.token_ids for c in o.outputs] for o in outs], outs, llm.stats()
    finally:
        llm.shutdown()


@pytest.mark.parametrize("arch", ARCHS)
def test_tp2_equals_tp1(arch, tiny_model_dir):
    path = tiny_model_dir(arch, **OVERRIDES.get(arch, {}))
    preemption = "swap" if ARCHS.index(arch) % 2 else "recompute"
    ref, ref_outs, _ = _run(path, 1, preemption)
    got, outs, stats = _run(path, 2, preemption)
    assert got == ref, arch
    assert stats["num_preemptions"] > 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert stats["prefix_cache_hits"] > 0
    for a, b in zip(outs[0].outputs[0].logprobs, ref_outs[0].outputs[0].logprobs):
        assert set(a) == set(b) and all(abs(a[t] - b[t]) < 1e-4 for t in a)


def test_async_scheduling_then_dead_worker_fails_the_next_step(tiny_model_dir):
    """Workers resolve async scheduling's placeholder tokens themselves; then a killed worker
    makes the next step raise, naming the rank."""
    path = tiny_model_dir("llama")
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    prompts = PROMPTS[2:]
    # A constrained request too: its grammar stays with rank 0 (workers get requests without it).
    constrained = SamplingParams(temperature=0, max_tokens=8,
                                 structured_outputs={"regex": "[0-9]{2}-[a-z]{2}"})
    one = LLM(model=path, device="cpu")
    ref = [o.outputs[0].token_ids for o in one.generate(prompts, params, use_tqdm=False)]
    ref_constrained = one.generate(prompts[:1], constrained, use_tqdm=False)[0].outputs[0]
    llm = LLM(model=path, device="cpu", tensor_parallel_size=2, async_scheduling=True,
              distributed_timeout_s=60)
    try:
        outs = llm.generate(prompts, params, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in outs] == ref
        got = llm.generate(prompts[:1], constrained, use_tqdm=False)[0].outputs[0]
        assert got.token_ids == ref_constrained.token_ids and len(got.text) == 5
        (pid,) = llm.llm_engine.core.runner.worker_pids()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="tensor-parallel step failed: rank 1"):
            llm.generate(["Hello again"], params, use_tqdm=False)
    finally:
        llm.shutdown()


@pytest.mark.parametrize("arch,fmt,sym,method", [
    ("llama", "auto_gptq", True, "gptq"),
    ("phi3", "llm_compressor", False, "compressed-tensors")])
def test_weight_only_checkpoint_tp2_equals_tp1(arch, fmt, sym, method, tiny_model_dir, tmp_path):
    """A 4-bit checkpoint (group 32): packed weights, scales and zeros shard along their group
    boundaries (Phi-3's checkpoint-fused qkv / gate_up split into shards first); the sharded
    model generates what the one-rank model generates."""
    from tests.engine.quantization._reference import quantize

    path = str(quantize(tiny_model_dir(arch), tmp_path, fmt, 4, 32, sym))
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    got = {}
    for tp in (1, 2):
        llm = LLM(model=path, device="cpu", tensor_parallel_size=tp, distributed_timeout_s=120)
        try:
            assert llm.stats()["quantization"].startswith(method)
            outs = llm.generate(PROMPTS[2:], params, use_tqdm=False)
            got[tp] = [o.outputs[0].token_ids for o in outs]
        finally:
            llm.shutdown()
    assert got[2] == got[1]


def _token_chain_model(src: str, dst) -> str:
    """The tiny model with its attention and MLP outputs zeroed and its LM head equal to its
    embedding: the next greedy token is (almost always) the current one, a repetition that
    n-gram drafts predict."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(f"{src}/model.safetensors")
    for name, w in weights.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            w.zero_()
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_file(weights, f"{dst}/model.safetensors", metadata={"format": "pt"})
    return str(dst)


def test_ngram_speculation_tp2_equals_tp1(tiny_model_dir, tmp_path):
    """Verify chunks run on every rank like any chunk; rank 0's verifier decides."""
    path = _token_chain_model(tiny_model_dir("llama"), tmp_path / "chain")
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
    params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=1),
              SamplingParams(temperature=0.8, seed=3, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)]
    prompts = PROMPTS[:3]
    want = [o.outputs[0].token_ids
            for o in LLM(model=path, device="cpu").generate(prompts, params, use_tqdm=False)]
    got, stats = {}, {}
    for tp in (1, 2):
        llm = LLM(model=path, device="cpu", tensor_parallel_size=tp, speculative_config=spec,
                  distributed_timeout_s=120)
        try:
            got[tp] = [o.outputs[0].token_ids
                       for o in llm.generate(prompts, params, use_tqdm=False)]
            stats[tp] = llm.stats()
        finally:
            llm.shutdown()
    assert got[2] == got[1]
    assert got[1][0] == want[0] and got[1][2] == want[2]  # greedy: as without speculation
    assert stats[2]["spec_decode_num_accepted_tokens"] > 0
    assert stats[2]["num_free_blocks"] == stats[2]["num_total_blocks"]


def test_model_drafts_with_tensor_parallelism_are_refused(tiny_model_dir):
    path = tiny_model_dir("llama")
    with pytest.raises(ValueError, match="speculative_config: method 'draft_model' cannot be "
                                         "combined with tensor_parallel_size"):
        LLM(model=path, device="cpu", tensor_parallel_size=2,
            speculative_config={"method": "draft_model", "model": path,
                                "num_speculative_tokens": 2})
