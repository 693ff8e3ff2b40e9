"""EAGLE-3 proposer: greedy outputs identical with speculation on and off (random heads, chunked
prefill, small blocks), drafts made, counted and mapped to target ids through d2t, preemption
mid-speculation, seeded sampling, a head built to copy its target is accepted, the CLI flag, and
heads that do not fit the target or are incomplete fail at start-up."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import LLM, SamplingParams
from engine.models.llama_eagle3 import aux_layer_ids
from engine.spec_decode.config import SpeculativeConfig
from server.args import make_parser, resolve_args

PROMPTS = [f"Request number {i} says: " + "word " * (3 + 5 * i) for i in range(4)]
GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
HIDDEN, VOCAB = 64, 49152  # the tiny Llama's (tests/fixtures_models.py)


def _tokens(llm, prompts=PROMPTS, params=GREEDY):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def _head_config(hidden=HIDDEN, draft_vocab=VOCAB, kv_heads=2, **extra) -> dict:
    return dict(architectures=["LlamaForCausalLMEagle3"], model_type="llama",
                hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=kv_heads, rms_norm_eps=1e-5,
                vocab_size=VOCAB, draft_vocab_size=draft_vocab, max_position_embeddings=64,
                rope_theta=10000.0, eagle_aux_hidden_state_layer_ids=[0, 1, 2], **extra)


def _write_head(folder: Path, config: dict, tensors: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return str(folder)


def _random_head(folder: Path, hidden=HIDDEN, draft_vocab=1024, seed=0) -> str:
    """Random weights; the draft vocabulary is a random subset of the target's (d2t offsets)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    kv = 2 * (hidden // 4)
    ids = torch.randperm(VOCAB, generator=g)[:draft_vocab].sort().values
    t2d = torch.zeros(VOCAB, dtype=torch.bool)
    t2d[ids] = True
    ones = torch.ones(hidden)
    tensors = {
        "fc.weight": w(hidden, 3 * hidden),
        "midlayer.input_layernorm.weight": ones, "midlayer.hidden_norm.weight": ones,
        "midlayer.post_attention_layernorm.weight": ones,
        "midlayer.self_attn.q_proj.weight": w(hidden, 2 * hidden),
        "midlayer.self_attn.k_proj.weight": w(kv, 2 * hidden),
        "midlayer.self_attn.v_proj.weight": w(kv, 2 * hidden),
        "midlayer.self_attn.o_proj.weight": w(hidden, hidden),
        "midlayer.mlp.gate_proj.weight": w(128, hidden),
        "midlayer.mlp.up_proj.weight": w(128, hidden),
        "midlayer.mlp.down_proj.weight": w(hidden, 128),
        "norm.weight": ones, "lm_head.weight": w(draft_vocab, hidden),
        "d2t": ids - torch.arange(draft_vocab), "t2d": t2d,
    }
    return _write_head(folder, _head_config(hidden, draft_vocab), tensors)


@pytest.fixture(scope="module")
def target(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def reference(target):
    return _tokens(LLM(model=target, device="cpu"))


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    return _random_head(tmp_path_factory.mktemp("eagle3") / "head")


def _eagle3(head: str, k: int = 3) -> dict:
    return {"method": "eagle3", "model": head, "num_speculative_tokens": k}


def _proposer(llm):
    return llm.llm_engine.core.speculator.proposer


def _no_leak(llm):
    stats = llm.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert stats["num_swapped_out_blocks"] == 0
    proposer = _proposer(llm)
    proposer.release(set())  # what the next step does once these requests are gone
    assert proposer.bm.num_free_gpu_blocks == proposer.bm.gpu.num_blocks


def _record_drafts(llm) -> list[int]:
    """Every draft token the proposer returns from now on."""
    proposer, drafted = _proposer(llm), []
    propose = proposer.propose

    def recording(seqs, max_tokens):
        drafts = propose(seqs, max_tokens)
        drafted.extend(t for d in drafts for t in d)
        return drafts

    proposer.propose = recording
    return drafted


def test_greedy_identical_with_chunked_prefill(target, head, reference):
    llm = LLM(model=target, device="cpu", max_num_batched_tokens=16, block_size=4,
              num_kv_blocks=128, speculative_config=_eagle3(head))
    drafted = _record_drafts(llm)
    assert _tokens(llm) == reference
    # Drafts are target ids: the head's 1024-token draft vocabulary mapped through d2t (draft
    # id i is target id i + d2t[i]), not raw draft ids (all below 1024).
    d2t = load_file(str(Path(head) / "model.safetensors"))["d2t"]
    targets = set((d2t + torch.arange(len(d2t))).tolist())
    assert drafted and set(drafted) <= targets and max(drafted) >= len(d2t)
    stats = llm.stats()
    assert stats["spec_decode_num_drafts"] > 0
    assert stats["spec_decode_num_draft_tokens"] >= 2 * stats["spec_decode_num_drafts"]
    assert _proposer(llm).runner.model.model.aux_hidden_layers == (0, 1, 2)
    _no_leak(llm)


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_mid_speculation(mode, target, head, reference):
    llm = LLM(model=target, device="cpu", num_kv_blocks=9, preemption_mode=mode,
              max_num_batched_tokens=64, num_cpu_blocks=64, speculative_config=_eagle3(head))
    assert _tokens(llm) == reference
    stats = llm.stats()
    assert stats["num_preemptions"] > 0 and stats["spec_decode_num_draft_tokens"] > 0
    _no_leak(llm)


def _bigram_target(src: str, folder: Path) -> str:
    """The tiny Llama with every attention output and MLP output zeroed: its residual stream
    is the token embedding, so its next token depends on the current token only."""
    shutil.copytree(src, folder)
    weights = load_file(str(folder / "model.safetensors"))
    for name in weights:
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            weights[name] = torch.zeros_like(weights[name])
    save_file(weights, str(folder / "model.safetensors"))
    return str(folder)


def _copy_head(target: str, folder: Path) -> str:
    """A head that predicts exactly what the bigram target would: its attention picks the
    current token's normed embedding (q = 30 * k, the same token scores highest) and outputs
    it unchanged; the hidden state is zeroed (norm_before_residual with a zero hidden_norm);
    the final norm and LM head are the target's, over the full vocabulary, with no embedding of
    its own (the target's is shared)."""
    t = load_file(str(Path(target) / "model.safetensors"))
    eye = torch.eye(HIDDEN)
    pick = torch.cat([eye, torch.zeros(HIDDEN, HIDDEN)], dim=1)  # concat(emb, hidden) -> emb
    tensors = {
        "fc.weight": torch.zeros(HIDDEN, 3 * HIDDEN),
        "midlayer.input_layernorm.weight": torch.ones(HIDDEN),
        "midlayer.hidden_norm.weight": torch.zeros(HIDDEN),
        "midlayer.post_attention_layernorm.weight": torch.ones(HIDDEN),
        "midlayer.self_attn.q_proj.weight": 30.0 * pick,
        "midlayer.self_attn.k_proj.weight": pick, "midlayer.self_attn.v_proj.weight": pick,
        "midlayer.self_attn.o_proj.weight": eye,
        "midlayer.mlp.gate_proj.weight": torch.zeros(128, HIDDEN),
        "midlayer.mlp.up_proj.weight": torch.zeros(128, HIDDEN),
        "midlayer.mlp.down_proj.weight": torch.zeros(HIDDEN, 128),
        "norm.weight": t["model.norm.weight"], "lm_head.weight": t["lm_head.weight"],
        "d2t": torch.zeros(VOCAB, dtype=torch.long),
    }
    config = _head_config(kv_heads=4, norm_before_residual=True)
    return _write_head(folder, config, tensors)


def test_head_copying_the_target_is_accepted(target, tmp_path):
    bigram = _bigram_target(target, tmp_path / "bigram")
    head = _copy_head(bigram, tmp_path / "copy_head")
    ref = _tokens(LLM(model=bigram, device="cpu"), PROMPTS[:2])
    llm = LLM(model=bigram, device="cpu", speculative_config=_eagle3(head, k=4))
    assert _tokens(llm, PROMPTS[:2]) == ref
    stats = llm.stats()
    assert stats["spec_decode_num_draft_tokens"] > 0
    assert stats["spec_decode_acceptance_rate"] > 0.9, stats
    assert stats["spec_decode_accepted_by_position"][3] > 0
    _no_leak(llm)


@pytest.mark.parametrize("change,match", [
    ({"hidden_size": 32}, r"head's hidden_size \(32\) differs from the target's \(64\)"),
    ({"target_hidden_size": 128}, r"target_hidden_size \(128\) differs"),
    ({"eagle_aux_hidden_state_layer_ids": [0, 1, 5]}, r"auxiliary hidden-state layers"),
    ({"architectures": ["LlamaForCausalLM"]}, "is not an EAGLE-3 head"),
])
def test_head_that_does_not_fit_fails_at_start_up(change, match, target, head, tmp_path):
    bad = tmp_path / "bad_head"
    shutil.copytree(head, bad)
    config = json.loads((bad / "config.json").read_text())
    config.update(change)
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="speculative_config.model: .*" + match):
        LLM(model=target, device="cpu", speculative_config=_eagle3(str(bad)))


def _drop_file(folder: Path, name: str) -> None:
    (folder / name).unlink()


def _drop_tensor(folder: Path, name: str) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors[name]
    save_file(tensors, str(folder / "model.safetensors"))


@pytest.mark.parametrize("break_head,match", [
    (lambda d: shutil.rmtree(d), "does not exist"),
    (lambda d: _drop_file(d, "config.json"), "has no config.json"),
    (lambda d: _drop_file(d, "model.safetensors"), "has no safetensors"),
    (lambda d: _drop_tensor(d, "fc.weight"), "missing 1 weight.*fc.weight"),
    (lambda d: _drop_tensor(d, "d2t"), r"no 'd2t' but its draft vocabulary \(1024\)"),
], ids=["no_folder", "no_config", "no_weights", "no_fc", "no_d2t"])
def test_missing_head_files_fail_at_start_up(break_head, match, target, head, tmp_path):
    bad = tmp_path / "bad_head"
    shutil.copytree(head, bad)
    break_head(bad)
    with pytest.raises(ValueError, match="speculative_config.model: .*" + match):
        LLM(model=target, device="cpu", speculative_config=_eagle3(str(bad)))


def test_cli_flag_and_default_aux_layers(head):
    engine_args, _ = resolve_args(make_parser().parse_args(
        ["serve", "--speculative-config", json.dumps(_eagle3(head, k=5))]))
    cfg = SpeculativeConfig.from_dict(engine_args.speculative_config)
    assert (cfg.method, cfg.model, cfg.num_speculative_tokens) == ("eagle3", head, 5)
    # Without eagle_aux_hidden_state_layer_ids: EAGLE-3's low / middle / high default.
    assert aux_layer_ids(SimpleNamespace(), 32) == [2, 16, 29]
    nested = SimpleNamespace(eagle_config={"eagle_aux_hidden_state_layer_ids": [1, 9, 20]})
    assert aux_layer_ids(nested, 32) == [1, 9, 20]


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_greedy_identical_on_other_llama_family_targets(arch, tiny_model_dir, head):
    """Mistral (sliding window, head_dim 32 != hidden / heads) and Qwen2 (qkv bias) targets."""
    target = tiny_model_dir(arch)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    ref = _tokens(LLM(model=target, device="cpu"), PROMPTS[1:3], params)
    llm = LLM(model=target, device="cpu", speculative_config=_eagle3(head))
    assert _tokens(llm, PROMPTS[1:3], params) == ref
    assert llm.stats()["spec_decode_num_draft_tokens"] > 0
    _no_leak(llm)


def test_non_llama_target_fails_at_start_up(tiny_model_dir, head):
    with pytest.raises(ValueError, match="speculative_config.model: .*auxiliary hidden states"):
        LLM(model=tiny_model_dir("gpt2"), device="cpu", speculative_config=_eagle3(head))


def test_seeded_sampling_reproducible_and_batch_mixed(target, head):
    """Seeded sampled requests give the same tokens twice and alone vs in a batch with greedy
    ones; the greedy ones equal their plain decode."""
    sampled = [SamplingParams(temperature=0.8, top_p=0.9, seed=i, max_tokens=12, ignore_eos=True)
               for i in range(2)]
    llm = LLM(model=target, device="cpu", speculative_config=_eagle3(head))
    first = _tokens(llm, PROMPTS[:2], sampled)
    assert _tokens(llm, PROMPTS[:2], sampled) == first
    mixed = llm.generate(PROMPTS[:3], sampled + [GREEDY], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[:2]] == first
    assert mixed[2].outputs[0].token_ids == _tokens(LLM(model=target, device="cpu"),
                                                   PROMPTS[2:3])[0]
    assert llm.stats()["spec_decode_num_drafts"] > 0
    _no_leak(llm)
