"""Build the model for a ModelConfig on a device and fill its weights (checkpoint or dummy)."""
from __future__ import annotations

import contextlib
import glob
import json
import os
from typing import Any, Iterator

import torch
from torch import nn

from engine.layers.layernorm import RMSNorm
from engine.layers.linear import LinearBase, linear_layers
from engine.models.registry import get_model_class
from engine.quantization.input_quant import wire_input_quant
from engine.quantization.kv_cache import KVScales

DUMMY_STD = 0.02


def load_model(model_config: Any, device: torch.device) -> nn.Module:
    """Instantiate `model_config.hf_config`'s architecture in `model_config.dtype` directly on
    `device`, load its weights (or random ones for load_format "dummy") and return it in eval mode."""
    cls = get_model_class(model_config.hf_config)
    device = torch.device(device)
    quant_config = model_config.quant_config
    with _default_dtype(model_config.dtype), device, _skip_random_init():
        model = (cls(model_config.hf_config) if quant_config is None
                 else cls(model_config.hf_config, quant_config=quant_config))
    fmt = model_config.load_format
    if fmt == "dummy":
        init_dummy_weights(model, model_config.seed)
    else:
        kv_scales = KVScales()
        model.load_weights(kv_scales.filter(iter_weights(model_config)))
        kv_scales.apply(model)
    for layer in linear_layers(model):
        layer.quant_method.process_weights_after_loading(layer)
    wire_input_quant(model)  # every method is final now; fuses input quantization into producers
    return model.eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights the forward pass reads (quantized layers count their packed form)."""
    total, seen = 0, set()
    for layer in linear_layers(model):
        total += layer.quant_method.weight_bytes(layer)
        seen.update(id(p) for p in layer.parameters(recurse=False))
    for p in model.parameters():
        if id(p) not in seen:
            total += p.numel() * p.element_size()
    return total


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def _skip_random_init():
    """Linear/Embedding weights start uninitialised: every one is overwritten by the checkpoint
    (load_weights raises on any left unfilled) or by init_dummy_weights. Saves seconds per start."""
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None
    try:
        yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved


def iter_weights(model_config: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, CPU tensor) pairs from the model's GGUF file, safetensors or .bin checkpoint."""
    fmt = model_config.load_format
    if fmt == "gguf" or (fmt == "auto" and model_config.gguf_file):
        from engine.loader.gguf_loader import gguf_weights
        return gguf_weights(model_config.gguf_file or model_config.model)
    from engine.loader.resolve import local_model_dir
    folder = local_model_dir(model_config.model)
    if fmt in ("safetensors", "auto") and _safetensors_files(folder):
        return _safetensors_weights(_safetensors_files(folder))
    if fmt in ("pt", "auto") and _bin_files(folder):
        return _bin_weights(_bin_files(folder))
    raise ValueError(f"model '{model_config.model}': no {fmt} weights found in '{folder}'")


def _safetensors_files(folder: str) -> list[str]:
    # With an index, only the files it names: some repos also ship a consolidated copy.
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, n) for n in names]
    return sorted(glob.glob(os.path.join(folder, "*.safetensors")))


def _bin_files(folder: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(folder, "*.bin")))
    return [f for f in files if os.path.basename(f) != "training_args.bin"]


def _safetensors_weights(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _bin_weights(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        yield from state.items()
        del state


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Random weights, deterministic in `seed`: N(0, 0.02) everywhere except norms (weight 1,
    bias 0), so a real-shaped model gives finite logits. Linear layers' weights come from their
    quantization method (random packed values of the real layout for quantized schemes)."""
    gens: dict = {}

    def gen_for(p: torch.Tensor) -> torch.Generator:
        return gens.setdefault(p.device, torch.Generator(device=p.device).manual_seed(seed))

    norm_params: set[int] = set()
    for module in model.modules():
        if isinstance(module, (RMSNorm, nn.LayerNorm)):
            for name, p in module.named_parameters(recurse=False):
                p.fill_(1.0 if name == "weight" else 0.0)
                norm_params.add(id(p))
    # Drawn on the parameters' device: an 8B-parameter model initialises in seconds on a GPU
    # (values are deterministic per seed and device type).
    for module in model.modules():
        if isinstance(module, LinearBase):
            module.quant_method.init_dummy(module, gen_for(next(module.parameters())))
            norm_params.update(id(p) for n, p in module.named_parameters(recurse=False)
                               if n != "bias")
    for _, p in model.named_parameters():
        if id(p) not in norm_params:
            p.normal_(0.0, DUMMY_STD, generator=gen_for(p))
