"""`pagedserve serve` options: one flag per EngineArgs field, precedence CLI > YAML > defaults."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import EngineArgs
from server.args import ServerArgs, make_parser, resolve_args

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str):
    return resolve_args(make_parser().parse_args(["serve", *argv]))


def test_every_engine_field_has_a_flag():
    help_text = make_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for name in EngineArgs.field_names():
        assert "--" + name.replace("_", "-") in help_text, name


def test_defaults():
    eargs, sargs = parse()
    assert eargs == EngineArgs()
    assert (sargs.host, sargs.port, sargs.api_key, sargs.shutdown_timeout, sargs.engine_mode) == \
        ("0.0.0.0", 8000, None, 30.0, "process")


def test_types_and_bools():
    eargs, sargs = parse("some/model", "--block-size", "32", "--swap-space", "1.5",
                         "--enable-prefix-caching", "--preemption-mode", "swap",
                         "--max-num-seqs", "8", "--hf-overrides", '{"a": 1}', "--port", "9000",
                         "--served-model-name", "m", "--max-queue-len", "5")
    assert eargs.model == "some/model" and eargs.block_size == 32 and eargs.swap_space == 1.5
    assert eargs.enable_prefix_caching is True and eargs.preemption_mode == "swap"
    assert eargs.max_num_seqs == 8 and eargs.hf_overrides == {"a": 1}
    assert eargs.served_model_name == "m" and eargs.max_queue_len == 5
    assert sargs.port == 9000 and sargs.max_queue_len == 5
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "--preemption-mode", "teleport"])
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "--block-size", "big"])


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("block-size: 8\nmax_num_seqs: 4\nport: 7000\nenable_prefix_caching: true\n"
                   "shutdown-timeout: 3\n")
    eargs, sargs = parse("--config", str(cfg), "--block-size", "64", "--no-enable-prefix-caching")
    assert eargs.block_size == 64                # CLI wins
    assert eargs.max_num_seqs == 4               # YAML over default
    assert eargs.enable_prefix_caching is False  # CLI bool wins over YAML
    assert sargs.port == 7000 and sargs.shutdown_timeout == 3
    assert eargs.swap_space == EngineArgs().swap_space  # default


def test_yaml_unknown_key_is_an_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("blok_size: 8\n")
    with pytest.raises(ValueError, match="blok_size"):
        parse("--config", str(cfg))


def test_chat_template_file_and_api_key_env(tmp_path, monkeypatch):
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{{ messages[0]['content'] }}")
    monkeypatch.setenv("PAGEDSERVE_API_KEY", "from-env")
    eargs, sargs = parse("--chat-template", str(tpl))
    assert sargs.chat_template == eargs.chat_template == "{{ messages[0]['content'] }}"
    assert sargs.api_key == "from-env"
    _, sargs = parse("--api-key", "from-cli")
    assert sargs.api_key == "from-cli"


def test_repo_configs_parse():
    for cfg in sorted((REPO / "configs").glob("*.yaml")):
        eargs, sargs = parse("--config", str(cfg))
        assert isinstance(eargs, EngineArgs) and isinstance(sargs, ServerArgs), cfg


def test_server_args_fields_are_flags():
    help_text = make_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for f in dataclasses.fields(ServerArgs):
        if f.name != "core_factory":
            assert "--" + f.name.replace("_", "-") in help_text


def test_python_m_server_help():
    out = subprocess.run([sys.executable, "-m", "server", "serve", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--max-num-batched-tokens" in out.stdout
