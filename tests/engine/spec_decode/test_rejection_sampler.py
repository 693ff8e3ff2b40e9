"""The rejection sampler emits tokens distributed exactly as the target's (processed)
distribution: chi-square over 200k draws, with general and one-hot drafts, top-k and top-p."""
from __future__ import annotations

import pytest
import torch

from engine.sampler import SamplingMetadata, sampling_probs
from engine.spec_decode.rejection_sampler import rejection_sample

V, K, N = 8, 2, 200_000


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum()
    support = probs > 0
    assert counts[~support].sum() == 0, "a token outside the target's support was emitted"
    expected = probs[support] * n
    chi2 = ((counts[support] - expected) ** 2 / expected).sum()
    df = int(support.sum()) - 1
    if df == 0:
        return 1.0  # a point mass: every draw on it (checked above)
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         chi2.double() / 2))


def _target_probs(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The sampler's own processing (temperature 0.8, top-k, top-p) of `logits` [R, V]."""
    r = logits.shape[0]
    meta = SamplingMetadata(num_rows=r, vocab_size=V, device=torch.device("cpu"),
                            all_greedy=False, greedy=torch.zeros(r, dtype=torch.bool),
                            temperature=torch.full((r, 1), 0.8),
                            top_k=torch.full((r,), top_k) if top_k < V else None,
                            top_p=torch.full((r,), top_p) if top_p < 1 else None)
    return sampling_probs(logits, meta, normalize=True)


def _reference(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The same distribution computed independently: sort, keep top-k, then the nucleus."""
    p = torch.softmax(logits / 0.8, dim=-1)
    out = torch.zeros_like(p)
    for r in range(p.shape[0]):
        order = p[r].argsort(descending=True)[:top_k]
        kept = p[r, order] / p[r, order].sum()
        mass = torch.cumsum(kept, 0) - kept  # mass strictly above each token
        keep = order[mass < top_p]
        out[r, keep] = p[r, keep]
        out[r] /= out[r].sum()
    return out


@pytest.mark.parametrize("top_k,top_p,general_draft", [(V, 1.0, True), (V, 1.0, False),
                                                       (3, 1.0, False), (V, 0.8, True), (4, 0.9, False)])
def test_emitted_tokens_follow_target(top_k, top_p, general_draft):
    gen = torch.Generator().manual_seed(7 + top_k)
    logits = torch.randn(K + 1, V, generator=gen) * 1.5
    p = _target_probs(logits, top_k, top_p)
    torch.testing.assert_close(p, _reference(logits, top_k, top_p))
    # The draft distribution differs from the target's (and covers tokens the target excludes).
    q = torch.softmax(torch.randn(K, V, generator=gen), dim=-1)
    draft = torch.multinomial(q, N, replacement=True, generator=gen).T  # [N, K], x_j ~ q_j
    tokens, accepted = rejection_sample(
        p.expand(N, K + 1, V), draft, torch.full((N,), K), torch.zeros(N, dtype=torch.bool),
        torch.rand(N, K, generator=gen), torch.empty(N, V).exponential_(generator=gen),
        draft_probs=q.expand(N, K, V) if general_draft else None)
    first = torch.bincount(tokens[:, 0], minlength=V).double()
    assert _chi2_pvalue(first, p[0].double()) > 1e-3
    # Given the first draft was accepted, the second token is ~ p1 (p1 does not depend on it).
    second = torch.bincount(tokens[accepted >= 1, 1], minlength=V).double()
    assert second.sum() > 1000
    assert _chi2_pvalue(second, p[1].double()) > 1e-3
    assert (accepted == K).any()  # bonus tokens are drawn too


@pytest.mark.parametrize("with_noise", [True, False])
def test_greedy_accepts_while_argmax_matches(with_noise):
    """All-greedy batches may pass no noise (nothing is sampled): the same tokens."""
    logits = torch.tensor([[0., 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]]).expand(3, 3, 4)
    draft = torch.tensor([[1, 2], [1, 0], [3, 3]])
    tokens, accepted = rejection_sample(
        logits, draft, torch.tensor([2, 2, 2]), torch.ones(3, dtype=torch.bool),
        torch.rand(3, 2), torch.empty(3, 4).exponential_() if with_noise else None)
    assert accepted.tolist() == [2, 1, 0]
    assert tokens[0].tolist() == [1, 2, 3]
    assert tokens[1, :2].tolist() == [1, 2]
    assert tokens[2, :1].tolist() == [1]


@pytest.mark.parametrize("with_noise", [True, False])
def test_fewer_drafts_than_width(with_noise):
    logits = torch.tensor([[0., 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]]).expand(1, 3, 4)
    tokens, accepted = rejection_sample(
        logits, torch.tensor([[1, 2]]), torch.tensor([1]), torch.ones(1, dtype=torch.bool),
        torch.rand(1, 2), torch.empty(1, 4).exponential_() if with_noise else None)
    assert accepted.tolist() == [1]
    assert tokens[0, :2].tolist() == [1, 2]  # the bonus comes from position 1, not 2
