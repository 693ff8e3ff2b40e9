"""Load an EAGLE-3 head for a target and check at start-up that the two fit together."""
from __future__ import annotations

from typing import Any

from engine.config import EngineConfig
from engine.models.llama_eagle3 import EAGLE3_ARCHITECTURES, Eagle3LlamaHead, aux_layer_ids


def _fail(message: str) -> None:
    raise ValueError(f"speculative_config.model: {message}")


def _text_config(hf_config: Any) -> Any:
    return getattr(hf_config, "text_config", None) or hf_config


def load_eagle3_head(config: EngineConfig, runner) -> tuple[Eagle3LlamaHead, list[int]]:
    """The head named by `speculative_config.model`, on the target's device and dtype, and the
    target layer ids whose residual streams it reads."""
    from engine.layers.linear import linear_layers
    from engine.loader.model_loader import _default_dtype, iter_weights
    from engine.loader.resolve import resolve_model

    path = config.speculative.model
    try:
        resolved = resolve_model(path, None)
    except ValueError as e:
        _fail(str(e))
    head_cfg = resolved.hf_config
    archs = list(getattr(head_cfg, "architectures", None) or [])
    if not any(a in EAGLE3_ARCHITECTURES for a in archs):
        _fail(f"'{path}' is not an EAGLE-3 head (architectures {archs}; expected one of "
              f"{', '.join(EAGLE3_ARCHITECTURES)})")
    target = runner.model
    if not hasattr(target, "set_aux_hidden_layers") or not hasattr(target, "embed_input_ids"):
        _fail(f"eagle3 needs a target that returns auxiliary hidden states (Llama-family: "
              f"Llama, Mistral, Qwen2); {type(target).__name__} does not")
    target_cfg = _text_config(config.model.hf_config)
    hidden = int(target_cfg.hidden_size)
    if int(head_cfg.hidden_size) != hidden:
        _fail(f"the EAGLE-3 head's hidden_size ({head_cfg.hidden_size}) differs from the "
              f"target's ({hidden}); the head must be trained for this target")
    target_hidden = getattr(head_cfg, "target_hidden_size", None)
    if target_hidden is not None and int(target_hidden) != hidden:
        _fail(f"the EAGLE-3 head's target_hidden_size ({target_hidden}) differs from the "
              f"target's hidden_size ({hidden})")
    if int(head_cfg.vocab_size) != runner.vocab_size:
        _fail(f"the EAGLE-3 head's vocab_size ({head_cfg.vocab_size}) differs from the "
              f"target's ({runner.vocab_size})")
    if int(getattr(head_cfg, "num_hidden_layers", 1)) != 1:
        _fail(f"only one-layer EAGLE-3 heads are supported (num_hidden_layers "
              f"{head_cfg.num_hidden_layers})")
    num_layers = int(target_cfg.num_hidden_layers)
    aux_ids = aux_layer_ids(head_cfg, num_layers)
    if len(aux_ids) != 3 or not all(0 <= i <= num_layers for i in aux_ids):
        _fail(f"auxiliary hidden-state layers {aux_ids} do not fit the {num_layers}-layer "
              "target (three ids in 0..num_hidden_layers; set "
              "eagle_aux_hidden_state_layer_ids in the head's config.json)")

    weights = list(iter_weights(resolved))
    has_embedding = any(n.removeprefix("model.") == "embed_tokens.weight" for n, _ in weights)
    max_position = config.scheduler.max_model_len + config.speculative.num_speculative_tokens + 1
    with _default_dtype(runner.dtype), runner.device:
        head = Eagle3LlamaHead(head_cfg, has_embedding, max_position)
    try:
        head.load_weights(weights)
    except ValueError as e:
        _fail(f"'{path}': {e}")
    for layer in linear_layers(head):
        layer.quant_method.process_weights_after_loading(layer)
    if not has_embedding:
        head.share_embedding(target.embed_input_ids)
    return head.eval(), aux_ids
