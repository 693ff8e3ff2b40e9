"""Quantize tiny checkpoints with the real library (AutoRound, RTN mode) and build the
reference: transformers' own fp32 model with each quantized linear replaced by the weight the
quantizing libraries' own unpack code dequantizes (AutoRound's GPTQ QuantLinear, its AWQ
`dequantize_gemm`, compressed-tensors' `unpack_from_int32` + `dequantize`)."""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from unittest import mock

import torch


CALIBRATION = ["Paged attention stores the KV cache in fixed-size blocks of tokens",
               "The quick brown fox jumps over the lazy dog and runs into the forest"]


def quantize(src: str, dst: Path, fmt: str, bits: int = 4, group_size: int = 128,
             sym: bool = True, scheme: str = "") -> str:
    """AutoRound (iters=0: round-to-nearest) export in `fmt`; the folder. A named `scheme`
    (INT8_W8A8, FP8_STATIC) replaces bits/group/sym; static activation scales are calibrated on
    two short texts."""
    from auto_round import AutoRound
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src)
    kw = dict(scheme=scheme) if scheme else dict(bits=bits, group_size=group_size, sym=sym)
    # AutoRound frees memory with gc.collect() between blocks: ~0.25 s each in a test process
    # holding many objects, most of a tiny model's quantization time. Nothing to free here.
    with mock.patch("gc.collect", lambda *args: 0):
        ar = AutoRound(model, tok, iters=0, disable_opt_rtn=True, nsamples=2, seqlen=8,
                       device_map="cpu", dataset=CALIBRATION, **kw)
        ar.quantize_and_save(str(dst), format=fmt)
    folders = [d for d in glob.glob(os.path.join(dst, "*", "")) if os.path.isfile(d + "config.json")]
    return folders[0] if folders else str(dst)


def _tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    out: dict[str, torch.Tensor] = {}
    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        out.update(load_file(f))
    return out


def _dequant_gptq(t, prefix, bits, group_size, k, n, zero_offset):
    from auto_round_extension.torch.qlinear_torch_zp import QuantLinear
    assert zero_offset == 1  # the only GPTQ flavour AutoRound's exports write here
    # AutoRound writes no act-order: g_idx is k // group (its g_idx branch assumes N == K).
    g = group_size if group_size != -1 else k
    if prefix + ".g_idx" in t:  # the native AutoRound format omits it
        assert torch.equal(t[prefix + ".g_idx"].long(), torch.arange(k) // g)
    ql = QuantLinear(bits, group_size, k, n, bias=False, g_idx=False)
    ql.qweight = t[prefix + ".qweight"]
    ql.qzeros = t[prefix + ".qzeros"]
    ql.scales = t[prefix + ".scales"].float()
    return ql(torch.eye(k)).t()  # [N, K]


def _dequant_awq(t, prefix, bits, group_size):
    from auto_round.export.export_to_awq.utils import dequantize_gemm
    w = dequantize_gemm(t[prefix + ".qweight"], t[prefix + ".qzeros"],
                        t[prefix + ".scales"].float(), bits, group_size)
    return w.t()


def _dequant_ct(t, prefix, wargs):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    args = QuantizationArgs(**wargs)
    shape = torch.Size(t[prefix + ".weight_shape"].tolist())
    scale = t[prefix + ".weight_scale"].float()
    zp = t.get(prefix + ".weight_zero_point")
    if zp is not None:
        zp = unpack_from_int32(zp, args.num_bits, torch.Size((shape[0], scale.shape[1])),
                               packed_dim=0)
    q = unpack_from_int32(t[prefix + ".weight_packed"], args.num_bits, shape)
    return dequantize(q, scale, zp, args=args, dtype=torch.float32)


def reference_model(path: str):
    """transformers fp32 model of the checkpoint with every quantized linear dequantized."""
    from transformers import AutoConfig, AutoModelForCausalLM

    qc = json.load(open(os.path.join(path, "config.json")))["quantization_config"]
    config = AutoConfig.from_pretrained(path)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    t = _tensors(path)
    state = {k: v.float() for k, v in t.items() if k.endswith((".weight", ".bias"))}
    mods = dict(model.named_modules())
    method = qc["quant_method"]
    for prefix in {k.rsplit(".", 1)[0] for k in t if k.endswith((".qweight", ".weight_packed"))}:
        lin = mods[prefix]
        n, k = lin.weight.shape
        if method == "compressed-tensors":
            w = _dequant_ct(t, prefix, next(iter(qc["config_groups"].values()))["weights"])
        elif method == "awq" or qc.get("packing_format", "").endswith("awq"):
            w = _dequant_awq(t, prefix, qc["bits"], qc["group_size"])
        else:
            w = _dequant_gptq(t, prefix, qc["bits"], qc["group_size"], k, n, 1)
        state[prefix + ".weight"] = w
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in m or "embed" in m for m in missing), missing
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


def _fake_quant_input(kind: str, input_scale=None):
    """Forward pre-hook rounding a linear's input as the W8A8 scheme does (per token int8 / fp8,
    or fp8 with the static per-tensor scale), in fp32."""
    def hook(mod, args):
        x = args[0].reshape(-1, args[0].shape[-1]).float()
        if kind == "int8":
            s = (x.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)
            x = torch.round(x / s).clamp(-128, 127) * s
        else:
            fmax = torch.finfo(torch.float8_e4m3fn).max
            s = (input_scale if input_scale is not None
                 else (x.abs().amax(-1, keepdim=True) / fmax).clamp(min=1e-12))
            x = (x / s).clamp(-fmax, fmax).to(torch.float8_e4m3fn).float() * s
        return (x.reshape(args[0].shape),)
    return hook


def w8a8_reference_model(path: str):
    """transformers fp32 model of a compressed-tensors W8A8 checkpoint: weights dequantized with
    compressed-tensors' `dequantize`, inputs rounded per the scheme by a pre-hook."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from transformers import AutoConfig, AutoModelForCausalLM

    qc = json.load(open(os.path.join(path, "config.json")))["quantization_config"]
    group = next(iter(qc["config_groups"].values()))
    wargs, aargs = QuantizationArgs(**group["weights"]), group["input_activations"]
    config = AutoConfig.from_pretrained(path)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    t = _tensors(path)
    state = {k: v.float() for k, v in t.items()
             if k.endswith((".weight", ".bias")) and v.dtype.is_floating_point
             and v.element_size() > 1}
    mods = dict(model.named_modules())
    for prefix in {k.rsplit(".", 1)[0] for k in t if k.endswith(".weight_scale")}:
        state[prefix + ".weight"] = dequantize(t[prefix + ".weight"], t[prefix + ".weight_scale"]
                                               .float(), args=wargs, dtype=torch.float32)
        kind = "int8" if aargs["type"] == "int" else "fp8"
        static = t[prefix + ".input_scale"].float() if not aargs.get("dynamic") else None
        mods[prefix].register_forward_pre_hook(_fake_quant_input(kind, static))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in m or "embed" in m for m in missing), missing
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


def block_fp8_reference_model(path: str, block: int = 128):
    """transformers fp32 model of a block-wise FP8 checkpoint (HF `fp8` or compressed-tensors):
    each weight times its tile's scale, each input rounded per token and group of `block`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    t = _tensors(path)
    state = {k: v.float() for k, v in t.items()
             if k.endswith((".weight", ".bias")) and v.element_size() > 1}
    mods = dict(model.named_modules())
    fmax = torch.finfo(torch.float8_e4m3fn).max

    def hook(mod, args):
        x = args[0]
        flat = x.reshape(-1, x.shape[-1]).float()
        g = flat.view(flat.shape[0], -1, block)
        s = (g.abs().amax(-1, keepdim=True) / fmax).clamp(min=1e-12)
        q = (g / s).clamp(-fmax, fmax).to(torch.float8_e4m3fn).float() * s
        return (q.view(x.shape),)

    for name in [k for k in t if k.endswith((".weight_scale_inv", ".weight_scale"))]:
        prefix = name.rsplit(".", 1)[0]
        w = t[prefix + ".weight"].float()
        s = t[name].float().repeat_interleave(block, 0)[:w.shape[0]]
        state[prefix + ".weight"] = w * s.repeat_interleave(block, 1)[:, :w.shape[1]]
        mods[prefix].register_forward_pre_hook(hook)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in m or "embed" in m for m in missing), missing
    return model
