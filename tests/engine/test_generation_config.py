"""Sampling defaults from generation_config.json (engine/generation_config.py), the engine
config that carries them, and the offline LLM's get_default_sampling_params()."""
from __future__ import annotations

import json
import shutil

import pytest

from engine.generation_config import GenerationDefaults, load_generation_defaults
from engine.sampling_params import SamplingParams


def write(folder, data) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generation_config.json").write_text(json.dumps(data))
    return str(folder)


def test_auto_reads_the_sampling_keys_only(tmp_path):
    folder = write(tmp_path, {"temperature": 0.6, "top_p": 0.9, "top_k": 0, "min_p": 0.1,
                              "repetition_penalty": 1.05, "max_new_tokens": 64,
                              "eos_token_id": [1, 2], "do_sample": True, "max_length": 8,
                              "num_beams": 4})
    d = load_generation_defaults("auto", folder)
    # top_k 0 is Hugging Face's "off"
    assert d.as_dict() == {"temperature": 0.6, "top_p": 0.9, "top_k": -1, "min_p": 0.1,
                           "repetition_penalty": 1.05, "max_tokens": 64}
    assert "max_new_tokens" in d.describe() and "generation_config.json" in d.source


def test_auto_without_file_or_folder_is_empty(tmp_path):
    assert load_generation_defaults("auto", str(tmp_path)).as_dict() == {}
    assert load_generation_defaults("auto", None).as_dict() == {}  # a GGUF model


def test_vllm_ignores_the_file_but_not_the_override(tmp_path):
    folder = write(tmp_path, {"temperature": 0.6})
    assert load_generation_defaults("vllm", folder).as_dict() == {}
    d = load_generation_defaults("vllm", folder, {"top_p": 0.5})
    assert d.as_dict() == {"top_p": 0.5} and "override" in d.source


def test_folder_mode_and_override_merge(tmp_path):
    model = write(tmp_path / "model", {"temperature": 0.6})
    other = write(tmp_path / "other", {"temperature": 0.3, "top_k": 40, "top_p": 0.7})
    d = load_generation_defaults(other, model, {"top_k": None, "max_new_tokens": 9})
    assert d.as_dict() == {"temperature": 0.3, "top_p": 0.7, "max_tokens": 9}


@pytest.mark.parametrize("mode, override, match", [
    ("{missing}", None, "is not a folder"),
    ("{empty}", None, "has no generation_config.json"),
    ("auto", {"max_tokens": 5}, "'max_tokens' is not a sampling default"),
    ("auto", {"temperature": -1}, "temperature"),
    ("auto", {"top_p": 0}, "top_p"),
    ("auto", {"top_k": 2.5}, "top_k must be an integer"),
    ("auto", {"max_new_tokens": 0}, "max_tokens"),
    ("auto", {"temperature": "hot"}, "temperature must be a finite number"),
])
def test_bad_sources_and_values_name_the_option(tmp_path, mode, override, match):
    (tmp_path / "empty").mkdir()
    mode = mode.format(missing=tmp_path / "missing", empty=tmp_path / "empty")
    with pytest.raises(ValueError, match=match):
        load_generation_defaults(mode, str(tmp_path), override)


def test_unreadable_file_is_an_error(tmp_path):
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="generation_config: cannot read"):
        load_generation_defaults("auto", str(tmp_path))


def test_sampling_request_wins_and_greedy_drops_defaulted_filters():
    d = GenerationDefaults(temperature=0.7, top_p=0.9, top_k=20, min_p=0.05,
                           repetition_penalty=1.1)
    assert d.sampling() == {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
                            "repetition_penalty": 1.1}
    assert d.sampling(temperature=1.0, top_k=-1, min_p=0.0)["top_k"] == -1
    greedy = d.sampling(temperature=0.0, top_p=0.5)
    assert greedy == {"temperature": 0.0, "top_p": 0.5, "top_k": -1, "min_p": 0.0,
                      "repetition_penalty": 1.1}
    assert GenerationDefaults().sampling() == {"temperature": 1.0, "top_p": 1.0, "top_k": -1,
                                               "min_p": 0.0, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def gen_model(tiny_model_dir, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("gen_llm") / "model"
    shutil.copytree(tiny_model_dir("llama"), path)
    gen = json.loads((path / "generation_config.json").read_text())
    # top_k 1 makes the sampled default as deterministic as greedy decoding
    gen.update(temperature=0.8, top_k=1, max_new_tokens=5)
    (path / "generation_config.json").write_text(json.dumps(gen))
    return str(path)


def test_engine_config_carries_the_defaults(gen_model):
    from engine.config import EngineArgs

    cfg = EngineArgs(model=gen_model, device="cpu", max_model_len=64,
                     num_kv_blocks=32).create_engine_config()
    assert cfg.model.generation_defaults.as_dict() == {
        "temperature": 0.8, "top_k": 1, "max_tokens": 5}
    cfg = EngineArgs(model=gen_model, device="cpu", max_model_len=64, num_kv_blocks=32,
                     generation_config="vllm").create_engine_config()
    assert cfg.model.generation_defaults.as_dict() == {}


def test_llm_generate_without_params_uses_the_defaults(gen_model):
    """vLLM's LLM.generate(prompts) samples with get_default_sampling_params()."""
    from engine import LLM

    llm = LLM(model=gen_model, device="cpu", max_model_len=64, num_kv_blocks=64)
    default = llm.get_default_sampling_params()
    assert (default.temperature, default.top_k, default.top_p, default.max_tokens) == \
        (0.8, 1, 1.0, 5)
    prompts = ["Hello, my name is", "The sky is"]
    implicit = llm.generate(prompts, use_tqdm=False)
    greedy = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=5),
                          use_tqdm=False)
    sampled = llm.generate(prompts, SamplingParams(temperature=0.8, max_tokens=5, seed=1),
                           use_tqdm=False)
    ids = [[o.outputs[0].token_ids for o in outs] for outs in (implicit, greedy, sampled)]
    assert ids[0] == ids[1] and all(len(t) == 5 for t in ids[0])
    assert ids[0] != ids[2]  # without top_k 1 the random model samples other tokens
    chat = llm.chat([{"role": "user", "content": "hi"}], use_tqdm=False)
    assert len(chat[0].outputs[0].token_ids) <= 5
    llm.shutdown()


def test_llm_without_defaults_keeps_sampling_params_defaults(tiny_model_dir):
    from engine import LLM

    llm = LLM(model=tiny_model_dir("llama"), device="cpu", max_model_len=64,
              num_kv_blocks=32)
    assert llm.get_default_sampling_params().to_dict() == SamplingParams().to_dict()
    llm.shutdown()
