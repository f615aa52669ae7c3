"""The backends on the real model over a cached fixed context, against plain (eager, uncached) forwards."""

from __future__ import annotations

import pytest
import torch

from indexes.kv_store import KVStore
from tests.workers.attention.handbook import HANDBOOK, QUESTION
from workers.attention import get_backend
from workers.attention.base import Diagnostics, attention_implementation, register
from workers.attention.fixed_context import (
    FixedContextConfig,
    answer,
    build_context,
    clear_process_cache,
    ensure_context,
    ensure_index,
    forward_user,
    max_positions,
    prepare_fixed_context,
    user_ids,
)

pytestmark = pytest.mark.slow

CONFIG = FixedContextConfig(prefill_chunk=128, query_samples=128, proxy_tokens=32)


@pytest.fixture(autouse=True)
def _fresh_process_cache():
    clear_process_cache()
    yield
    clear_process_cache()


def _ids(lm, question=QUESTION):
    prompt = build_context(lm.tokenizer, system_prompt="", context_text=HANDBOOK, max_positions=max_positions(lm),
                           config=CONFIG)
    return prompt, user_ids(lm.tokenizer, prompt, question)


def _eager_last_logits(lm, ids):
    with torch.inference_mode(), attention_implementation(lm.model, "eager"):
        return lm.model(input_ids=torch.tensor([ids])).logits[0, -1]


def _backend_logits(lm, store, backend, **options):
    prompt, u_ids = _ids(lm)
    chosen = get_backend(backend, **options)
    with torch.inference_mode():
        ctx = ensure_context(lm, store, prompt.context_ids, CONFIG).value
        state = chosen.state(ctx.fixed, ensure_index(chosen, ctx, store).value)
        from transformers import DynamicCache

        with attention_implementation(lm.model):
            logits = forward_user(lm, state, DynamicCache(config=lm.model.config), u_ids, len(prompt.context_ids))
    return logits, state


def test_the_registered_mask_function_keeps_prefill_causal(smollm2):
    ids = smollm2.tokenizer.encode("The capital of France is Paris. The capital of Italy is Rome. The capital of")
    register()
    with torch.inference_mode():
        expected = _eager_last_logits(smollm2, ids)
        with attention_implementation(smollm2.model):  # no attention_mask passed: the mask function builds it
            ours = smollm2.model(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours[-1], expected, atol=1e-4, rtol=0)
    with torch.inference_mode(), attention_implementation(smollm2.model, "eager"):
        # Causal: a prefix's logits do not depend on what follows it.
        prefix = smollm2.model(input_ids=torch.tensor([ids[:5]])).logits[0]
    torch.testing.assert_close(ours[:5], prefix, atol=1e-4, rtol=0)
    assert smollm2.model.config._attn_implementation != "parsimony"  # restored after the block


def test_full_attention_over_the_cached_kv_reproduces_the_uncached_model(smollm2, tmp_path):
    prompt, u_ids = _ids(smollm2)
    logits, state = _backend_logits(smollm2, KVStore(tmp_path), "full")
    torch.testing.assert_close(logits, _eager_last_logits(smollm2, prompt.context_ids + u_ids), atol=1e-4, rtol=0)
    assert state.stats.fraction("prefill") == 1.0


@pytest.mark.parametrize(("backend", "options"), [
    ("squeezed", {"keep_fraction": 1.0}),
    ("squeezed", {"keep_fraction": 1.0, "hierarchical": True}),
    ("retrieval", {"top_k": 100_000, "index": "aware", "sparse_prefill": True}),
])
def test_keep_everything_settings_equal_full_attention_on_the_real_model(smollm2, tmp_path, backend, options):
    prompt, u_ids = _ids(smollm2)
    logits, _ = _backend_logits(smollm2, KVStore(tmp_path), backend, **options)
    torch.testing.assert_close(logits, _eager_last_logits(smollm2, prompt.context_ids + u_ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("backend", "options", "max_keys"), [
    ("squeezed", {}, 0.35),  # 10% of the clustered keys + 4 sinks + a 64-token window, on a ~530-token context
    ("retrieval", {"top_k": 32}, 0.15),  # (4 sinks + 32 window + 32) keys of ~530
])
def test_the_sparse_backends_read_a_fraction_of_the_keys_and_stay_close_to_full_attention(
    smollm2, tmp_path, backend, options, max_keys
):
    diagnostics = Diagnostics()
    result = answer(smollm2, store=KVStore(tmp_path), system_prompt="", context_text=HANDBOOK, question=QUESTION,
                    backend=backend, options=options, max_output_tokens=6, wall_time_limit_s=120, config=CONFIG,
                    diagnostics=diagnostics)
    assert result.keys_fraction < max_keys
    summary = diagnostics.summary()
    assert summary["output_cosine"] > 0.9 and summary["attn_recall"] > 0.6
    if backend == "retrieval":
        assert summary["ann_recall"] > 0.6


def test_the_attention_aware_index_recalls_the_exact_top_k_on_real_keys(smollm2, tmp_path):
    """Recall of retrieved keys vs the exact top-k, for real decoding-time queries (the question's)."""
    store = KVStore(tmp_path)
    recalls = {}
    for kind in ("flat", "hnsw", "ivf", "aware"):
        diagnostics = Diagnostics(decode_only=False)
        _, state = _backend_logits(smollm2, store, "retrieval", index=kind, top_k=32)
        state.diagnostics = diagnostics
        answer(smollm2, store=store, system_prompt="", context_text=HANDBOOK, question=QUESTION, backend="retrieval",
               options={"index": kind, "top_k": 32}, max_output_tokens=2, wall_time_limit_s=120, config=CONFIG,
               diagnostics=diagnostics)
        recalls[kind] = diagnostics.summary()["ann_recall"]
    assert recalls["flat"] == 1.0
    assert recalls["aware"] > 0.6 and recalls["hnsw"] > 0.5, recalls


def test_preparing_a_fixed_context_is_idempotent(smollm2, tmp_path):
    store = KVStore(tmp_path)
    backends = [("squeezed", {}), ("retrieval", {"index": "hnsw"})]
    first = prepare_fixed_context(smollm2, store, system_prompt="", context_text=HANDBOOK, backends=backends,
                                  config=CONFIG)
    files = sorted(p.name for p in tmp_path.rglob("*.safetensors"))
    clear_process_cache()  # a fresh worker process: everything comes from the store
    second = prepare_fixed_context(smollm2, store, system_prompt="", context_text=HANDBOOK, backends=backends,
                                   config=CONFIG)
    assert first["kv_computed"] and all(i["computed"] for i in first["indexes"].values())
    assert not second["kv_computed"] and not any(i["computed"] for i in second["indexes"].values())
    assert (
        sorted(p.name for p in tmp_path.rglob("*.safetensors")) == files and len(files) == 4
    )  # KV, queries, 2 indexes
    assert second["context_tokens"] == first["context_tokens"] > 500


def test_the_fixed_context_is_billed_as_cached_once_it_is_in_the_store_and_the_answer_streams(smollm2, tmp_path):
    store = KVStore(tmp_path)
    pieces: list[str] = []
    cold = answer(smollm2, store=store, system_prompt="", context_text=HANDBOOK, question=QUESTION,
                  backend="squeezed", max_output_tokens=12, wall_time_limit_s=120, config=CONFIG)
    clear_process_cache()
    warm = answer(smollm2, store=store, system_prompt="", context_text=HANDBOOK, question=QUESTION,
                  backend="squeezed", max_output_tokens=12, wall_time_limit_s=120, config=CONFIG,
                  on_token=pieces.append)
    assert cold.cached_tokens == 0 and warm.cached_tokens == warm.context_tokens
    assert warm.prompt_tokens == cold.prompt_tokens == warm.context_tokens + warm.user_tokens
    assert warm.fresh_prompt_tokens == warm.user_tokens
    assert warm.text == cold.text and "".join(pieces) == warm.text and warm.completion_tokens >= 1
    assert warm.timings["context_s"] == 0.0 and cold.timings["context_s"] > 0


def test_full_attention_answers_like_plain_greedy_generation(smollm2, tmp_path):
    prompt, u_ids = _ids(smollm2)
    result = answer(smollm2, store=KVStore(tmp_path), system_prompt="", context_text=HANDBOOK, question=QUESTION,
                    backend="full", max_output_tokens=10, wall_time_limit_s=120, config=CONFIG)
    with torch.inference_mode():
        out = smollm2.model.generate(torch.tensor([prompt.context_ids + u_ids]), max_new_tokens=10, do_sample=False)
    expected = smollm2.tokenizer.decode(out[0, len(prompt.context_ids) + len(u_ids):], skip_special_tokens=True)
    assert result.text == expected
    assert "27" in result.text


def test_the_decoding_settings_apply_to_a_fixed_context_answer(smollm2, tmp_path):
    """A pipeline's decoding settings (a stop string here) reach the answer the attention backend decodes."""
    from workers.runtime.decoding import DecodingSettings

    store = KVStore(tmp_path)
    kwargs = {"store": store, "system_prompt": "", "context_text": HANDBOOK, "question": QUESTION, "backend": "full",
              "max_output_tokens": 16, "wall_time_limit_s": 120, "config": CONFIG}
    plain = answer(smollm2, **kwargs)
    stopped = answer(smollm2, **kwargs, decoding=DecodingSettings(stop=("27",)))
    assert "27" in plain.text and "27" not in stopped.text
    assert plain.text.startswith(stopped.text) and stopped.finish_reason == "stop"
    assert stopped.completion_tokens < plain.completion_tokens


def test_a_static_rope_scaling_extends_the_positions_and_names_the_model(model_cache_dir):
    from transformers import LlamaConfig

    from workers.runtime.local_lm import load_causal_lm, rope_scaled

    config, suffix = rope_scaled(LlamaConfig(max_position_embeddings=8192, rope_theta=1e5),
                                 {"rope_type": "yarn", "factor": 2, "attention_factor": 1.0})
    assert suffix == "+yarn2" and config.max_position_embeddings == 16384
    assert config.rope_parameters == {"rope_type": "yarn", "rope_theta": 1e5, "factor": 2.0, "attention_factor": 1.0,
                                      "original_max_position_embeddings": 8192}
    with pytest.raises(ValueError, match="dynamic"):
        rope_scaled(LlamaConfig(), {"rope_type": "dynamic", "factor": 2})
    lm = load_causal_lm("smollm2-135m-instruct", cache_dir=model_cache_dir, device="cpu",
                        rope_scaling={"rope_type": "yarn", "factor": 2, "attention_factor": 1.0})
    assert lm.name.endswith("+yarn2") and max_positions(lm) == 16384
