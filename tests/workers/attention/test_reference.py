"""The plain reference and the exact log-sum-exp merge the sparse backends are built on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from workers.attention.reference import (
    FullAttention,
    attention_reference,
    merge_partials,
    partial_attention,
    repeat_kv,
)

ATOL = 1e-5


def test_it_matches_transformers_eager_attention(user_step):
    from transformers.models.llama.modeling_llama import eager_attention_forward

    query, key, value, mask = user_step(q_len=5, u_len=12)
    module = SimpleNamespace(num_key_value_groups=3, training=False)
    expected, _ = eager_attention_forward(module, query, key, value, mask, scaling=0.125)  # (B, Q, H, D)
    ours = attention_reference(query, key, value, mask, 0.125)  # (B, H, Q, D)
    torch.testing.assert_close(ours.transpose(1, 2), expected, atol=ATOL, rtol=0)


def test_it_merges_partial_attentions_exactly_like_softmax_over_the_union():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(4, 2, 16, generator=gen)  # (H, Q, D)
    k = torch.randn(4, 50, 16, generator=gen) * 3  # (H, T, D): peaked scores
    v = torch.randn(4, 50, 16, generator=gen)
    union, union_lse = partial_attention(q, k, v, 0.25)
    cuts = [0, 7, 31, 50]
    parts = [partial_attention(q, k[:, a:b], v[:, a:b], 0.25) for a, b in zip(cuts, cuts[1:], strict=False)]
    merged, lse = merge_partials(parts)
    torch.testing.assert_close(merged, union, atol=ATOL, rtol=0)
    torch.testing.assert_close(lse, union_lse, atol=ATOL, rtol=0)
    # And the union itself is plain softmax attention.
    plain = torch.softmax(torch.einsum("hqd,htd->hqt", q, k) * 0.25, -1) @ v
    torch.testing.assert_close(union, plain, atol=ATOL, rtol=0)


def test_it_gives_no_mass_to_a_part_whose_keys_are_all_masked():
    gen = torch.Generator().manual_seed(4)
    q, k, v = (
        torch.randn(2, 3, 8, generator=gen),
        torch.randn(2, 10, 8, generator=gen),
        torch.randn(2, 10, 8, generator=gen),
    )
    empty = partial_attention(q, k, v, 0.3, allowed=torch.zeros(2, 3, 10, dtype=torch.bool))
    assert torch.isneginf(empty[1]).all() and (empty[0] == 0).all()
    full = partial_attention(q, k, v, 0.3)
    merged, _ = merge_partials([empty, full])
    torch.testing.assert_close(merged, full[0], atol=ATOL, rtol=0)


def test_it_attends_per_query_key_sets_like_a_masked_softmax():
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(3, 4, 8, generator=gen)
    k, v = torch.randn(3, 20, 8, generator=gen), torch.randn(3, 20, 8, generator=gen)
    idx = torch.stack([torch.randperm(20, generator=gen)[:6] for _ in range(12)]).view(3, 4, 6)  # (H, Q, M)
    heads = torch.arange(3)[:, None, None]
    out, _ = partial_attention(q, k[heads, idx], v[heads, idx], 0.5)
    allowed = torch.zeros(3, 4, 20, dtype=torch.bool).scatter_(-1, idx, True)
    expected, _ = partial_attention(q, k, v, 0.5, allowed)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_full_attention_over_a_fixed_context_equals_attention_over_the_concatenated_cache(random_context, user_step):
    fixed, _ = random_context
    query, key, value, user_mask = user_step(q_len=3, u_len=6)
    out = FullAttention(fixed).attend(1, query, key, value, user_mask, 0.125)
    all_k = torch.cat([fixed.keys[1][None], key], dim=2)  # (1, KVH, N + U, D)
    all_v = torch.cat([fixed.values[1][None], value], dim=2)
    mask = torch.cat([torch.zeros(1, 1, 3, fixed.n_tokens), user_mask], dim=-1)
    torch.testing.assert_close(out, attention_reference(query, all_k, all_v, mask, 0.125), atol=1e-4, rtol=0)


@pytest.mark.parametrize("n_rep", [1, 3])
def test_repeat_kv_gives_each_query_head_its_kv_head(n_rep):
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    out = repeat_kv(x, n_rep)
    assert out.shape == (2, 3 * n_rep, 4, 5)
    for h in range(3 * n_rep):
        assert torch.equal(out[:, h], x[:, h // n_rep])


def test_diagnostics_top_m_mass_recall_is_one_for_the_heaviest_keys_and_less_for_others():
    from workers.attention.base import Diagnostics

    gen = torch.Generator().manual_seed(5)
    q = torch.randn(4, 1, 16, generator=gen)  # (H, Q, D): 4 query heads over 2 KV heads
    k = torch.randn(2, 64, 16, generator=gen) * 2  # (KVH, N, D)
    v = torch.randn(2, 64, 16, generator=gen)
    user = partial_attention(q, k[:, :1] * 0, v[:, :1] * 0, 0.25)
    grouped = q.reshape(2, 2, 16)
    scores = torch.matmul(grouped, k.transpose(1, 2)).view(4, 1, 64)  # (H, Q, N)
    heaviest = torch.zeros(4, 1, 64, dtype=torch.bool).scatter_(-1, scores.topk(8, dim=-1).indices, True)
    lightest = torch.zeros(4, 1, 64, dtype=torch.bool).scatter_(-1, (-scores).topk(8, dim=-1).indices, True)
    out = torch.zeros(4, 1, 16)
    best, worst = Diagnostics(), Diagnostics()
    best.observe(q, k, v, user, heaviest, out, 0.25)
    worst.observe(q, k, v, user, lightest, out, 0.25)
    assert best.summary()["topk_mass_recall"] == pytest.approx(1.0, abs=1e-5)
    # The plain mass recall is below 1 even for the best 8 of 64 keys: the rest hold some mass.
    assert best.summary()["attn_recall"] < 1.0
    assert worst.summary()["topk_mass_recall"] < 0.2


def test_full_attention_over_a_half_precision_kv_is_close_to_but_not_the_float32_result(random_context, user_step):
    from workers.attention import get_backend

    fixed, _ = random_context
    query, key, value, mask = user_step()
    exact = get_backend("full").state(fixed).attend(0, query, key, value, mask, 0.125)
    rounded = get_backend("full", kv_precision="bfloat16").state(fixed).attend(0, query, key, value, mask, 0.125)
    assert not torch.equal(exact, rounded)
    torch.testing.assert_close(rounded, exact, atol=5e-2, rtol=0)
    assert fixed.keys[0].dtype == torch.float32  # the stored KV is untouched
    with pytest.raises(ValueError, match="kv_precision"):
        get_backend("full", kv_precision="int4")
