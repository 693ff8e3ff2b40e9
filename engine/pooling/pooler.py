"""Pooling of packed hidden states into one vector per input, as sentence-transformers does.

Inputs arrive packed: `hidden[T_total, H]` with `lens[i]` rows per input, in order. Modes:
`mean` (average over the input's tokens, sentence-transformers' mean pooling), `cls` (first row),
`last` (last row: decoder embedding models). `normalize` divides by the L2 norm.

Matryoshka: a model trained so that a prefix of its vector is itself an embedding declares it
(`is_matryoshka` / `matryoshka_dimensions` in its config); only then may a request ask for fewer
`dimensions` (truncate, then normalise). Asking for the native size is always allowed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

POOLING_MODES = ("mean", "cls", "last")


@dataclass(frozen=True)
class PoolingConfig:
    mode: str = "mean"
    normalize: bool = True
    hidden_size: int = 0
    matryoshka: bool = False
    matryoshka_dimensions: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"pooling mode: must be one of {POOLING_MODES}, got '{self.mode}'")
        if self.hidden_size < 1:
            raise ValueError("hidden_size: must be >= 1")

    def check_dimensions(self, dimensions: Optional[int]) -> None:
        """ValueError naming `dimensions` unless the model can produce that many."""
        if dimensions is None or dimensions == self.hidden_size:
            return
        if not self.matryoshka:
            raise ValueError(f"dimensions: this model does not support matryoshka "
                             f"representations; only {self.hidden_size} is available")
        allowed = self.matryoshka_dimensions
        if allowed and dimensions not in allowed:
            raise ValueError(f"dimensions: must be one of {sorted(allowed)}, got {dimensions}")
        if not 1 <= dimensions <= self.hidden_size:
            raise ValueError(f"dimensions: must be in [1, {self.hidden_size}], got {dimensions}")


def pooling_config_for(folder: Optional[str], hf_config: Any, encoder: bool) -> PoolingConfig:
    """Read sentence-transformers' module list when the model folder has one; otherwise encoders
    mean-pool and decoders take the last token, both normalised."""
    mode, normalize = ("mean" if encoder else "last"), True
    if folder and os.path.isfile(os.path.join(folder, "modules.json")):
        with open(os.path.join(folder, "modules.json"), encoding="utf-8") as fh:
            modules = json.load(fh)
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                mode = _sentence_transformers_mode(os.path.join(folder, m.get("path", "")))
    dims = getattr(hf_config, "matryoshka_dimensions", None)
    return PoolingConfig(mode=mode, normalize=normalize, hidden_size=int(hf_config.hidden_size),
                         matryoshka=bool(getattr(hf_config, "is_matryoshka", False) or dims),
                         matryoshka_dimensions=tuple(dims) if dims else None)


def _sentence_transformers_mode(pooling_dir: str) -> str:
    path = os.path.join(pooling_dir, "config.json")
    if not os.path.isfile(path):
        return "mean"
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    if cfg.get("pooling_mode") in ("mean", "cls", "lasttoken"):
        return {"lasttoken": "last"}.get(cfg["pooling_mode"], cfg["pooling_mode"])
    for key, mode in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                      ("pooling_mode_lasttoken", "last")):
        if cfg.get(key):
            return mode
    enabled = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
    raise ValueError(f"pooling: sentence-transformers mode {enabled} is not supported "
                     f"(mean, cls, lasttoken)")


class Pooler:
    def __init__(self, config: PoolingConfig):
        self.config = config

    def __call__(self, hidden: torch.Tensor, lens: list[int],
                 dimensions: Optional[int] = None) -> torch.Tensor:
        """hidden [sum(lens), H] -> float32 [len(lens), dimensions or H]."""
        assert hidden.shape[0] == sum(lens), (hidden.shape, sum(lens))
        hidden = hidden.float()
        lens_t = torch.tensor(lens, device=hidden.device)
        ends = torch.cumsum(lens_t, 0)
        starts = ends - lens_t
        mode = self.config.mode
        if mode == "cls":
            pooled = hidden[starts]
        elif mode == "last":
            pooled = hidden[ends - 1]
        else:
            seg = torch.repeat_interleave(torch.arange(len(lens), device=hidden.device), lens_t)
            sums = torch.zeros(len(lens), hidden.shape[1], dtype=hidden.dtype,
                               device=hidden.device).index_add_(0, seg, hidden)
            pooled = sums / lens_t[:, None].to(hidden.dtype)
        if dimensions is not None:
            pooled = pooled[:, :dimensions]
        if self.config.normalize or dimensions is not None:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled
