"""Per architecture: batched greedy generation equals HF transformers token for token (fp32)."""
from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from tests.fixtures_models import TINY_ARCHS, load_hf_model

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog and then runs far away into the forest",
    "A",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
    "Paged attention stores the KV cache in blocks",
]
MAX_TOKENS = 12


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int):
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                         pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, ids.shape[1]:].tolist()
    logprobs = [torch.log_softmax(l[0].float(), -1)[t].item() for l, t in zip(out.logits, tokens)]
    return tokens, logprobs


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_greedy_batch_equals_hf(arch, tiny_model_dir):
    path = tiny_model_dir(arch)
    llm = LLM(model=path, device="cpu", max_num_batched_tokens=32)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=2)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    hf = load_hf_model(path)
    for out in outs:
        ref_tokens, ref_logprobs = hf_greedy(hf, out.prompt_token_ids, MAX_TOKENS)
        got = out.outputs[0]
        assert got.token_ids == ref_tokens, f"{arch}: {out.prompt!r}"
        assert got.finish_reason == "length"
        for entry, tok, ref in zip(got.logprobs, got.token_ids, ref_logprobs):
            assert abs(entry[tok] - ref) < 1e-4
            assert len(entry) >= 2  # sampled token plus the top-2
    stats = llm.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
