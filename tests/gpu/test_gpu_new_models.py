"""bf16 on a CUDA GPU: each model of the models issue agrees with HF transformers in bf16 on
>= 99% of greedy positions (teacher-forced along HF's continuation, as test_gpu_engine measures
it), with the fused-MoE Triton kernel serving the MoE models (run by `make test-gpu`)."""
from __future__ import annotations

import gc

import pytest
import torch

from tests.fixtures_models import NEW_ARCHS, load_hf_model

pytestmark = pytest.mark.gpu

PROMPTS = ["Tell me about the ocean.", "Explain gravity.", "What is a cat?",
           "Write a short poem about rain.", "Describe Paris.", "one two three four five"] * 2
NEW_TOKENS = 32


def teacher_forced_agreement(llm, hf, prompts) -> float:
    from engine import SamplingParams

    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW_TOKENS,
                                                ignore_eos=True), use_tqdm=False)
    agree = total = 0
    for o in outs:
        ids = torch.tensor([o.prompt_token_ids], device="cuda")
        ref = hf.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, ids.shape[1]:].tolist()
        forced = llm.generate({"prompt_token_ids": o.prompt_token_ids + ref},
                              SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1),
                              use_tqdm=False)[0]
        for pos, want in enumerate(ref, start=len(o.prompt_token_ids)):
            entry = forced.prompt_logprobs[pos]
            agree += max(entry, key=entry.get) == want
            total += 1
    return agree / total


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_bf16_agrees_with_hf_bf16(arch, tiny_model_dir):
    from engine import LLM

    path = tiny_model_dir(arch)
    llm = LLM(model=path, device="cuda", dtype="bfloat16", gpu_memory_utilization=0.2)
    hf = load_hf_model(path).to(torch.bfloat16).cuda()
    frac = teacher_forced_agreement(llm, hf, PROMPTS)
    print(f"{arch}: bf16 teacher-forced agreement with HF bf16 {frac:.4f}")
    assert frac >= 0.99
    del llm, hf
    gc.collect()
    torch.cuda.empty_cache()
