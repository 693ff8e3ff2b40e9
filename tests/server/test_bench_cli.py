"""`pagedserve bench serve` (vLLM flag names, vLLM-like summary) against the default server, and
`pagedserve export-tokenizer` writing a folder that AutoTokenizer reads like the server's."""
from __future__ import annotations

import pytest

from server.cli import main


def test_bench_serve_random_dataset(default_server, capsys):
    assert main(["bench", "serve", "--base-url", default_server.base_url,
                 "--dataset-name", "random", "--input-len", "8", "--output-len", "4",
                 "--num-prompts", "3", "--max-concurrency", "2"]) == 0
    out = capsys.readouterr().out
    assert "Serving Benchmark Result" in out
    lines = {line[:40].strip(): line[40:].strip() for line in out.splitlines() if len(line) > 40}
    assert lines["Successful requests:"] == "3" and lines["Failed requests:"] == "0"
    assert lines["Total generated tokens:"] == "12"
    assert float(lines["Mean TTFT (ms):"]) > 0


def test_bench_rejects_unknown_dataset():
    with pytest.raises(SystemExit):
        main(["bench", "throughput", "--dataset-name", "sonnet"])


def test_export_tokenizer_round_trips(tmp_path, capsys):
    from transformers import AutoTokenizer

    from engine.loader.default_model import default_model_path
    from engine.loader.tokenizer import get_tokenizer

    assert main(["export-tokenizer", str(tmp_path / "tok")]) == 0
    assert "wrote" in capsys.readouterr().out
    exported = AutoTokenizer.from_pretrained(tmp_path / "tok")
    served = get_tokenizer(default_model_path())
    text = "Hello, world! The capital of France is Paris."
    assert exported.encode(text) == served.encode(text)
    assert exported.chat_template == served.chat_template
