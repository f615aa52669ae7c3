"""Fixtures for the attention backend tests: random fixed contexts and a handbook.

The session's real SmolLM2 (`smollm2`) comes from tests/conftest.py.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def random_context():
    """A random fixed context shaped like SmolLM2's attention: 3 KV heads, 9 query heads, head dim 64."""
    import torch

    from workers.attention.reference import FixedKV

    gen = torch.Generator().manual_seed(7)
    n_layers, kvh, n, d = 2, 3, 300, 64
    # Keys with a few strong directions (like real keys: clustered, some far more attended).
    basis = torch.randn(8, d, generator=gen)
    keys, values = [], []
    for _ in range(n_layers):
        mix = torch.randn(kvh, n, 8, generator=gen).softmax(-1) * 3
        keys.append(mix @ basis + 0.3 * torch.randn(kvh, n, d, generator=gen))  # (KVH, N, D)
        values.append(torch.randn(kvh, n, d, generator=gen))
    queries = torch.randn(n_layers, 9, 96, d, generator=gen) + basis[:1]  # (L, H, P, D) sampled prefill queries
    return FixedKV(keys, values), queries


@pytest.fixture
def user_step():
    """A decoding step's inputs: query (1, H, Q, D), the user's key/value (1, KVH, U, D), a causal mask."""

    def make(q_len: int = 1, u_len: int = 5, seed: int = 11):
        import torch

        gen = torch.Generator().manual_seed(seed)
        query = torch.randn(1, 9, q_len, 64, generator=gen)
        key = torch.randn(1, 3, u_len, 64, generator=gen)
        value = torch.randn(1, 3, u_len, 64, generator=gen)
        allowed = torch.ones(q_len, u_len, dtype=torch.bool).tril(diagonal=u_len - q_len)
        mask = torch.zeros(1, 1, q_len, u_len).masked_fill(~allowed, torch.finfo(torch.float32).min)
        return query, key, value, mask

    return make
