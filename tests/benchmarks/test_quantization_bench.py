"""The quantization benchmark end to end on CPU at a tiny shape: vLLM's side (against a stand-in
`vllm` package that generates exactly max_tokens tokens after a fixed delay) writes its JSON, then
pagedserve's side runs the bf16, fp8 + fp8 KV and GPTQ engines, each in its own subprocess, and
records `vs_bf16`, `vs_vllm` and `over_floor` in the issue's record layout."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.quant_cases import CASES, group_by_engine, select_cases, tasks_of

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A stand-in for vLLM's offline API: what vllm_quant_side.py calls, nothing more.
FAKE_VLLM = '''
import json, os, time
from types import SimpleNamespace
__version__ = "0.0-stand-in"

class SamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, ignore_eos=False,
                 detokenize=True):
        self.max_tokens = max_tokens

class LLM:
    def __init__(self, model, **kwargs):
        with open(os.path.join(model, "config.json")) as f:
            qc = json.load(f).get("quantization_config") or {}
        quant = qc.get("quant_method") or kwargs.get("quantization")
        self.llm_engine = SimpleNamespace(vllm_config=SimpleNamespace(
            model_config=SimpleNamespace(quantization=quant)))

    def generate(self, prompts, params, use_tqdm=True):
        out = []
        for p, sp in zip(prompts, params):
            time.sleep(0.002 * sp.max_tokens)
            out.append(SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                       outputs=[SimpleNamespace(token_ids=[7] * sp.max_tokens)]))
        return out
'''


@pytest.fixture
def tiny_setup(tmp_path):
    """A Llama-3 vocabulary (gen_latency draws ids below 128000) on a tiny body, and a 6-request
    sharegpt_like workload."""
    with open(os.path.join(REPO, "configs", "models", "llama3-8b.json")) as f:
        cfg = json.load(f)
    cfg.update(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=32,
               max_position_embeddings=512)
    shape = tmp_path / "qtiny.json"
    shape.write_text(json.dumps(cfg))
    wl = tmp_path / "workloads"
    wl.mkdir()
    (wl / "sharegpt_like.json").write_text(json.dumps(
        [{"input_len": 10 + 3 * i, "output_len": 4 + i} for i in range(6)]))
    fake = tmp_path / "fake"
    for pkg, text in (("vllm", FAKE_VLLM), ("compressed_tensors", ""), ("loguru", "")):
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text(text)
    return shape, wl, fake


def _run(args, tmp_path, extra_path=None, rc=0):
    env = {**os.environ, "OUT": "",
           "PYTHONPATH": os.pathsep.join(p for p in (extra_path, REPO) if p)}
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_quantization_benchmark_tiny_both_sides(tiny_setup, tmp_path):
    shape, wl, fake = tiny_setup
    cases = "fp8_w8a8_kv_fp8_sharegpt_like,w4a16_bs1"
    common = ["--cases", cases, "--model-shape", str(shape), "--workload-dir", str(wl),
              "--num-prompts", "4", "--decode-tokens", "8"]
    _run([os.path.join(REPO, "benchmarks", "vllm_quant_side.py"), *common,
          "--out", "vllm.json"], tmp_path, str(fake))
    theirs = json.loads((tmp_path / "vllm.json").read_text())
    assert theirs["errors"] == [], theirs["errors"]
    assert theirs["engines"]["fp8_kv_fp8"]["llm_kwargs"]["quantization"] == "fp8"
    assert theirs["engines"]["fp8_kv_fp8"]["llm_kwargs"]["kv_cache_dtype"] == "fp8"
    assert theirs["engines"]["gptq_w4_g128"]["quantization"] == "gptq"  # from config.json
    assert "quantization" not in theirs["engines"]["gptq_w4_g128"]["llm_kwargs"]
    fp8_v = theirs["cases"]["fp8_w8a8_kv_fp8_sharegpt_like"]
    assert fp8_v["output_tokens"] == fp8_v["expected_output_tokens"] == sum(4 + i for i in range(4))
    assert theirs["cases"]["w4a16_bs1"]["per_token_ms"] == pytest.approx(2.0, rel=0.5)

    proc = _run([os.path.join(REPO, "benchmarks", "quantization.py"), *common,
                 "--vllm-json", "vllm.json", "--out", "quant.json", "--record",
                 "--results-dir", str(tmp_path / "results")], tmp_path)
    out = json.loads((tmp_path / "quant.json").read_text())
    assert out["errors"] == [], out["errors"]
    recs = {r["params"]["case"]: r for r in out["records"]}
    assert list(recs) == cases.split(",")
    lines = (tmp_path / "results" / "quantization.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == out["records"]
    for r in recs.values():
        assert r["bench"] == "quantization" and r["device"] and r["git_sha"] and r["date"]
        assert r["versions"]["torch"] and r["params"]["model"] == "qtiny"
        assert r["params"]["vllm_versions"]["vllm"] == "0.0-stand-in"
        assert r["metrics"]["vs_bf16"] > 0 and r["metrics"]["vs_vllm"] > 0

    fp8 = recs["fp8_w8a8_kv_fp8_sharegpt_like"]
    m, p = fp8["metrics"], fp8["params"]
    assert p["method"].startswith("fp8 (") and p["kv_cache_dtype"] == "float8_e4m3fn"
    assert p["num_requests"] == 4 and m["output_tokens"] == m["expected_output_tokens"] == 22
    assert m["vs_bf16"] == pytest.approx(m["output_tok_s"] / m["bf16_output_tok_s"])
    assert m["vs_vllm"] == pytest.approx(m["output_tok_s"] / fp8_v["output_tok_s"])
    assert m["num_kv_blocks"] > m["bf16_num_kv_blocks"]  # FP8 KV: more blocks, same memory

    w4 = recs["w4a16_bs1"]
    m, p = w4["metrics"], w4["params"]
    assert p["method"].startswith("gptq (w4a16, group 128") and p["batch"] == 1
    assert m["weight_bytes"] < m["bf16_weight_bytes"]
    assert m["vs_bf16"] == pytest.approx(m["bf16_per_token_ms"] / m["per_token_ms"])
    assert m["vs_vllm"] == pytest.approx(theirs["cases"]["w4a16_bs1"]["per_token_ms"]
                                         / m["per_token_ms"])
    assert 0 < m["streamed_weight_bytes"] < m["weight_bytes"]  # the embedding is only indexed
    assert m["floor_ms"] == pytest.approx(m["streamed_weight_bytes"] / m["copy_bw_bytes_s"] * 1e3)
    assert m["over_floor"] == pytest.approx(m["per_token_ms"] / m["floor_ms"])
    assert "w4a16_bs1" in proc.stdout and "vs_vllm" in proc.stdout

    # vLLM run in another device call: its figures attached to the stored records.
    for c in theirs["cases"].values():
        c["output_tok_s" if "output_tok_s" in c else "per_token_ms"] *= 2
    (tmp_path / "vllm2.json").write_text(json.dumps(theirs))
    _run([os.path.join(REPO, "benchmarks", "quantization.py"), "--attach-vllm", "quant.json",
          "--vllm-json", "vllm2.json", "--out", "attached.json"], tmp_path)
    attached = {r["params"]["case"]: r["metrics"]
                for r in json.loads((tmp_path / "attached.json").read_text())["records"]}
    assert attached["fp8_w8a8_kv_fp8_sharegpt_like"]["vs_vllm"] == pytest.approx(
        recs["fp8_w8a8_kv_fp8_sharegpt_like"]["metrics"]["vs_vllm"] / 2)
    assert attached["w4a16_bs1"]["vs_vllm"] == pytest.approx(
        recs["w4a16_bs1"]["metrics"]["vs_vllm"] * 2)


def test_a_failing_engine_is_reported_and_the_run_still_ends(tiny_setup, tmp_path):
    shape, wl, _ = tiny_setup
    _run([os.path.join(REPO, "benchmarks", "quantization.py"), "--cases", "int8_sharegpt_like",
          "--model-shape", str(shape), "--workload-dir", str(wl), "--no-bf16",
          "--case-timeout", "0.01", "--out", "quant.json"], tmp_path)
    out = json.loads((tmp_path / "quant.json").read_text())
    assert out["records"] == []
    assert out["errors"] == ["int8_w8a8: subprocess timed out after 0.01 s",
                             "int8_sharegpt_like: no measurement (see the errors above)"]


def test_vllm_side_stops_before_start_up_without_compressed_tensors(tiny_setup, tmp_path):
    shape, wl, fake = tiny_setup
    (fake / "compressed_tensors" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'compressed_tensors'\")")
    proc = _run([os.path.join(REPO, "benchmarks", "vllm_quant_side.py"), "--cases",
                 "w4a16_bs1", "--model-shape", str(shape), "--workload-dir", str(wl),
                 "--out", "vllm.json"], tmp_path, str(fake), rc=1)
    out = json.loads((tmp_path / "vllm.json").read_text())
    assert out["cases"] == {} and "['compressed_tensors'] are missing" in out["errors"][0]
    assert "compressed_tensors" in proc.stderr


def test_cases_share_engines_and_name_their_tasks():
    cases = select_cases("w4a16_bs1,int8_sharegpt_like,w4a16_bs64")
    groups = group_by_engine(cases)
    assert [(s.key, [c.name for c in cs]) for s, cs in groups] == [
        ("gptq_w4_g128", ["w4a16_bs1", "w4a16_bs64"]), ("int8_w8a8", ["int8_sharegpt_like"])]
    assert tasks_of(cases) == (["sharegpt_like"], [1, 64])
    assert select_cases("all") == list(CASES.values())
    with pytest.raises(ValueError, match="unknown case.*w4a16_bs2"):
        select_cases("w4a16_bs1,w4a16_bs2")
