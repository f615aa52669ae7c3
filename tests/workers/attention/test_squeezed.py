"""Squeezed attention on random fixed contexts, against the plain reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexes.key_index import KeyCentroids
from workers.attention import get_backend
from workers.attention.reference import FullAttention, attention_reference
from workers.attention.squeezed import (
    SqueezedConfig,
    SqueezedIndex,
    _spread_term,
    build_index,
    calibrate,
    cluster_spread,
    cluster_value_means,
)

SCALE = 0.125


def _state(random_context, **options):
    fixed, queries = random_context
    backend = get_backend("squeezed", **options)
    index = backend.build(fixed, queries)
    return backend.state(fixed, index), fixed


def test_centroids_are_the_means_of_their_clusters_unnormalised_keys():
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(200, 16, generator=gen) * torch.rand(200, 1, generator=gen) * 5  # varied norms
    c = KeyCentroids.build(keys, 10, n_coarse=3)
    assert c.centroids.shape == (10, 16) and c.sizes.sum() == 200 and c.labels.shape == (200,)
    for i in np.flatnonzero(c.sizes):
        np.testing.assert_allclose(c.centroids[i], keys.numpy()[c.labels == i].mean(0), atol=1e-5)
    # The coarse level: size-weighted means of fine centroids = means of all their keys.
    for j in range(3):
        members = np.isin(c.labels, np.flatnonzero(c.parent == j))
        assert c.coarse_sizes[j] == members.sum()
        if members.any():
            np.testing.assert_allclose(c.coarse[j], keys.numpy()[members].mean(0), atol=1e-4)


def test_clusters_group_keys_by_direction_not_by_norm():
    # Two directions, each at very different norms: clustering the normalised keys finds the directions.
    a, b = torch.zeros(16), torch.zeros(16)
    a[0], b[1] = 1.0, 1.0
    keys = torch.cat(
        [a * s for s in torch.linspace(0.1, 10, 50)] + [b * s for s in torch.linspace(0.1, 10, 50)]
    ).view(100, 16)
    c = KeyCentroids.build(keys, 2)
    assert len(set(c.labels[:50])) == 1 and len(set(c.labels[50:])) == 1 and c.labels[0] != c.labels[50]


@pytest.mark.parametrize("hierarchical", [False, True])
@pytest.mark.parametrize("q_len", [1, 4])
def test_it_equals_full_attention_when_every_cluster_is_kept(random_context, user_step, hierarchical, q_len):
    state, fixed = _state(random_context, keep_fraction=1.0, hierarchical=hierarchical, sparse_prefill=True)
    query, key, value, mask = user_step(q_len=q_len)
    for layer in range(fixed.n_layers):
        out = state.attend(layer, query, key, value, mask, SCALE)
        expected = FullAttention(fixed).attend(layer, query, key, value, mask, SCALE)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert state.stats.fraction("decode" if q_len == 1 else "prefill") == pytest.approx(1.0)


@pytest.mark.parametrize(("calibration", "spread"), [("global", False), ("head", False), ("global", True)])
@pytest.mark.parametrize("q_len", [1, 2])  # 1: the batched decoding step; 2: the question's rows
def test_it_attends_exactly_to_the_keys_of_the_kept_clusters_plus_sinks_window_and_user_tokens(
        random_context, user_step, q_len, calibration, spread):
    state, fixed = _state(random_context, keep_fraction=0.1, window=16, sink=2, calibration=calibration,
                          sparse_prefill=True, spread=spread)
    query, key, value, mask = user_step(q_len=q_len, u_len=4)
    layer = 1
    out = state.attend(layer, query, key, value, mask, SCALE)
    # Rebuild the selection independently and run the reference with a mask over [fixed, user].
    index = state.index
    keep_c = state.select_clusters(layer, query[0], SCALE)  # (H, Q, C)
    assert keep_c.any() and not keep_c.all()
    allowed_fixed = torch.zeros(9, q_len, fixed.n_tokens, dtype=torch.bool)
    for h in range(9):
        labels = index.labels[layer][h // 3]
        for qi in range(q_len):
            kept = torch.isin(labels, torch.nonzero(keep_c[h, qi])[:, 0])
            allowed_fixed[h, qi, index.start:index.start + index.n_clustered] = kept
    allowed_fixed[..., :index.start] = True
    allowed_fixed[..., index.start + index.n_clustered:] = True
    allowed = torch.cat([allowed_fixed, (mask[0] == 0).expand(9, -1, -1)], dim=-1)  # (H, Q, N + U)
    all_k = torch.cat([fixed.keys[layer][None], key], dim=2)
    all_v = torch.cat([fixed.values[layer][None], value], dim=2)
    expected = torch.stack(
        [
            attention_reference(
                query[:, h : h + 1],
                all_k[:, h // 3 : h // 3 + 1],
                all_v[:, h // 3 : h // 3 + 1],
                torch.zeros(1, 1, q_len, allowed.shape[-1]).masked_fill(
                    ~allowed[h][None, None], float("-inf")
                ),
                SCALE,
            )[:, 0]
            for h in range(9)
        ],
        dim=1,
    )
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert 0 < state.stats.fraction("decode" if q_len == 1 else "prefill") < 1
    assert state.stats.fraction("decode" if q_len == 1 else "prefill") == pytest.approx(
        float(allowed_fixed.sum()) / allowed_fixed[..., 0].numel() / fixed.n_tokens)


def test_per_head_calibration_keeps_the_requested_share_in_every_head_on_the_proxies(random_context):
    fixed, queries = random_context
    backend = get_backend("squeezed", keep_fraction=0.2, window=8, sink=0, n_proxy=32, calibration="head")
    index = backend.build(fixed, queries)
    state = backend.state(fixed, index)
    for layer in range(fixed.n_layers):
        keep_c = state.select_clusters(layer, index.proxies[layer], SCALE)  # (H, P, C)
        sizes = index.log_sizes[layer].exp().repeat_interleave(3, 0)[:, None, :]  # (H, 1, C)
        per_head = (keep_c * sizes).sum((1, 2)) / (keep_c.shape[1] * index.n_clustered)  # (H,)
        assert torch.all((per_head > 0.15) & (per_head < 0.4)), per_head
    with pytest.raises(ValueError, match="calibration"):
        SqueezedConfig(calibration="per-token")


@pytest.mark.parametrize("hierarchical", [False, True])
def test_the_calibrated_threshold_keeps_about_the_requested_share_on_the_proxy_queries(random_context, hierarchical):
    fixed, queries = random_context
    config = SqueezedConfig(keep_fraction=0.1, window=8, sink=0, n_proxy=32, hierarchical=hierarchical)
    index = build_index(fixed, queries, config)
    state = get_backend("squeezed", **{k: getattr(config, k) for k in ("keep_fraction", "window", "sink", "n_proxy",
                                                                       "hierarchical")}).state(fixed, index)
    state.calibration = calibrate(index, config, SCALE, 3)
    kept = []
    for layer in range(fixed.n_layers):
        keep_c = state.select_clusters(layer, index.proxies[layer], SCALE)  # (H, P, C)
        sizes = index.log_sizes[layer].exp().repeat_interleave(3, 0)[:, None, :]  # (H, 1, C)
        kept.append(float((keep_c * sizes).sum() / (keep_c.shape[0] * keep_c.shape[1] * index.n_clustered)))
    assert np.mean(kept) == pytest.approx(0.1, abs=0.03)


def test_cluster_spread_is_the_mean_squared_deviation_of_its_keys(random_context):
    fixed, queries = random_context
    index = build_index(fixed, queries, SqueezedConfig(window=8, sink=2))
    spread = cluster_spread(index, fixed, 1)  # (KVH, C)
    for h in range(3):
        keys = fixed.keys[1][h, index.start:index.start + index.n_clustered]
        labels = index.labels[1][h]
        for c in torch.unique(labels)[:10]:
            members = keys[labels == c]
            expected = ((members - members.mean(0)) ** 2).mean()
            assert float(spread[h, c]) == pytest.approx(float(expected), rel=1e-4)


def test_the_spread_term_brings_cluster_scores_closer_to_their_keys_mean_attention(random_context):
    # A centroid's exp(s q.C) is below its keys' mean exp(s q.k) (Jensen): clusters whose keys
    # spread widely hide their strong keys. The second-order term is closer to the truth.
    fixed, queries = random_context
    index = build_index(fixed, queries, SqueezedConfig(window=8, sink=0))
    errors = {"plain": [], "spread": []}
    for layer in range(fixed.n_layers):
        q = queries[layer, ::3, :32]  # (KVH, P, D): one query head per KV head
        keys = fixed.keys[layer][:, index.start:index.start + index.n_clustered]  # (KVH, Nc, D)
        labels = index.labels[layer]
        logits = torch.einsum("gpd,gnd->gpn", q, keys) * SCALE
        n_clusters = index.centroids[layer].shape[1]
        sizes = torch.zeros(3, n_clusters).scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.float))
        mean_exp = torch.zeros(3, 32, n_clusters).scatter_add_(
            2, labels[:, None, :].expand_as(logits), logits.exp()) / sizes.clamp(min=1)[:, None, :]
        live = (sizes > 0)[:, None, :].expand_as(logits[..., :n_clusters])
        plain = torch.einsum("gpd,gcd->gpc", q, index.centroids[layer]) * SCALE
        corrected = plain + _spread_term(q, cluster_spread(index, fixed, layer), SCALE)
        for name, s in (("plain", plain), ("spread", corrected)):
            errors[name].append(float((s - mean_exp.log())[live].abs().mean()))
    assert np.mean(errors["spread"]) < 0.85 * np.mean(errors["plain"]), errors


def test_the_questions_rows_attend_every_key_unless_sparse_prefill_is_on(random_context, user_step):
    query, key, value, mask = user_step(q_len=4)
    dense, fixed = _state(random_context, keep_fraction=0.1)
    sparse, _ = _state(random_context, keep_fraction=0.1, sparse_prefill=True)
    torch.testing.assert_close(dense.attend(0, query, key, value, mask, SCALE),
                               FullAttention(fixed).attend(0, query, key, value, mask, SCALE), atol=1e-4, rtol=0)
    sparse.attend(0, query, key, value, mask, SCALE)
    assert sparse.stats.fraction("prefill") < 0.9 < dense.stats.fraction("prefill") == 1.0
    # Decoding steps use the centroid lookup either way.
    dense.attend(0, *user_step(q_len=1), SCALE)
    assert dense.stats.fraction("decode") < 0.9


def test_a_tighter_budget_attends_fewer_keys(random_context, user_step):
    query, key, value, mask = user_step()
    fractions = []
    for keep in (0.05, 0.2, 0.5):
        state, fixed = _state(random_context, keep_fraction=keep, window=8)
        for layer in range(fixed.n_layers):
            state.attend(layer, query, key, value, mask, SCALE)
        fractions.append(state.stats.fraction("decode"))
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]


def test_the_index_round_trips_through_tensors(random_context):
    fixed, queries = random_context
    config = SqueezedConfig(hierarchical=True)
    index = build_index(fixed, queries, config)
    again = SqueezedIndex.from_tensors(index.to_tensors(), fixed.n_layers)
    assert again.start == index.start and again.n_clustered == index.n_clustered
    for a, b in zip(index.labels + index.centroids + index.parent, again.labels + again.centroids + again.parent,
                    strict=True):
        assert torch.equal(a, b)


def test_it_refuses_nonsense_budgets():
    with pytest.raises(ValueError, match="keep_fraction"):
        SqueezedConfig(keep_fraction=0)
    with pytest.raises(ValueError, match="cluster_fraction"):
        SqueezedConfig(cluster_fraction=1.5)
    with pytest.raises(ValueError, match="spread"):
        SqueezedConfig(spread=True, hierarchical=True)


@pytest.mark.parametrize("q_len", [1, 2])  # 1: the batched decoding step; 2: the question's rows
def test_estimate_rest_adds_each_dropped_cluster_as_one_key_of_its_mass_and_mean_value(
    random_context, user_step, q_len
):
    options = dict(keep_fraction=0.1, window=16, sink=2, sparse_prefill=True)
    state, fixed = _state(random_context, estimate_rest=True, **options)
    query, key, value, mask = user_step(q_len=q_len, u_len=4)
    layer = 1
    out = state.attend(layer, query, key, value, mask, SCALE)
    # Plain computation: one softmax over [kept keys, static keys, one pseudo-key per dropped
    # cluster with logit s q.C_i + log N_i and value V_i, user keys].
    index = state.index
    keep_c = state.select_clusters(layer, query[0], SCALE)  # (H, Q, C)
    means = cluster_value_means(index, fixed, layer)  # (KVH, C, D)
    nc = index.n_clustered
    for h in range(9):
        g = h // 3
        labels = index.labels[layer][g]
        keys_c = fixed.keys[layer][g, index.start:index.start + nc]
        assert torch.allclose(
            means[g, int(labels[0])],
            fixed.values[layer][g, index.start : index.start + nc][labels == labels[0]].mean(0),
        )
        for qi in range(q_len):
            q = query[0, h, qi]
            kept = torch.isin(labels, torch.nonzero(keep_c[h, qi])[:, 0])
            static = torch.cat([torch.arange(index.start), torch.arange(index.start + nc, fixed.n_tokens)])
            exact_k = torch.cat([keys_c[kept], fixed.keys[layer][g, static]])
            exact_v = torch.cat(
                [fixed.values[layer][g, index.start : index.start + nc][kept], fixed.values[layer][g, static]]
            )
            dropped = torch.nonzero(~keep_c[h, qi] & torch.isfinite(index.log_sizes[layer][g]))[:, 0]
            pseudo_logit = index.centroids[layer][g, dropped] @ q * SCALE + index.log_sizes[layer][g, dropped]
            user_ok = mask[0, 0, qi] == 0
            logits = torch.cat([exact_k @ q * SCALE, pseudo_logit, (key[0, g] @ q * SCALE)[user_ok]])
            values = torch.cat([exact_v, means[g, dropped], value[0, g][user_ok]])
            expected = torch.softmax(logits, 0) @ values
            torch.testing.assert_close(out[0, h, qi], expected, atol=1e-4, rtol=0)
    # One mean value per cluster is read, counted with the keys.
    plain, _ = _state(random_context, **options)
    plain.attend(layer, query, key, value, mask, SCALE)
    phase = "decode" if q_len == 1 else "prefill"
    n_clusters = float(torch.isfinite(index.log_sizes[layer]).sum(-1).float().mean())
    assert state.stats.fraction(phase) == pytest.approx(plain.stats.fraction(phase) + n_clusters / fixed.n_tokens)


def test_estimate_rest_brings_the_output_closer_to_full_attention_than_dropping_the_rest(random_context, user_step):
    errors = {}
    for estimate in (False, True):
        state, fixed = _state(random_context, keep_fraction=0.05, window=8, sink=2, estimate_rest=estimate)
        err = []
        for seed in range(4):
            step = user_step(q_len=1, seed=seed)
            for layer in range(fixed.n_layers):
                out = state.attend(layer, *step, SCALE)
                full = FullAttention(fixed).attend(layer, *step, SCALE)
                err.append(float((out - full).norm() / full.norm()))
        errors[estimate] = np.mean(err)
    assert errors[True] < 0.5 * errors[False], errors


def test_estimate_rest_changes_nothing_when_every_cluster_is_kept(random_context, user_step):
    state, fixed = _state(random_context, keep_fraction=1.0, estimate_rest=True)
    step = user_step(q_len=1)
    torch.testing.assert_close(
        state.attend(0, *step, SCALE), FullAttention(fixed).attend(0, *step, SCALE), atol=1e-4, rtol=0
    )
