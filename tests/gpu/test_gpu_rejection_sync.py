"""`rejection_sample` on a CUDA GPU never makes the host wait for the device (`make test-gpu`):
the verify step is launched while the target's forward still runs, and a synchronising call
would hold the host until it ends (the H200 profile of 2026-12-04 found one: an assertion that
read `greedy.all()`)."""
from __future__ import annotations

import pytest
import torch

from engine.spec_decode.rejection_sampler import rejection_sample

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("all_greedy", [True, False])
def test_rejection_sample_does_not_synchronise(all_greedy):
    b, k, v = 8, 4, 1000
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    probs = torch.rand(b, k + 1, v, device=dev, generator=g).softmax(-1)
    drafts = torch.randint(0, v, (b, k), device=dev, generator=g)
    num_draft = torch.full((b,), k, dtype=torch.long, device=dev)
    greedy = torch.ones(b, dtype=torch.bool, device=dev)
    if not all_greedy:
        greedy[::2] = False
    uniforms = torch.rand(b, k, device=dev, generator=g)
    noise = None if all_greedy else torch.empty(b, v, device=dev).exponential_(generator=g)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tokens, accepted = rejection_sample(probs, drafts, num_draft, greedy, uniforms, noise)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # and the outcome is that of the same call on the host
    cpu = rejection_sample(probs.cpu(), drafts.cpu(), num_draft.cpu(), greedy.cpu(),
                           uniforms.cpu(), noise.cpu() if noise is not None else None)
    assert torch.equal(accepted.cpu(), cpu[1])
    assert torch.equal(tokens.cpu(), cpu[0])
