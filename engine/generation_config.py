"""Default sampling parameters from a model's `generation_config.json` (vLLM's
`--generation-config` and `--override-generation-config`).

Where the defaults come from (`EngineArgs.generation_config`):
- "auto" (the default, as in vLLM): the model folder's `generation_config.json`; a GGUF model, or
  a folder without that file, has none;
- "vllm": none (pagedserve's own neutral defaults);
- any other value: a folder holding a `generation_config.json`.
`override_generation_config` (same Hugging Face key names) is merged on top; an override of
`null` drops the file's value, as in vLLM.

Only the sampling keys in `HF_SAMPLING_KEYS` are used: temperature, top_p, top_k, min_p,
repetition_penalty and max_new_tokens (the default `max_tokens`). Every other key of the file
(bos/eos/pad token ids, do_sample, num_beams, max_length, ...) is not read. A request value
(including the default a request field has in the OpenAI API) always wins over these defaults;
they fill only what a request leaves unset.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

GENERATION_CONFIG_FILE = "generation_config.json"
# Hugging Face generation_config key -> SamplingParams field.
HF_SAMPLING_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                    "min_p": "min_p", "repetition_penalty": "repetition_penalty",
                    "max_new_tokens": "max_tokens"}
# What a sampling field is when neither the request nor the defaults set it.
NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
           "repetition_penalty": 1.0}
_GREEDY_EPS = 1e-5  # as SamplingParams.is_greedy


@dataclass(frozen=True)
class GenerationDefaults:
    """The sampling defaults a served model applies; None: not set (the neutral value applies).

    `source` says where they came from, for the start-up log line."""

    source: str = "vllm"
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    max_tokens: Optional[int] = None

    def __post_init__(self) -> None:
        from engine.sampling_params import SamplingParams

        if self.top_k is not None and (isinstance(self.top_k, bool)
                                       or not isinstance(self.top_k, int)):
            raise ValueError(f"generation_config ({self.source}): top_k must be an integer, "
                             f"got {self.top_k!r}")
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool)
                                            or not isinstance(self.max_tokens, int)):
            raise ValueError(f"generation_config ({self.source}): max_new_tokens must be an "
                             f"integer, got {self.max_tokens!r}")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ValueError(f"generation_config ({self.source}): {name} must be a finite "
                                 f"number, got {value!r}")
        try:  # the same range checks a request's values get
            SamplingParams(**self.as_dict())
        except ValueError as exc:
            raise ValueError(f"generation_config ({self.source}): {exc}") from None

    def as_dict(self) -> dict[str, Any]:
        """The defaults that are set, as SamplingParams keyword arguments."""
        return {k: v for k, v in asdict(self).items() if k != "source" and v is not None}

    def sampling(self, temperature: Optional[float] = None, top_p: Optional[float] = None,
                 top_k: Optional[int] = None, min_p: Optional[float] = None,
                 repetition_penalty: Optional[float] = None) -> dict[str, Any]:
        """SamplingParams keyword arguments for the five sampling fields: each request value
        that is not None, else the default, else the neutral value.

        As in vLLM, a greedy request (temperature 0, asked for or defaulted) samples nothing, so
        the defaulted top_p / top_k / min_p are dropped for it (values the request set stay)."""
        asked = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
                 "repetition_penalty": repetition_penalty}
        out = {}
        for name, value in asked.items():
            default = getattr(self, name)
            out[name] = value if value is not None else (
                default if default is not None else NEUTRAL[name])
        if out["temperature"] < _GREEDY_EPS:
            for name in ("top_p", "top_k", "min_p"):
                if asked[name] is None:
                    out[name] = NEUTRAL[name]
        return out

    def describe(self) -> str:
        """`{'temperature': 0.6, ...}` with Hugging Face's name for max_tokens."""
        shown = {("max_new_tokens" if k == "max_tokens" else k): v
                 for k, v in self.as_dict().items()}
        return repr(shown)


def load_generation_defaults(mode: str, model_folder: Optional[str],
                             override: Optional[dict[str, Any]] = None) -> GenerationDefaults:
    """The defaults for `--generation-config MODE` on a model whose HF folder is `model_folder`
    (None for a GGUF file), with `--override-generation-config` merged on top.

    ValueError naming the option for a folder without the file, an unreadable file, an
    override key that is not a sampling default, or a value out of range."""
    override = dict(override or {})
    unknown = sorted(set(override) - set(HF_SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"override_generation_config: {', '.join(map(repr, unknown))} "
                         f"{'is' if len(unknown) == 1 else 'are'} not a sampling default "
                         f"(known: {', '.join(HF_SAMPLING_KEYS)})")
    if mode == "vllm":
        raw: dict[str, Any] = {}
        source = "vllm defaults"
    elif mode == "auto":
        path = os.path.join(model_folder, GENERATION_CONFIG_FILE) if model_folder else None
        raw = _read(path, "generation_config") if path and os.path.isfile(path) else {}
        source = f"the model's {GENERATION_CONFIG_FILE}"
    else:
        path = os.path.join(mode, GENERATION_CONFIG_FILE)
        if not os.path.isdir(mode):
            raise ValueError(f"generation_config: must be 'auto', 'vllm' or a folder holding "
                             f"{GENERATION_CONFIG_FILE}; '{mode}' is not a folder")
        if not os.path.isfile(path):
            raise ValueError(f"generation_config: folder '{mode}' has no "
                             f"{GENERATION_CONFIG_FILE}")
        raw = _read(path, "generation_config")
        source = path
    merged = {k: raw[k] for k in HF_SAMPLING_KEYS if k in raw}
    merged.update(override)
    if override:
        source += " + --override-generation-config"
    values = {HF_SAMPLING_KEYS[k]: v for k, v in merged.items() if v is not None}
    if values.get("top_k") == 0:  # Hugging Face's "no top-k"
        values["top_k"] = -1
    known = {f.name for f in fields(GenerationDefaults)}
    assert set(values) <= known
    return GenerationDefaults(source=source, **values)


def _read(path: str, option: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{option}: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{option}: {path} must hold a JSON object")
    return data
