"""EAGLE-3 draft head (Li et al. 2025) for Llama-family targets, in the EAGLE-3 checkpoint format.

The head is one decoder layer that reads, for each position, the token embedding and a hidden
state side by side. For tokens the target has verified, the hidden state is `fc` applied to three
of the target's residual streams (low, middle and high layers, concatenated); for the head's own
drafts it is the head's previous pre-norm output. Its LM head covers a reduced draft vocabulary
that `d2t` maps back to target ids.

Checkpoint tensors (the EAGLE-3 / SpecForge names; a `model.` prefix is accepted too):
  fc.weight                                  [hidden, 3 * target_hidden]
  midlayer.input_layernorm.weight            [hidden]  norm of the token embedding
  midlayer.hidden_norm.weight                [hidden]  norm of the hidden state
  midlayer.self_attn.{q,k,v}_proj.weight     [*, 2 * hidden]  q/k/v read concat(embedding, hidden)
  midlayer.self_attn.o_proj.weight, midlayer.post_attention_layernorm.weight,
  midlayer.mlp.{gate,up,down}_proj.weight    as in a Llama layer
  norm.weight, lm_head.weight                [draft_vocab_size, hidden]
  d2t                                        [draft_vocab_size] int64: target id = id + d2t[id]
  t2d                                        [vocab_size] bool (unused here)
  embed_tokens.weight                        optional; absent: the target's embedding is used
config.json: a Llama config with architectures ["LlamaForCausalLMEagle3"], num_hidden_layers 1,
`draft_vocab_size`, optionally `target_hidden_size`, `norm_before_residual` and
`eagle_aux_hidden_state_layer_ids` (top level or inside `eagle_config`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from engine.attention.metadata import AttentionMetadata
from engine.layers.layernorm import RMSNorm
from engine.layers.linear import ReplicatedLinear
from engine.layers.rotary import get_rope
from engine.layers.vocab_parallel import ParallelLMHead, VocabParallelEmbedding
from engine.models.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP
from engine.models.stacked_loading import load_stacked

EAGLE3_ARCHITECTURES = ("LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM")


def draft_vocab_size(config: Any) -> int:
    return int(getattr(config, "draft_vocab_size", None) or config.vocab_size)


def aux_layer_ids(config: Any, num_target_layers: int) -> list[int]:
    """The target layers whose residual streams feed `fc`: the checkpoint's
    `eagle_aux_hidden_state_layer_ids`, else EAGLE-3's default (2, N // 2, N - 3)."""
    ids = getattr(config, "eagle_aux_hidden_state_layer_ids", None)
    eagle_config = getattr(config, "eagle_config", None)
    if not ids and isinstance(eagle_config, dict):
        ids = eagle_config.get("eagle_aux_hidden_state_layer_ids")
    if ids:
        return [int(i) for i in ids]
    n = num_target_layers
    return [2, n // 2, n - 3]


class Eagle3DecoderLayer(nn.Module):
    """The head's `midlayer`: attention over concat(norm(embedding), norm(hidden)), then MLP."""

    def __init__(self, config: Any, max_position: Optional[int] = None):
        super().__init__()
        hidden = config.hidden_size
        head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
        bias = bool(getattr(config, "attention_bias", False))
        rotary_emb = get_rope(config, head_dim, max_position)
        self.self_attn = LlamaAttention(config, 0, bias, bias, rotary_emb, None,
                                        "midlayer.self_attn", input_size=2 * hidden)
        self.mlp = LlamaMLP(config, bool(getattr(config, "mlp_bias", False)), None,
                            "midlayer.mlp")
        self.input_layernorm = RMSNorm(hidden, config.rms_norm_eps)
        self.hidden_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hidden, config.rms_norm_eps)
        # False (EAGLE-3's own heads): the residual is the raw hidden state; True (some
        # converted heads): the normed one.
        self.norm_before_residual = bool(getattr(config, "norm_before_residual", False))

    def forward(self, positions: torch.Tensor, embeds: torch.Tensor, hidden: torch.Tensor,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.hidden_norm(hidden)
        residual = normed if self.norm_before_residual else hidden
        x = torch.cat([self.input_layernorm(embeds), normed], dim=-1)
        x = self.self_attn(positions, x, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class Eagle3LlamaHead(nn.Module):
    """EAGLE-3 head over flat token rows (see the module docstring)."""

    stacked_params = LlamaForCausalLM.stacked_params

    def __init__(self, config: Any, has_embedding: bool, max_position: Optional[int] = None):
        """`max_position`: positions the rotary cache covers (the target's context length;
        heads often declare a shorter one than their target)."""
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        target_hidden = int(getattr(config, "target_hidden_size", None) or hidden)
        self.draft_vocab_size = draft_vocab_size(config)
        self.fc = ReplicatedLinear(3 * target_hidden, hidden, bias=False, prefix="fc")
        self.midlayer = Eagle3DecoderLayer(config, max_position)
        self.norm = RMSNorm(hidden, config.rms_norm_eps)
        self.lm_head = ParallelLMHead(self.draft_vocab_size, hidden)
        self.register_buffer("d2t", torch.zeros(self.draft_vocab_size, dtype=torch.long))
        self.embed_tokens = (VocabParallelEmbedding(config.vocab_size, hidden)
                             if has_embedding else None)
        # Set by `share_embedding` when the checkpoint has none: kept out of the module tree,
        # so the target's weights are neither listed nor loaded as the head's.
        self._shared_embed: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def share_embedding(self, embed: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.__dict__["_shared_embed"] = embed

    def fuse(self, aux_hidden: torch.Tensor) -> torch.Tensor:
        """The target's auxiliary hidden states [N, 3 * target_hidden] -> [N, hidden]."""
        return self.fc(aux_hidden)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, hidden: torch.Tensor,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (token, hidden state) -> (normed output for the LM head, pre-norm output: the
        next draft step's hidden state)."""
        embed = self.embed_tokens if self.embed_tokens is not None else self._shared_embed
        x, residual = self.midlayer(positions, embed(input_ids), hidden, meta)
        return self.norm(x, residual)

    def draft_tokens(self, normed: torch.Tensor) -> torch.Tensor:
        """Greedy draft, as target token ids [N]."""
        ids = self.lm_head(normed).argmax(dim=-1)
        return ids + self.d2t[ids]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        has_d2t = False

        def layers() -> Iterable[tuple[str, torch.Tensor]]:
            nonlocal has_d2t
            for name, tensor in weights:
                if name.removeprefix("model.") != "d2t":
                    yield name, tensor
                    continue
                if tuple(tensor.shape) != tuple(self.d2t.shape):
                    raise ValueError(f"checkpoint weight 'd2t' has shape {tuple(tensor.shape)}, "
                                     f"expected {tuple(self.d2t.shape)}")
                self.d2t.copy_(tensor)
                has_d2t = True

        def rename(name: str) -> Optional[str]:
            name = name.removeprefix("model.")
            return None if name == "t2d" else name

        load_stacked(self, layers(), self.stacked_params, rename=rename)
        if not has_d2t and self.draft_vocab_size != self.config.vocab_size:
            raise ValueError(f"checkpoint has no 'd2t' but its draft vocabulary "
                             f"({self.draft_vocab_size}) is not the full one "
                             f"({self.config.vocab_size})")
