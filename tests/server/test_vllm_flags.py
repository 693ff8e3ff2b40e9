"""vLLM's `serve` flags on `pagedserve serve`: the HTTP options (in process, fake core), the
uvicorn settings they make, and the command line (unsupported flags refused in one line)."""
from __future__ import annotations

import logging

import pytest

from server.args import ServerArgs, make_parser, resolve_args
from server.cli import main
from server.http_options import uvicorn_kwargs
from tests.server.conftest import CHATML

MSGS = [{"role": "user", "content": "a b c"}]


def parse(*argv: str):
    return resolve_args(make_parser().parse_args(["serve", *argv]))


# ---- HTTP options ----------------------------------------------------------------------------
async def test_cors_defaults_allow_any_origin(fake_app_factory):
    client, _ = await fake_app_factory()
    r = await client.options("/v1/chat/completions", headers={
        "Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers
    r = await client.get("/v1/models", headers={"Origin": "https://ui.example"})
    assert r.headers["access-control-allow-origin"] == "*"


async def test_cors_configured(fake_app_factory):
    client, _ = await fake_app_factory(api_key="k", allowed_origins=["https://ui.example"],
                                       allowed_methods=["GET", "POST"],
                                       allowed_headers=["Authorization"], allow_credentials=True)
    ok = await client.options("/v1/models", headers={
        "Origin": "https://ui.example", "Access-Control-Request-Method": "GET"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://ui.example"
    assert ok.headers["access-control-allow-credentials"] == "true"
    bad = await client.options("/v1/models", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
    method = await client.options("/v1/models", headers={
        "Origin": "https://ui.example", "Access-Control-Request-Method": "DELETE"})
    assert method.status_code == 400
    # an error answer (401 without the key) still carries the CORS headers
    r = await client.get("/v1/models", headers={"Origin": "https://ui.example"})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "https://ui.example"


async def test_root_path(fake_app_factory):
    client, _ = await fake_app_factory(root_path="/llm", api_key="k")
    auth = {"Authorization": "Bearer k"}
    for path in ("/llm/v1/models", "/v1/models"):  # with and without the proxy's prefix
        assert (await client.get(path, headers=auth)).status_code == 200
        assert (await client.get(path)).status_code == 401  # the key guards both
    schema = (await client.get("/llm/openapi.json")).json()
    assert schema["servers"][0]["url"] == "/llm"
    assert "/llm/openapi.json" in (await client.get("/llm/docs")).text


async def test_fastapi_docs_default_and_disabled(fake_app_factory):
    on, _ = await fake_app_factory()
    off, _ = await fake_app_factory(disable_fastapi_docs=True)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert (await on.get(path)).status_code == 200, path
        assert (await off.get(path)).status_code == 404, path


async def test_max_logprobs(fake_app_factory):
    client, _ = await fake_app_factory(chat_template=CHATML, max_logprobs=2)
    for body, param in (({"prompt": "a", "logprobs": 3}, "logprobs"),
                        ({"prompt": "a", "prompt_logprobs": 3}, "prompt_logprobs")):
        r = await client.post("/v1/completions", json={**body, "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == param
        assert "2" in r.json()["error"]["message"]
    r = await client.post("/v1/chat/completions", json={"messages": MSGS, "logprobs": True,
                                                        "top_logprobs": 3, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    r = await client.post("/v1/completions", json={"prompt": "a", "logprobs": 2,
                                                   "max_tokens": 2})
    assert r.status_code == 200
    # the default stays 20
    client, _ = await fake_app_factory()
    r = await client.post("/v1/completions", json={"prompt": "a", "logprobs": 21})
    assert r.status_code == 400 and "20" in r.json()["error"]["message"]


async def test_response_role(fake_app_factory):
    client, _ = await fake_app_factory(chat_template=CHATML, response_role="bot")
    r = await client.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 2})
    assert r.json()["choices"][0]["message"]["role"] == "bot"
    async with client.stream("POST", "/v1/chat/completions",
                             json={"messages": MSGS, "max_tokens": 2, "stream": True}) as s:
        first = [line async for line in s.aiter_lines() if line.startswith("data: {")][0]
    assert '"role":"bot"' in first
    # without a generation prompt the model continues the last message, in its role (vLLM)
    r = await client.post("/v1/chat/completions", json={
        "messages": MSGS, "max_tokens": 2, "add_generation_prompt": False})
    assert r.json()["choices"][0]["message"]["role"] == "user"


async def test_return_tokens_as_token_ids_default(fake_app_factory):
    client, _ = await fake_app_factory(chat_template=CHATML, return_tokens_as_token_ids=True)
    body = {"prompt": "a b", "max_tokens": 2, "logprobs": 1}
    tokens = (await client.post("/v1/completions", json=body)).json()["choices"][0][
        "logprobs"]["tokens"]
    assert tokens and all(t.startswith("token_id:") for t in tokens)
    # the request field still decides when given
    tokens = (await client.post("/v1/completions", json={
        **body, "return_tokens_as_token_ids": False})).json()["choices"][0]["logprobs"]["tokens"]
    assert not any(t.startswith("token_id:") for t in tokens)
    r = await client.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 2,
                                                        "logprobs": True})
    assert r.json()["choices"][0]["logprobs"]["content"][0]["token"].startswith("token_id:")


async def test_enable_log_requests(fake_app_factory, caplog):
    quiet, _ = await fake_app_factory()
    loud, _ = await fake_app_factory(chat_template=CHATML, enable_log_requests=True)
    with caplog.at_level(logging.INFO, logger="pagedserve.server"):
        await quiet.post("/v1/completions", json={"prompt": "a b", "max_tokens": 2})
        assert "Received request" not in caplog.text
        await loud.post("/v1/completions", json={"prompt": "a b", "max_tokens": 2,
                                                 "temperature": 0.5})
        await loud.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 2})
    lines = [r.getMessage() for r in caplog.records if "Received request" in r.getMessage()]
    assert len(lines) == 2 and "cmpl-" in lines[0] and "chatcmpl-" in lines[1]
    assert "'temperature': 0.5" in lines[0] and "'max_tokens': 2" in lines[0]


def test_uvicorn_settings():
    kw = uvicorn_kwargs(ServerArgs())
    assert (kw["log_level"], kw["access_log"]) == ("info", False) and "ssl_keyfile" not in kw
    kw = uvicorn_kwargs(ServerArgs(log_level="WARNING", access_log=True))
    assert (kw["log_level"], kw["access_log"]) == ("warning", True)
    kw = uvicorn_kwargs(ServerArgs(uvicorn_log_level="debug", access_log=True,
                                   disable_uvicorn_access_log=True))
    assert (kw["log_level"], kw["access_log"]) == ("debug", False)


# ---- command line ----------------------------------------------------------------------------
def test_new_flags_parse():
    _, s = parse("--allowed-origins", '["https://a.example"]', "--allowed-methods", '["GET"]',
                 "--allowed-headers", '["X-A"]', "--allow-credentials", "--root-path", "/p",
                 "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log",
                 "--enable-log-requests", "--disable-log-stats", "--disable-fastapi-docs",
                 "--max-logprobs", "5", "--response-role", "bot",
                 "--return-tokens-as-token-ids")
    assert (s.allowed_origins, s.allowed_methods, s.allowed_headers) == (
        ["https://a.example"], ["GET"], ["X-A"])
    assert s.allow_credentials and s.root_path == "/p" and s.uvicorn_log_level == "warning"
    assert s.disable_uvicorn_access_log and s.log_requests and s.disable_log_stats
    assert s.disable_fastapi_docs and s.max_logprobs == 5 and s.response_role == "bot"
    assert s.return_tokens_as_token_ids
    e, s = parse("--generation-config", "vllm", "--override-generation-config",
                 '{"temperature": 0.5}', "-tp", "2", "--disable-log-requests")
    assert e.generation_config == "vllm" and e.override_generation_config == {"temperature": 0.5}
    assert e.tensor_parallel_size == 2 and not s.log_requests


@pytest.mark.parametrize("argv, match", [
    (["--allowed-origins", '"*"'], "allowed_origins: must be a JSON list"),
    (["--root-path", "llm/"], "root_path"),
    (["--ssl-keyfile", "/nonexistent.key", "--ssl-certfile", "/nonexistent.pem"],
     "ssl_keyfile: no such file"),
    (["--enable-log-requests", "--disable-log-requests"], "enable_log_requests"),
    (["--max-logprobs", "-2"], "max_logprobs"),
])
def test_bad_values_name_the_flag(argv, match):
    with pytest.raises(ValueError, match=match):
        parse(*argv)


@pytest.mark.parametrize("argv, flag, hint", [
    (["--enable-lora"], "--enable-lora", "merge"),
    (["--lora-modules", "a=/x"], "--lora-modules", "LoRA"),
    (["--pipeline-parallel-size", "2"], "--pipeline-parallel-size", "--tensor-parallel-size"),
    (["-pp", "2"], "-pp", "--tensor-parallel-size"),
    (["--tokenizer-mode", "mistral"], "--tokenizer-mode mistral", "Hugging Face tokenizer"),
    (["--tokenizer-mode=slow"], "--tokenizer-mode slow", "Hugging Face tokenizer"),
    (["--no-enable-chunked-prefill"], "--no-enable-chunked-prefill", "always chunked"),
    (["--download-dir", "/d"], "--download-dir", "HF_HUB_CACHE"),
    (["--revision=v2"], "--revision", "--local-dir"),
    (["--reasoning-parser", "deepseek_r1"], "--reasoning-parser", "not parsed"),
])
def test_unsupported_vllm_flags_fail_in_one_line(capsys, argv, flag, hint):
    assert main(["serve", "some/model", "--port", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unrecognized" not in err
    assert err.startswith(f"pagedserve serve: error: {flag}: not supported by pagedserve")
    assert hint in err


def test_accepted_no_op_flags():
    from server.vllm_flags import check_argv

    argv = ["serve", "m", "--enable-chunked-prefill", "--tokenizer-mode", "auto",
            "--tokenizer-mode=hf", "--port", "9"]
    assert check_argv(argv) == ["serve", "m", "--port", "9"]
    assert check_argv(["serve", "m", "--", "--enable-lora"])[-1] == "--enable-lora"


def test_unsupported_keys_in_yaml(tmp_path):
    cfg = tmp_path / "vllm.yaml"
    cfg.write_text("enable-chunked-prefill: true\ntokenizer-mode: auto\nport: 7000\n")
    _, s = parse("--config", str(cfg))
    assert s.port == 7000
    cfg.write_text("enable-lora: true\n")
    with pytest.raises(ValueError, match="enable-lora .* not supported by pagedserve"):
        parse("--config", str(cfg))


def test_help_shows_the_vllm_flags():
    help_text = make_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for flag in ("--allowed-origins", "--allow-credentials", "--root-path", "--ssl-keyfile",
                 "--ssl-certfile", "--uvicorn-log-level", "--disable-uvicorn-access-log",
                 "--enable-log-requests", "--disable-log-requests", "--disable-log-stats",
                 "--disable-fastapi-docs", "--max-logprobs", "--response-role",
                 "--return-tokens-as-token-ids", "--generation-config",
                 "--override-generation-config", "-tp"):
        assert flag in help_text, flag
    assert "generation_config.json" in help_text
    assert "--enable-chunked-prefill" in help_text and "--tokenizer-mode" in help_text


def test_pooling_runner_refuses_generation_options():
    from server.pooling_server import check_pooling_server_args

    check_pooling_server_args(ServerArgs(runner="pooling", allowed_origins=["https://a"]))
    with pytest.raises(ValueError, match="response_role: not an option of the pooling"):
        check_pooling_server_args(ServerArgs(runner="pooling", response_role="bot"))
