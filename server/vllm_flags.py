"""vLLM `serve` flags pagedserve does not have.

A vLLM command line pasted onto `pagedserve serve` either means the same thing or stops with one
line naming the flag, saying that pagedserve does not support it and what to use instead (exit
code 2, as argparse), never argparse's generic "unrecognized arguments". Two flags are accepted
as no-ops because pagedserve already behaves as they ask (README "Coming from vLLM"):
`--enable-chunked-prefill` (prefills are always chunked) and `--tokenizer-mode auto|hf` (the
Hugging Face tokenizer, which pagedserve always uses). The same names are checked as keys of a
`--config` YAML file.
"""
from __future__ import annotations

from typing import Any, Optional

_LORA = ("LoRA adapters are not implemented; merge the adapter into the base weights "
         "(peft's merge_and_unload) and serve the merged folder")
_REVISION = ("pagedserve loads the hub's default revision; download the one you want "
             "(hf download MODEL --revision REV --local-dir DIR) and serve DIR")
_MTLS = ("client certificates are not implemented; --ssl-keyfile and --ssl-certfile serve "
         "HTTPS, put mutual TLS in a proxy")
_PP = ("pipeline parallelism is not implemented; use --tensor-parallel-size (-tp) or "
       "--data-parallel-size (-dp)")
_COMPILE = ("torch.compile is not used; pagedserve captures its own CUDA graphs "
            "(--enforce-eager turns them off, --max-cuda-graph-tokens sizes them)")

# flag -> why not, and what to use instead.
UNSUPPORTED: dict[str, str] = {
    "--enable-lora": _LORA, "--lora-modules": _LORA, "--max-loras": _LORA,
    "--max-lora-rank": _LORA, "--max-cpu-loras": _LORA,
    "--pipeline-parallel-size": _PP, "-pp": _PP,
    "--no-enable-chunked-prefill": "prefills are always chunked; --max-num-batched-tokens sets "
                                   "the token budget of a step (and so the chunk size)",
    "--download-dir": "hub downloads go to the Hugging Face cache; set HF_HUB_CACHE (or "
                      "HF_HOME) to choose where",
    "--revision": _REVISION, "--code-revision": _REVISION, "--tokenizer-revision": _REVISION,
    "--reasoning-parser": "reasoning output is not parsed into reasoning_content",
    "--cpu-offload-gb": "weights are not offloaded to CPU memory; use a quantized checkpoint "
                        "or --tensor-parallel-size",
    "--enable-expert-parallel": "MoE experts are sharded with tensor parallelism only",
    "--distributed-executor-backend": "tensor-parallel ranks always run as pagedserve's own "
                                      "worker processes",
    "--uds": "serve on TCP with --host and --port",
    "--ssl-ca-certs": _MTLS, "--ssl-cert-reqs": _MTLS,
    "--middleware": "extra ASGI middleware cannot be loaded; put it in a proxy",
    "--task": "use --runner generate or --runner pooling",
    "--compilation-config": _COMPILE, "-O": _COMPILE,
    "--limit-mm-per-prompt": "multimodal input is not supported",
    "--scheduling-policy": "requests are scheduled first come, first served",
    "--api-server-count": "one API server process serves all requests",
    "--enable-log-outputs": "generated text is not logged (--enable-log-requests logs requests)",
}
# Flags taking a value that pagedserve honours for some values only: flag -> (accepted, why).
_BY_VALUE: dict[str, tuple[tuple[str, ...], str]] = {
    "--tokenizer-mode": (("auto", "hf"), "pagedserve always uses the Hugging Face tokenizer "
                                         "(modes auto and hf)"),
}
_NO_OP_SWITCHES = ("--enable-chunked-prefill",)


class UnsupportedFlag(ValueError):
    """A vLLM flag pagedserve does not honour; the message is the one line to show."""


def _refuse(flag: str, why: str) -> UnsupportedFlag:
    return UnsupportedFlag(f"{flag}: not supported by pagedserve ({why})")


def check_argv(argv: list[str]) -> list[str]:
    """`argv` without the accepted no-op flags; UnsupportedFlag for one pagedserve lacks."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":  # what follows is positional
            return out + argv[i:]
        flag, eq, inline = token.partition("=")
        if flag in UNSUPPORTED:
            raise _refuse(flag, UNSUPPORTED[flag])
        if flag in _NO_OP_SWITCHES and not eq:
            i += 1
            continue
        if flag in _BY_VALUE:
            accepted, why = _BY_VALUE[flag]
            value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else None)
            if value not in accepted:
                raise _refuse(f"{flag} {value}" if value else flag, why)
            i += 1 if eq else 2
            continue
        out.append(token)
        i += 1
    return out


def check_config(options: dict[str, Any], path: Optional[str]) -> dict[str, Any]:
    """The same check for the keys of a YAML config (already in snake_case)."""
    kept = {}
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if flag in UNSUPPORTED:
            raise _refuse(f"{flag[2:]} (in {path})", UNSUPPORTED[flag])
        if flag in _NO_OP_SWITCHES:
            if value is False:
                no = "--no-" + flag[2:]
                raise _refuse(f"{flag[2:]}: false (in {path})", UNSUPPORTED[no])
            continue
        if flag in _BY_VALUE:
            accepted, why = _BY_VALUE[flag]
            if value not in accepted:
                raise _refuse(f"{flag[2:]}: {value} (in {path})", why)
            continue
        kept[key] = value
    return kept
