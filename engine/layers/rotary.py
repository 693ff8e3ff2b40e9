"""Rotary position embeddings (RoPE) over flat token rows, with the scaling types of HF configs.

`get_rope(hf_config, head_dim)` reads the rope settings under either transformers layout:
5.x keeps everything in `config.rope_parameters` (`rope_theta`, `rope_type`, `partial_rotary_factor`,
scaling keys); 4.x uses `config.rope_theta` + `config.rope_scaling` (and GPT-NeoX's `rotary_pct` /
`rotary_emb_base`). Supported `rope_type`s: default, linear, dynamic (NTK, static at the model's
maximum length, as vLLM does), llama3, yarn, and longrope (alias su: Phi-3's short/long factors,
see `LongRopeRotaryEmbedding`). Models with per-layer-type rope (Gemma 3: `rope_parameters` keyed by
"sliding_attention" / "full_attention") pass `layer_type`.

The cos/sin cache is computed in float32 exactly as HF does (position * inv_freq, then cos/sin, times
the attention scaling) so fp32 outputs match HF bit-for-bit in the common case. `apply_rotary`
is the single function a fused kernel can replace.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn


def rope_settings(hf_config: Any, layer_type: Optional[str] = None) -> dict[str, Any]:
    """A flat dict with at least `rope_theta`, `rope_type`, `partial_rotary_factor` (5.x or 4.x).

    With `layer_type`, a 5.x `rope_parameters` keyed by layer type yields that type's entry.
    """
    params = getattr(hf_config, "rope_parameters", None)
    if layer_type is not None and isinstance(params, dict) and isinstance(params.get(layer_type),
                                                                          dict):
        params = params[layer_type]
    out: dict[str, Any] = {}
    if isinstance(params, dict) and params:
        out.update(params)
    else:
        scaling = getattr(hf_config, "rope_scaling", None)
        if isinstance(scaling, dict):
            out.update(scaling)
    if "rope_theta" not in out:
        theta = getattr(hf_config, "rope_theta", None)
        if theta is None:
            theta = getattr(hf_config, "rotary_emb_base", None)  # GPT-NeoX on 4.x
        out["rope_theta"] = float(theta if theta is not None else 10000.0)
    if "partial_rotary_factor" not in out:
        prf = getattr(hf_config, "partial_rotary_factor", None)
        if prf is None:
            prf = getattr(hf_config, "rotary_pct", None)
        out["partial_rotary_factor"] = float(prf) if prf is not None else 1.0
    # 4.x checkpoints spell the type "type"; "mrope" is not supported here.
    out["rope_type"] = out.get("rope_type", out.get("type", "default")) or "default"
    if out["rope_type"] == "su":
        out["rope_type"] = "longrope"
    if out["rope_type"] == "longrope":
        orig = out.get("original_max_position_embeddings") or getattr(
            hf_config, "original_max_position_embeddings", None)
        out["original_max_position_embeddings"] = orig
        max_pos = getattr(hf_config, "max_position_embeddings", None)
        if not out.get("factor") and orig and max_pos:
            out["factor"] = max_pos / orig  # Phi-3: the context extension sets the scaling
    return out


def _default_inv_freq(base: float, dim: int) -> torch.Tensor:
    exps = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim
    return 1.0 / (base ** exps)


def _llama3_inv_freq(inv_freq: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    factor = p["factor"]
    low, high = p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are interpolated by `factor`, short ones kept; the middle band is blended.
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def _yarn_inv_freq(base: float, dim: int, p: dict[str, Any],
                   max_pos: int) -> tuple[torch.Tensor, float]:
    factor = p.get("factor")
    orig = p.get("original_max_position_embeddings") or max_pos
    if factor is None:
        factor = max_pos / orig

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = p.get("attention_factor")
    if attn is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attn = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attn = mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def corr_dim(rot: float) -> float:
        return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = corr_dim(beta_fast), corr_dim(beta_slow)
    if p.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - lo) / (hi - lo), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(torch.float) / dim)
    extra, inter = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1 where the frequency is high enough to extrapolate unchanged
    return inter * (1 - keep) + extra * keep, float(attn)


def compute_inv_freq(p: dict[str, Any], rotary_dim: int,
                     max_position: int) -> tuple[torch.Tensor, float]:
    """(inv_freq [rotary_dim // 2] float32, attention scaling applied to cos/sin)."""
    base, kind = float(p["rope_theta"]), p["rope_type"]
    if kind == "default":
        return _default_inv_freq(base, rotary_dim), 1.0
    if kind == "linear":
        return _default_inv_freq(base, rotary_dim) / p["factor"], 1.0
    if kind == "llama3":
        return _llama3_inv_freq(_default_inv_freq(base, rotary_dim), p), 1.0
    if kind == "dynamic":
        # NTK-aware base fixed for max_position * factor tokens (static, as vLLM does). HF
        # recomputes it per forward from the batch's longest sequence, so outputs differ from HF
        # (HF uses plain RoPE up to max_position).
        factor = p["factor"]
        new_len = max_position * factor
        base = base * ((factor * new_len / max_position) - (factor - 1)) ** (
            rotary_dim / (rotary_dim - 2))
        return _default_inv_freq(base, rotary_dim), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(base, rotary_dim, p, max_position)
    if kind == "longrope":
        return _longrope_inv_freq(base, rotary_dim, p, max_position, long=False)
    raise ValueError(f"rope_type '{kind}' is not supported (supported: default, linear, dynamic, "
                     "llama3, yarn, longrope)")


def _longrope_inv_freq(base: float, dim: int, p: dict[str, Any], max_position: int,
                       long: bool) -> tuple[torch.Tensor, float]:
    """LongRoPE (Phi-3): per-frequency divisors (`short_factor` or `long_factor`) and an attention
    factor sqrt(1 + ln(s) / ln(original_max)), s = max_position / original_max unless given."""
    orig = p.get("original_max_position_embeddings") or max_position
    factor = p.get("factor") or max_position / orig
    attn = p.get("attention_factor")
    if attn is None:
        attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    ext = torch.tensor(p["long_factor" if long else "short_factor"], dtype=torch.float32)
    exps = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (ext * base ** exps), float(attn)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 is_neox_style: bool) -> torch.Tensor:
    """Rotate x [T, H, rotary_dim] with cos/sin [T, rotary_dim // 2] (float32); returns x's dtype.

    Neox style pairs dimension i with i + rotary_dim/2; GPT-J style pairs 2i with 2i+1.
    """
    # Arithmetic in x's dtype with cos/sin rounded to it, as HF transformers does: half-precision
    # outputs then agree with HF's bit for bit (fp32 is unchanged).
    cos = cos[:, None, :].to(x.dtype)
    sin = sin[:, None, :].to(x.dtype)
    if is_neox_style:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


class RotaryEmbedding(nn.Module):
    """Applies RoPE to the first `rotary_dim` dims of each head of flat q [T, H*D] and k [T, KVH*D].

    Invariant: `cos_sin_cache` [max_position, rotary_dim] (float32) covers positions
    [0, max_position); on the CPU it grows on demand. One instance is shared by all layers.
    """

    def __init__(self, head_dim: int, rotary_dim: int, max_position: int,
                 settings: dict[str, Any], is_neox_style: bool = True):
        super().__init__()
        if rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(f"rotary_dim {rotary_dim} must be even and <= head_dim {head_dim}")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.is_neox_style = is_neox_style
        inv_freq, self.attention_scaling = compute_inv_freq(settings, rotary_dim, max_position)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.register_buffer("cos_sin_cache", self._build(max_position), persistent=False)

    def _build(self, n: int) -> torch.Tensor:
        # HF multiplies positions by inv_freq in float32 on the same device; match that.
        pos = torch.arange(n, dtype=torch.float32, device=self.inv_freq.device)
        freqs = pos[:, None] * self.inv_freq.float()[None, :]
        return torch.cat((freqs.cos() * self.attention_scaling,
                          freqs.sin() * self.attention_scaling), dim=-1)

    def forward(self, positions: torch.Tensor, q: torch.Tensor,
                k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Growth is checked on the CPU only: on a GPU the check would sync every layer, and the
        # engine keeps positions below max_model_len, which sizes the cache (see get_rope).
        if (positions.device.type == "cpu" and positions.numel()
                and int(positions.max()) >= self.cos_sin_cache.shape[0]):
            self.cos_sin_cache = self._build(int(positions.max()) * 2 + 1)
        if q.is_cuda and q.dtype != torch.float32:
            # Fused Triton kernel, in place on the q/k views (one launch for both).
            from gpu_kernels.rotary import rotary_embedding
            rotary_embedding(positions, q, k, self.head_dim, self.cos_sin_cache,
                             self.is_neox_style)
            return q, k
        cos, sin = self.cos_sin_cache[positions.long()].chunk(2, dim=-1)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        x = x.view(t, -1, self.head_dim)
        if self.rotary_dim == self.head_dim:
            return apply_rotary(x, cos, sin, self.is_neox_style).reshape(t, -1)
        rot = apply_rotary(x[..., :self.rotary_dim], cos, sin, self.is_neox_style)
        return torch.cat((rot, x[..., self.rotary_dim:]), dim=-1).reshape(t, -1)


class LongRopeRotaryEmbedding(RotaryEmbedding):
    """LongRoPE: positions below `original_max_position_embeddings` use the short factors, later
    positions the long ones (both with the same attention factor).

    The choice is per position, so a token's rotation never depends on the batch. HF switches the
    whole forward to the long factors once any position passes the original length; the two agree
    whenever a sequence stays within it.
    """

    def __init__(self, head_dim: int, rotary_dim: int, max_position: int,
                 settings: dict[str, Any], is_neox_style: bool = True):
        self.original_max = int(settings.get("original_max_position_embeddings") or max_position)
        long_inv, _ = _longrope_inv_freq(float(settings["rope_theta"]), rotary_dim, settings,
                                         max_position, long=True)
        self._long_inv_freq = long_inv
        super().__init__(head_dim, rotary_dim, max_position, settings, is_neox_style)

    def _build(self, n: int) -> torch.Tensor:
        short = super()._build(min(n, self.original_max))
        if n <= self.original_max:
            return short
        pos = torch.arange(self.original_max, n, dtype=torch.float32, device=self.inv_freq.device)
        freqs = pos[:, None] * self._long_inv_freq.to(pos.device)[None, :]
        long = torch.cat((freqs.cos() * self.attention_scaling,
                          freqs.sin() * self.attention_scaling), dim=-1)
        return torch.cat((short, long))


def get_rope(hf_config: Any, head_dim: int, max_position: Optional[int] = None,
             is_neox_style: bool = True, layer_type: Optional[str] = None,
             settings: Optional[dict[str, Any]] = None) -> RotaryEmbedding:
    """RotaryEmbedding for a model config (rotary dim = head_dim * partial_rotary_factor).

    `settings` (a `rope_settings`-style dict) overrides what the config says."""
    if settings is None:
        settings = rope_settings(hf_config, layer_type)
    rotary_dim = int(head_dim * settings["partial_rotary_factor"])
    max_pos = max_position or getattr(hf_config, "max_position_embeddings", None) or 2048
    cls = LongRopeRotaryEmbedding if settings["rope_type"] == "longrope" else RotaryEmbedding
    return cls(head_dim, rotary_dim, max_pos, settings, is_neox_style)
