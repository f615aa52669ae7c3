"""Retrieval attention on random fixed contexts: exact merge, keep-everything equality, index round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexes.key_index import ANN_KINDS, build_key_ann, load_key_ann, recall_at_k
from workers.attention import get_backend
from workers.attention.base import Diagnostics
from workers.attention.reference import FullAttention, partial_attention, repeat_kv
from workers.attention.retrieval import RetrievalConfig, RetrievalIndex, load_index

SCALE = 0.125


def _state(random_context, **options):
    fixed, queries = random_context
    backend = get_backend("retrieval", **options)
    return backend.state(fixed, backend.build(fixed, queries)), fixed


@pytest.mark.parametrize("kind", ANN_KINDS)
@pytest.mark.parametrize("q_len", [1, 3])
def test_it_equals_full_attention_when_top_k_covers_every_key(random_context, user_step, kind, q_len):
    state, fixed = _state(random_context, index=kind, top_k=10_000, sparse_prefill=True)
    query, key, value, mask = user_step(q_len=q_len)
    for layer in range(fixed.n_layers):
        out = state.attend(layer, query, key, value, mask, SCALE)
        torch.testing.assert_close(out, FullAttention(fixed).attend(layer, query, key, value, mask, SCALE),
                                   atol=1e-4, rtol=0)


def test_it_merges_static_and_retrieved_keys_exactly_like_softmax_over_their_union(random_context, user_step):
    state, fixed = _state(random_context, index="flat", top_k=20, sink=3, window=10)
    query, key, value, mask = user_step(q_len=1, u_len=4)
    layer = 0
    out = state.attend(layer, query, key, value, mask, SCALE)
    n = fixed.n_tokens
    q = query[0]  # (H, 1, D)
    fk = repeat_kv(fixed.keys[layer][None], 3)[0]  # (H, N, D)
    fv = repeat_kv(fixed.values[layer][None], 3)[0]
    scores = torch.einsum("hqd,hnd->hqn", q, fk[:, 3:n - 10])  # exact top-20 of the middle
    top = scores.topk(20, dim=-1).indices + 3
    allowed = torch.zeros(9, 1, n, dtype=torch.bool).scatter_(-1, top, True)
    allowed[..., :3] = True
    allowed[..., n - 10:] = True
    all_k = torch.cat([fk, repeat_kv(key, 3)[0]], dim=1)
    all_v = torch.cat([fv, repeat_kv(value, 3)[0]], dim=1)
    union = torch.cat([allowed, (mask[0] == 0).expand(9, -1, -1)], dim=-1)
    expected, _ = partial_attention(q, all_k, all_v, SCALE, union)  # one softmax over the union
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=0)
    assert state.stats.fraction("decode") == pytest.approx((3 + 10 + 20) / n)


def test_the_users_tokens_attend_every_key_unless_sparse_prefill_is_on(random_context, user_step):
    query, key, value, mask = user_step(q_len=4)
    dense, fixed = _state(random_context, index="flat", top_k=8)
    sparse, _ = _state(random_context, index="flat", top_k=8, sparse_prefill=True)
    torch.testing.assert_close(dense.attend(0, query, key, value, mask, SCALE),
                               FullAttention(fixed).attend(0, query, key, value, mask, SCALE), atol=1e-4, rtol=0)
    sparse.attend(0, query, key, value, mask, SCALE)
    assert sparse.stats.fraction("prefill") < 0.2 < dense.stats.fraction("prefill") == 1.0


def test_the_first_layers_can_stay_dense(random_context, user_step):
    state, fixed = _state(random_context, index="flat", top_k=8, dense_layers=1)
    query, key, value, mask = user_step()
    torch.testing.assert_close(state.attend(0, query, key, value, mask, SCALE),
                               FullAttention(fixed).attend(0, query, key, value, mask, SCALE), atol=1e-4, rtol=0)
    state.attend(1, query, key, value, mask, SCALE)
    assert 0.5 < state.stats.fraction("decode") < 0.6  # (1 + (4 + 32 + 8) / 300) / 2


@pytest.mark.parametrize("allocation", ["uniform", "calibrated"])
@pytest.mark.parametrize("kind", ANN_KINDS)
def test_the_batched_decoding_step_equals_the_general_path(random_context, user_step, kind, allocation):
    # Diagnostics route a decoding step through the general (per-query key sets) path.
    fixed, queries = random_context
    backend = get_backend("retrieval", index=kind, top_k=12, sink=3, window=10, allocation=allocation)
    index = backend.build(fixed, queries)
    fast, general = backend.state(fixed, index), backend.state(fixed, index, Diagnostics())
    query, key, value, mask = user_step(q_len=1, u_len=4)
    for layer in range(fixed.n_layers):
        torch.testing.assert_close(fast.attend(layer, query, key, value, mask, SCALE),
                                   general.attend(layer, query, key, value, mask, SCALE), atol=1e-5, rtol=0)
    assert fast.stats.fraction("decode") == pytest.approx(general.stats.fraction("decode"))


def test_calibrated_allocation_splits_the_same_total_by_the_proxies_attention(random_context, user_step):
    fixed, queries = random_context
    backend = get_backend("retrieval", index="flat", top_k=12, sink=3, window=10, allocation="calibrated")
    index = backend.build(fixed, queries)
    budgets = index.head_budgets(fixed, 12, SCALE)  # (L, H)
    assert budgets.shape == (2, 9) and budgets.min() >= 1 and len(set(budgets.flatten().tolist())) > 1
    assert budgets.float().mean() == pytest.approx(12, abs=1)
    state = backend.state(fixed, index)
    query, key, value, mask = user_step(q_len=1)
    for layer in range(fixed.n_layers):
        state.attend(layer, query, key, value, mask, SCALE)
    assert state.stats.fraction("decode") == pytest.approx((3 + 10 + float(budgets.float().mean())) / fixed.n_tokens)
    again = load_index(index.to_tensors(), fixed, backend.config)
    assert torch.equal(again.head_budgets(fixed, 12, SCALE), budgets)
    with pytest.raises(ValueError, match="allocation"):
        RetrievalConfig(allocation="greedy")


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "aware"])
def test_the_ann_indexes_find_most_of_the_exact_top_k(random_context, kind):
    fixed, queries = random_context
    keys = fixed.keys[0][0]  # (N, D)
    group_queries = queries[0, :3].reshape(-1, 64)  # the query heads that read KV head 0
    test_q = group_queries[::7].numpy()  # in-distribution queries (a subset of the prefill sample)
    exact = build_key_ann("flat", keys).search(test_q, 16)
    ann = build_key_ann(kind, keys, queries=group_queries, params={"nprobe": 8, "aware_nprobe": 4})
    assert recall_at_k(ann.search(test_q, 16), exact) >= 0.8
    assert recall_at_k(exact, exact) == 1.0


@pytest.mark.parametrize("kind", ANN_KINDS)
def test_each_index_kind_round_trips_through_plain_arrays(random_context, kind):
    fixed, queries = random_context
    keys = fixed.keys[1][2]
    params = RetrievalConfig(index=kind).params()
    ann = build_key_ann(kind, keys, queries=queries[1, 6:9].reshape(-1, 64), params=params)
    again = load_key_ann(kind, {k: np.array(v) for k, v in ann.to_arrays().items()}, keys, params)
    x = torch.randn(5, 64).numpy()
    assert np.array_equal(ann.search(x, 10), again.search(x, 10))


def test_the_stored_index_loads_for_the_same_context_and_bounds(random_context):
    fixed, queries = random_context
    config = RetrievalConfig(index="hnsw", sink=2, window=5)
    index = get_backend("retrieval", index="hnsw", sink=2, window=5).build(fixed, queries)
    again = load_index(index.to_tensors(), fixed, config)
    assert isinstance(again, RetrievalIndex) and (again.sink, again.window) == (2, 5)
    with pytest.raises(AssertionError, match="other bounds"):
        load_index(index.to_tensors(), fixed, RetrievalConfig(index="hnsw", sink=4, window=5))


def test_it_refuses_unknown_index_kinds():
    with pytest.raises(ValueError, match="valid: flat, hnsw, ivf, aware"):
        RetrievalConfig(index="lsh")
