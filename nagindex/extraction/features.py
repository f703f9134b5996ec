"""NAG features: forward hooks -> per-document neuron impact -> per-layer top-K.

For each requested neuron type t and layer l, a forward hook reads the
projection output h (batch x seq x width) and computes SPEC section 1:

    impact[b, j] = sum_i m[b, i] * |h[b, i, j]| / max(sum_i m[b, i], 1e-6)

then keeps the indices of the K largest impacts (torch.topk, on the model's
device). What is never computed: the LM head (we call the base model), any
neuron type that was not requested, and anything after the last hook needed
(the hook of the last layer raises `_StopForward`). Hooks return nothing, so
the model's own outputs are unchanged.

Throughput: documents are tokenized once, sorted by token length and batched,
so a batch carries little padding; results are put back in input order.

Padding: upstream pads on the left (pad = eos when the tokenizer has none).
We pad on the RIGHT and run the model without an attention mask: in a causal
decoder a real token never attends to a later position, so every real token
is computed exactly as if its document were alone in the batch (same
positions, no masked-out keys), and the mask `m` of SPEC 1 still excludes the
padding from the mean. The features are therefore those of SPEC 1 for each
document on its own, independent of batch composition; it also lets sdpa use
its causal kernels (no mask to build) and avoids NaN from fully masked query
rows that some attention kernels produce at left-padded positions.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from nagindex.extraction.backbones import Backbone
from nagindex.errors import NagError
from nagindex.schemas import (
    BACKBONE_LOCATION_KEY,
    DEFAULT_MAX_LENGTH,
    DEFAULT_NEURON_TYPE,
    DEFAULT_TOP_K,
    MAX_LAYER_WIDTH,
    FeatureSpec,
    parse_neuron_types,
)

# Execution order of the projections inside one decoder layer: the forward
# can stop right after the last one needed in the last layer.
_EXECUTION_ORDER = ("att_q", "att_k", "att_v", "att_o", "fwd_up", "fwd_down")


class _StopForward(Exception):
    """Raised by the last hook needed: nothing after it is computed."""


# --------------------------------------------------------------------------
# The math, kept apart from hooks and batching
# --------------------------------------------------------------------------


def mean_abs_impact(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SPEC 1: mean over real tokens of |h|. h: (b, s, w); mask: (b, s) of 0/1 -> (b, w).

    Accumulates in fp32 (fp64 for fp64 models) whatever the model dtype.
    """
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    real = mask.bool().unsqueeze(-1)
    # where, not multiply: a padded position's output may be NaN (a query that
    # sees no key), and NaN * 0 is still NaN.
    total = torch.where(real, h.abs().to(acc), 0.0).sum(dim=1)
    return total / mask.to(acc).sum(dim=1, keepdim=True).clamp(min=1e-6)


def repeat_kv_heads(impact: torch.Tensor, kv_heads: int, n_rep: int) -> torch.Tensor:
    """(b, kv_heads*head_dim) -> (b, kv_heads*n_rep*head_dim): query head q reads kv head
    q // n_rep, the layout of transformers' `repeat_kv`."""
    if n_rep == 1:
        return impact
    b = impact.shape[0]
    return impact.view(b, kv_heads, -1).repeat_interleave(n_rep, dim=1).reshape(b, -1)


def top_k_indices(impact: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest impacts per row, in torch.topk order (SPEC 1)."""
    return torch.topk(impact, k, dim=-1).indices


# --------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------


@dataclass
class _Capture:
    """Per-batch state shared by the hooks."""

    top_k: int
    mask: torch.Tensor | None = None
    # (neuron type, layer) -> (b, K) indices on the device
    results: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)


@contextmanager
def capture_features(backbone: Backbone, neuron_types: Sequence[str], top_k: int, *, stop: bool = True) -> Iterator[_Capture]:
    """Register the hooks for `neuron_types` on every layer; yield the shared state.

    With `stop`, the hook of the last projection needed raises `_StopForward`
    (callers run the forward through `_run_forward`, which catches it).
    """
    types = [t for t in _EXECUTION_ORDER if t in neuron_types]
    layers = backbone.layers
    cfg = backbone.config
    kv_heads = max(1, getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", 1))
    n_rep = backbone.kv_repeat
    state = _Capture(top_k=top_k)
    last_layer = len(layers) - 1
    stop_module = backbone.adapter.points[types[-1]].module
    handles = []

    def make_hook(layer: int, types_here: list[str], stops: bool):
        points = [backbone.adapter.points[t] for t in types_here]

        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            for t, point in zip(types_here, points):
                h = point.read(out, cfg)
                impact = mean_abs_impact(h, state.mask)
                if point.repeat_kv:
                    impact = repeat_kv_heads(impact, kv_heads, n_rep)
                state.results[(t, layer)] = top_k_indices(impact, state.top_k)
            if stops:
                raise _StopForward
            return None  # never replace the module's output

        return hook

    try:
        for li, layer in enumerate(layers):
            by_module: dict[str, list[str]] = {}
            for t in types:
                by_module.setdefault(backbone.adapter.points[t].module, []).append(t)
            for path, types_here in by_module.items():
                stops = stop and li == last_layer and path == stop_module
                handles.append(layer.get_submodule(path).register_forward_hook(make_hook(li, types_here, stops)))
        yield state
    finally:
        for h in handles:
            h.remove()


def _run_forward(backbone: Backbone, input_ids: torch.Tensor) -> None:
    """Forward of the base model (no LM head) on a right-padded batch, causal mask only."""
    try:
        backbone.base_model(input_ids=input_ids, use_cache=False)
    except _StopForward:
        pass


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def feature_spec(backbone: Backbone, neuron_types: Sequence[str] | str = (DEFAULT_NEURON_TYPE,), top_k: int = DEFAULT_TOP_K, max_length: int = DEFAULT_MAX_LENGTH) -> FeatureSpec:
    """The FeatureSpec of features made with these settings; NagError for bad K / widths."""
    types = parse_neuron_types(neuron_types)
    if top_k < 1:
        raise NagError(f"top-k must be at least 1, got {top_k}")
    if max_length < 1:
        raise NagError(f"max-length must be at least 1, got {max_length}")
    widths = {t: backbone.width(t) for t in types}
    for t, w in widths.items():
        if w > MAX_LAYER_WIDTH:
            raise NagError(f"{t} has {w} neurons per layer; nagindex stores indices as uint16 (<= {MAX_LAYER_WIDTH})")
    return FeatureSpec(
        backbone=backbone.name,
        backbone_hash=backbone.weights_hash,
        num_layers=backbone.num_layers,
        top_k=int(top_k),
        neuron_types=types,
        layer_widths=widths,
        max_length=int(max_length),
        tokenizer=backbone.tokenizer_name,
        extra={BACKBONE_LOCATION_KEY: backbone.location} if backbone.location else {},
    )


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int | None, chunk: int = 4096) -> list[list[int]]:
    """Token ids without special tokens, truncated to max_length (SPEC 1 defaults)."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        part = list(texts[start : start + chunk])
        enc = tokenizer(
            part,
            add_special_tokens=False,
            truncation=max_length is not None,
            max_length=max_length,
            return_attention_mask=False,
        )
        ids.extend(enc["input_ids"])
    return ids


def count_tokens(tokenizer: Any, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
    """Token count of each text (no special tokens; full length unless max_length is given)."""
    return np.array([len(x) for x in tokenize(tokenizer, texts, max_length)], dtype=np.int64)


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length (longest first, so a
    batch that does not fit in memory fails at once, and the ETA is pessimistic)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def right_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, mask) of a batch, real tokens first, then pad_id (see the module docstring)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="doc", desc=desc, disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def extract_texts(
    backbone: Backbone,
    texts: Sequence[str],
    *,
    neuron_types: Sequence[str] | str = (DEFAULT_NEURON_TYPE,),
    top_k: int = DEFAULT_TOP_K,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """NAG features of `texts`: {neuron type: uint16 array (n, L*K)}, layer-major, input order."""
    spec = feature_spec(backbone, neuron_types, top_k, max_length)
    if batch_size < 1:
        raise NagError(f"batch size must be at least 1, got {batch_size}")
    types = spec.neuron_types
    n, L, K = len(texts), spec.num_layers, spec.top_k
    out = {t: np.zeros((n, L * K), dtype=np.uint16) for t in types}
    if n == 0:
        return out
    ids = tokenize(backbone.tokenizer, texts, max_length)
    lengths = np.array([len(x) for x in ids])
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        # No real token: every impact is 0 (SPEC's max(sum m, 1e-6)); topk of zeros.
        for t in types:
            row = torch.topk(torch.zeros(1, spec.layer_widths[t]), K).indices.reshape(-1)
            out[t][empty] = np.tile(row.numpy().astype(np.uint16), L)
    device = backbone.device
    pad_id = backbone.pad_token_id
    bar = _progress(n, progress, "extract")
    bar.update(len(empty))
    with torch.inference_mode(), capture_features(backbone, types, K) as state:
        for rows in length_batches(lengths, batch_size):
            rows = rows[lengths[rows] > 0]
            if len(rows) == 0:
                continue
            input_ids, mask = right_pad([ids[i] for i in rows], pad_id, device)
            state.mask = mask
            state.results.clear()
            _run_forward(backbone, input_ids)
            for t in types:
                missing = [l for l in range(L) if (t, l) not in state.results]
                if missing:
                    raise RuntimeError(f"hooks for {t} did not fire on layers {missing}")
                idx = torch.stack([state.results[(t, l)] for l in range(L)], dim=1)  # (b, L, K)
                out[t][rows] = idx.reshape(len(rows), L * K).to(torch.int32).cpu().numpy().astype(np.uint16)
            bar.update(len(rows))
    bar.close()
    return out
