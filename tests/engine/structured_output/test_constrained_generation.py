"""Constrained generation offline: every output of 50 JSON schemas (greedy and temperature 1)
parses and validates; regex and choice likewise; n > 1, stop strings, preemption (recompute and
swap) and prefix caching keep outputs valid; bad specs are ValueErrors naming the field."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest

from engine import LLM, SamplingParams
from engine.structured_output import StructuredOutputsParams
from tests.engine.structured_output.schemas import SCHEMAS

MAX_TOKENS = 96


def schema_prompt(schema: dict) -> str:
    return f"Write JSON matching this schema: {json.dumps(schema)}\n"


def schema_requests() -> tuple[list[str], list[SamplingParams], list[dict]]:
    prompts, params, schemas = [], [], []
    for i, schema in enumerate(SCHEMAS):
        for temp in (0.0, 1.0):
            prompts.append(schema_prompt(schema))
            params.append(SamplingParams(temperature=temp, seed=i, max_tokens=MAX_TOKENS,
                                         structured_outputs=StructuredOutputsParams(json=schema)))
            schemas.append(schema)
    return prompts, params, schemas


@pytest.fixture(scope="module")
def schema_outputs(default_llm):
    prompts, params, schemas = schema_requests()
    outs = default_llm.generate(prompts, params, use_tqdm=False)
    return [o.outputs[0] for o in outs], schemas


def test_every_schema_output_is_valid(schema_outputs):
    outs, schemas = schema_outputs
    assert len(outs) == 100
    for i, (c, schema) in enumerate(zip(outs, schemas)):
        assert c.finish_reason == "stop", (i, c.text)
        jsonschema.validate(json.loads(c.text), schema)


def test_regex_and_choice(default_llm):
    regex = r"[0-9]{3}-[0-9]{4}"
    choices = ["red", "green", "blue"]
    params = [SamplingParams(temperature=t, seed=7, max_tokens=24,
                             structured_outputs=StructuredOutputsParams(regex=regex))
              for t in (0.0, 1.0)]
    params += [SamplingParams(temperature=t, seed=7, max_tokens=8,
                              structured_outputs=StructuredOutputsParams(choice=choices))
               for t in (0.0, 1.0)]
    outs = default_llm.generate(["My phone number is"] * 2 + ["My favourite colour is"] * 2,
                                params, use_tqdm=False)
    texts = [o.outputs[0].text for o in outs]
    assert all(re.fullmatch(regex, t) for t in texts[:2]), texts
    assert all(t in choices for t in texts[2:]), texts
    assert all(o.outputs[0].finish_reason == "stop" for o in outs)


def test_n_samples_and_stop_strings(default_llm):
    schema = SCHEMAS[5]
    p = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=MAX_TOKENS,
                       structured_outputs=StructuredOutputsParams(json=schema))
    out = default_llm.generate([schema_prompt(schema)], p, use_tqdm=False)[0]
    assert len(out.outputs) == 4
    for c in out.outputs:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.text), schema)
    # A stop string cuts a constrained output like any other.
    p = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, stop=[","],
                       structured_outputs=StructuredOutputsParams(json=schema))
    c = default_llm.generate([schema_prompt(schema)], p, use_tqdm=False)[0].outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == ","
    assert "," not in c.text and c.text.startswith("{")


def test_unconstrained_rows_unaffected(default_llm):
    """A constrained row in the batch leaves the others' greedy tokens unchanged."""
    plain = SamplingParams(temperature=0, max_tokens=12)
    alone = default_llm.generate(["The capital of France is"], plain, use_tqdm=False)
    mixed = default_llm.generate(
        ["The capital of France is", "Answer yes or no:"],
        [plain, SamplingParams(temperature=0, max_tokens=4, structured_outputs=
                               StructuredOutputsParams(choice=["yes", "no"]))], use_tqdm=False)
    assert mixed[0].outputs[0].token_ids == alone[0].outputs[0].token_ids
    assert mixed[1].outputs[0].text in ("yes", "no")


def test_bad_specs_name_the_field(default_llm):
    cases = [StructuredOutputsParams(json={"type": "objekt"}),
             StructuredOutputsParams(regex="a(b"),
             StructuredOutputsParams(grammar="root ::= undefined_rule"),
             StructuredOutputsParams(json="{not json", field="guided_json")]
    for spec in cases:
        with pytest.raises(ValueError, match=f"^{spec.field}: invalid"):
            default_llm.generate(["x"], SamplingParams(structured_outputs=spec), use_tqdm=False)
    with pytest.raises(ValueError, match="^structured_outputs: exactly one"):
        StructuredOutputsParams(regex="a", choice=["a"])
    with pytest.raises(ValueError, match="^min_tokens: cannot be combined"):
        SamplingParams(min_tokens=2, structured_outputs=StructuredOutputsParams(regex="a"))
    with pytest.raises(ValueError, match="^use_beam_search: cannot be combined"):
        SamplingParams(use_beam_search=True, n=2, temperature=0,
                       structured_outputs=StructuredOutputsParams(regex="a"))
    # Nothing was left behind by the refused requests.
    stats = default_llm.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


DIGITS = r"[0-9]{30}"
PROMPTS = [f"Request {i}: " + "word " * (3 + 5 * i) for i in range(8)]


def _digits(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=48,
                            structured_outputs=StructuredOutputsParams(regex=DIGITS))
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    for o in outs:
        assert re.fullmatch(DIGITS, o.outputs[0].text), o.outputs[0].text
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module")
def digits_reference(tiny_model_dir):
    llm = LLM(model=tiny_model_dir("llama"), device="cpu")
    ref = _digits(llm)
    assert llm.stats()["num_preemptions"] == 0
    return ref


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_keeps_matcher_state(mode, digits_reference, tiny_model_dir):
    llm = LLM(model=tiny_model_dir("llama"), device="cpu", num_kv_blocks=14,
              preemption_mode=mode, max_num_batched_tokens=64, num_cpu_blocks=64)
    assert _digits(llm) == digits_reference
    stats = llm.stats()
    assert stats["num_preemptions"] > 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


def test_prefix_caching(digits_reference, tiny_model_dir):
    llm = LLM(model=tiny_model_dir("llama"), device="cpu", enable_prefix_caching=True)
    assert _digits(llm) == digits_reference
    assert _digits(llm) == digits_reference  # second round served from the prefix cache
    assert llm.stats()["prefix_cache_hits"] > 0


def test_compile_timeout_is_an_error_naming_the_field(default_llm):
    from engine.structured_output.backend import GrammarBackend
    tok = default_llm.get_tokenizer()
    backend = GrammarBackend(tok, len(tok), [tok.eos_token_id])
    slow = {"type": "object", "properties": {
        f"k{i}": {"type": "string", "pattern": "^(a|b|ab|ba)*c{2,40}$"} for i in range(60)}}
    spec = StructuredOutputsParams(json=slow, field="response_format")
    with pytest.raises(ValueError, match="^response_format: the JSON schema did not compile "
                                         "within"):
        backend.compile(spec, timeout=1e-6)
    # The compile went on in the pool: the same spec is then served from the cache.
    assert backend.compile(spec, timeout=None) is backend.compile(spec, timeout=None)
