"""Each architecture, loaded by our loader and run through paged attention, equals HF in fp32."""
from __future__ import annotations

import pytest
import torch

from engine.attention.backend import TorchAttentionBackend
from engine.attention.metadata import AttentionMetadata
from engine.config import ModelConfig
from engine.layers.attention import attention_layers, bind_kv_caches
from engine.loader.model_loader import load_model
from engine.loader.resolve import resolve_model
from tests.fixtures_models import NEW_ARCHS, TINY_ARCHS, load_hf_model

BLOCK_SIZE = 4
NUM_BLOCKS = 16
# Deliberately scattered: the sequence's blocks are neither contiguous nor ordered.
BLOCK_TABLE = [7, 2, 11, 0, 5, 14, 9, 3]
ATOL = 1e-4
# Extra layouts of the same families: OPT-350m style (post-LN, projected embeddings) and GPT-NeoX
# with sequential residuals. Test id -> (arch, config overrides).
CASES = {**{a: (a, {}) for a in TINY_ARCHS + NEW_ARCHS},
         "opt_350m": ("opt", dict(do_layer_norm_before=False, word_embed_proj_dim=32)),
         "gpt_neox_sequential": ("gpt_neox", dict(use_parallel_residual=False)),
         # Phi with per-head q/k LayerNorms; Qwen3 with its sliding-window layers switched on.
         "phi_qk_layernorm": ("phi", dict(qk_layernorm=True)),
         "qwen3_sliding": ("qwen3", dict(use_sliding_window=True, sliding_window=8,
                                         max_window_layers=1))}


def model_config(path, load_format: str = "auto", **overrides) -> ModelConfig:
    r = resolve_model(str(path), None, load_format, False, overrides)
    return ModelConfig(model=r.model, tokenizer=r.tokenizer, hf_config=r.hf_config,
                       dtype=torch.float32, max_model_len=512, load_format=r.load_format,
                       gguf_file=r.gguf_file)


class OneSequence:
    """A minimal paged runner for one sequence: KV caches, block table, metadata per step."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        caches = []
        for layer in attention_layers(model):
            shape = (NUM_BLOCKS, BLOCK_SIZE, layer.num_kv_heads, layer.head_dim)
            # Poisoned with a large finite value: attending to a slot that was never written would
            # show up in the logits. (Not NaN: the reference decode path multiplies masked-out,
            # zero-probability padding slots by their values, so NaN there would propagate.)
            caches.append((torch.full(shape, 1e3), torch.full(shape, 1e3)))
        bind_kv_caches(model, caches, TorchAttentionBackend())
        self.num_computed = 0

    @torch.no_grad()
    def step(self, token_ids: list[int]) -> torch.Tensor:
        """Run the next `token_ids` of the sequence; returns their logits [len, vocab]."""
        start, n = self.num_computed, len(token_ids)
        positions = torch.arange(start, start + n)
        slots = torch.tensor([BLOCK_TABLE[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE
                              for p in positions.tolist()])
        seq_len = start + n
        meta = AttentionMetadata(
            num_seqs=1, num_tokens=n, slot_mapping=slots,
            query_start_loc=torch.tensor([0, n], dtype=torch.int32),
            seq_lens=torch.tensor([seq_len], dtype=torch.int32),
            block_tables=torch.tensor([BLOCK_TABLE], dtype=torch.int32),
            max_query_len=n, max_seq_len=seq_len, query_lens_cpu=[n], seq_lens_cpu=[seq_len])
        hidden = self.model(torch.tensor(token_ids), positions, meta)
        self.num_computed = seq_len
        return self.model.compute_logits(hidden)


@pytest.mark.parametrize("case", CASES)
def test_matches_hf_prefill_chunks_and_decode(case, tiny_model_dir):
    arch, overrides = CASES[case]
    path = tiny_model_dir(arch, **overrides)
    model = load_model(model_config(path), torch.device("cpu"))
    hf = load_hf_model(path)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(100, 1000, (21,), generator=gen).tolist()
    runner = OneSequence(model)
    # Prefill in two chunks (the second reads the first from the cache), then greedy decodes.
    got = [runner.step(tokens[:13]), runner.step(tokens[13:])]
    with torch.no_grad():
        want = hf(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(torch.cat(got), want, atol=ATOL, rtol=0)
    for _ in range(4):
        nxt = int(want[-1].argmax())
        tokens.append(nxt)
        got = runner.step([nxt])
        with torch.no_grad():
            want = hf(torch.tensor([tokens])).logits[0]
        torch.testing.assert_close(got[0], want[-1], atol=ATOL, rtol=0)
        assert int(got[0].argmax()) == int(want[-1].argmax())


def test_sharded_safetensors_and_bin_load_the_same(tiny_model_dir, tmp_path):
    hf = load_hf_model(tiny_model_dir("qwen2"))
    hf.save_pretrained(str(tmp_path / "sharded"), max_shard_size="5MB")
    # transformers 5 writes only safetensors: write the legacy .bin checkpoint by hand.
    hf.config.save_pretrained(tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ref = load_model(model_config(tiny_model_dir("qwen2")), torch.device("cpu")).state_dict()
    for sub, fmt in (("sharded", "safetensors"), ("bin", "pt")):
        cfg = model_config(tmp_path / sub)
        assert cfg.load_format == fmt
        state = load_model(cfg, torch.device("cpu")).state_dict()
        for key, value in ref.items():
            torch.testing.assert_close(state[key], value, atol=0, rtol=0)


def test_dummy_load_of_config_only_folder(tiny_model_dir, tmp_path):
    from transformers import AutoConfig

    AutoConfig.from_pretrained(tiny_model_dir("llama")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no safetensors or .bin weights"):
        model_config(tmp_path)
    cfg = model_config(tmp_path, "dummy")
    assert cfg.load_format == "dummy"
    a = load_model(cfg, torch.device("cpu"))
    b = load_model(cfg, torch.device("cpu"))
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(a.model.norm.weight, torch.ones_like(a.model.norm.weight))
    logits = OneSequence(a).step(list(range(100, 110)))
    assert logits.shape == (10, cfg.hf_config.vocab_size) and torch.isfinite(logits).all()


def test_bf16_load_runs(tiny_model_dir):
    cfg = model_config(tiny_model_dir("llama"))
    cfg = ModelConfig(**{**cfg.__dict__, "dtype": torch.bfloat16})
    model = load_model(cfg, torch.device("cpu"))
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    logits = OneSequence(model).step(list(range(100, 110)))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("seq_len", [None, 4097])
def test_longrope_matches_transformers(seq_len):
    """Phi-3's LongRoPE: short factors within the original length, long ones past it; our
    cos/sin cache switches per position at the original length."""
    from transformers import Phi3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from engine.layers.rotary import get_rope

    rope = {"rope_type": "longrope", "short_factor": [1.0 + 0.05 * i for i in range(16)],
            "long_factor": [1.0 + 0.7 * i for i in range(16)]}
    cfg = Phi3Config(hidden_size=256, num_attention_heads=8, max_position_embeddings=131072,
                     original_max_position_embeddings=4096, rope_scaling=rope)
    want, want_scale = ROPE_INIT_FUNCTIONS["longrope"](cfg, "cpu", seq_len=seq_len)
    emb = get_rope(cfg, 32, max_position=8192)
    assert emb.attention_scaling == pytest.approx(want_scale)
    pos = torch.tensor([4095 if seq_len is None else 4100])
    freqs = pos.float()[:, None] * want[None, :]
    cos, sin = emb.cos_sin_cache[pos].chunk(2, dim=-1)
    torch.testing.assert_close(cos, freqs.cos() * want_scale, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, freqs.sin() * want_scale, atol=1e-6, rtol=0)
