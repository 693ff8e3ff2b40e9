"""Speculative-sampling verification (Leviathan et al. 2023, Chen et al. 2023).

A sequence proposes `d` draft tokens x_1..x_d; one target forward pass over
[last token, x_1..x_d] yields the target's distributions p_0..p_d (position j predicts the token
after x_j). Position j's draft is accepted with probability min(1, p_j(x) / q_j(x)), where q_j is
the draft's distribution (one-hot for the deterministic proposers here: n-gram lookup, greedy
draft models). At the first rejection the token is drawn from the residual
norm(max(p_j - q_j, 0)); when all d are accepted a bonus token is drawn from p_d. Every emitted
token is then distributed exactly as if the target had sampled it alone.

Greedy rows accept while the target's argmax equals the draft and emit the target's argmax at
the first mismatch (or at d): outputs are those of plain greedy decoding, token for token.

`rejection_sample` is pure tensor code over a padded batch, so it can be tested on its own;
random numbers come in as arguments (uniforms for acceptance, Exp(1) noise for the final draw,
which is the exponential race of engine/sampler.py).
"""
from __future__ import annotations

from typing import Optional

import torch


def rejection_sample(target_probs: torch.Tensor, draft_token_ids: torch.Tensor,
                     num_draft: torch.Tensor, greedy: torch.Tensor, uniforms: torch.Tensor,
                     noise: Optional[torch.Tensor], draft_probs: Optional[torch.Tensor] = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify a batch of B draft runs.

    target_probs [B, K+1, V]: the target's processed distribution per position (for greedy rows
        anything whose argmax is the target's processed argmax, e.g. the logits).
    draft_token_ids [B, K] long (entries past num_draft[b] are ignored); num_draft [B] long.
    greedy [B] bool; uniforms [B, K] in [0, 1); noise [B, V] Exp(1) draws, or None when every row
        is greedy (nothing is sampled then: the residual and the draw are skipped).
    draft_probs [B, K, V] or None (one-hot drafts).
    Returns (tokens [B, K+1], num_accepted [B]): row b emits tokens[b, :num_accepted[b] + 1].
    """
    b, k1, v = target_probs.shape
    k = k1 - 1
    assert draft_token_ids.shape == (b, k) and uniforms.shape == (b, k)
    if noise is not None:
        assert noise.shape == (b, v)
    elif not greedy.is_cuda:  # checked on the host only: on a GPU it would wait for the step
        assert bool(greedy.all()), "noise=None needs every row greedy"
    device = target_probs.device
    pos = torch.arange(k, device=device)
    valid = pos.unsqueeze(0) < num_draft.unsqueeze(1)  # [B, K]
    x = draft_token_ids.clamp(0, v - 1)
    p_draft = target_probs[:, :k].gather(2, x.unsqueeze(2)).squeeze(2)  # p_j(x_j)
    if draft_probs is None:
        q_draft = torch.ones_like(p_draft)
    else:
        q_draft = draft_probs.gather(2, x.unsqueeze(2)).squeeze(2)
    accept_sampled = uniforms * q_draft < p_draft
    accept_greedy = target_probs[:, :k].argmax(dim=-1) == x
    accept = torch.where(greedy.unsqueeze(1), accept_greedy, accept_sampled) & valid
    num_accepted = accept.long().cumprod(dim=1).sum(dim=1)  # leading accepts

    rows = torch.arange(b, device=device)
    p_final = target_probs[rows, num_accepted]  # [B, V]: p at the first rejection, or the bonus
    tokens = torch.cat([torch.where(valid, x, torch.zeros_like(x)), torch.zeros_like(x[:, :1])],
                       dim=1)
    if noise is None:  # all greedy: the target's argmax where the drafts stop
        tokens[rows, num_accepted] = p_final.argmax(dim=-1)
        return tokens, num_accepted
    rejected = num_accepted < num_draft
    at = num_accepted.clamp(max=max(k - 1, 0))
    if k > 0:
        if draft_probs is None:
            q_final = torch.zeros_like(p_final)
            q_final[rows, x[rows, at]] = 1.0
        else:
            q_final = draft_probs[rows, at]
        residual = (p_final - q_final).clamp(min=0.0)
        # p == q everywhere leaves no residual (and no rejection could have happened).
        empty = residual.sum(dim=-1, keepdim=True) <= 0
        residual = torch.where(empty, p_final, residual)
        dist = torch.where(rejected.unsqueeze(1), residual, p_final)
    else:
        dist = p_final
    sampled = (dist / noise.clamp(min=torch.finfo(noise.dtype).tiny)).argmax(dim=-1)
    final = torch.where(greedy, p_final.argmax(dim=-1), sampled)
    tokens[rows, num_accepted] = final
    return tokens, num_accepted
