"""Interpretability: which neurons a target relies on, and why a document scored as it did.

Three groups, each a set of small pure functions plus a thin I/O layer:

- Deactivation (SPEC 4): the per-layer most frequent target neurons
  ("keys"), saved as JSON, zeroed in a model's up projection, and tested by
  the mean token loss of target and control texts against the same number of
  random neurons zeroed.
- Explanation: one document's per-layer contribution to its similarity, the
  neurons it shares with the target profile, and its nearest neighbours
  among the selected documents.
- The numbers behind the pictures of `plots.py`: distances per label with
  the budget cut, per-layer mean contribution (target vs pool), and a 2-D
  map of NAG features (PCA by SVD; t-SNE where scikit-learn is installed).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .errors import NagError
from .schemas import DEFAULT_NEURON_TYPE

# ===========================================================================
# Deactivation keys (SPEC 4)
# ===========================================================================

DEFAULT_PER_LAYER = 20
KEYS_META = "_meta"


class DeactivationKeys(dict):
    """``{layer: [neuron, ...]}`` plus what the keys were made for.

    A plain dict of the keys (so ``apply_deactivation(model, keys)`` also
    accepts a hand-written dict); the attributes, when known, let
    `apply_deactivation` refuse a model of another shape instead of silently
    zeroing neurons that mean something else there.
    """

    def __init__(
        self,
        keys: Mapping[int, Sequence[int]] = (),
        *,
        backbone: str = "",
        num_layers: int | None = None,
        width: int | None = None,
        neuron_type: str = DEFAULT_NEURON_TYPE,
        per_layer: int | None = None,
    ) -> None:
        super().__init__({int(l): [int(n) for n in ns] for l, ns in dict(keys).items()})
        self.backbone = backbone
        self.num_layers = num_layers
        self.width = width
        self.neuron_type = neuron_type
        self.per_layer = per_layer

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.values())

    def meta(self) -> dict:
        return {
            "backbone": self.backbone,
            "num_layers": self.num_layers,
            "width": self.width,
            "neuron_type": self.neuron_type,
            "per_layer": self.per_layer,
        }


def layer_counts(target_features: np.ndarray, num_layers: int, top_k: int, width: int | None = None) -> np.ndarray:
    """counts[l, j] = how often neuron j appears among layer l's entries of the target NAGs."""
    feats = _as_features(target_features, num_layers, top_k)
    if width is None:
        width = int(feats.max()) + 1 if feats.size else 1
    elif feats.size and int(feats.max()) >= width:
        raise NagError(f"target features hold neuron {int(feats.max())}, beyond the layer width {width}")
    per_layer = feats.reshape(len(feats), num_layers, top_k).astype(np.int64)
    # One bincount over (layer, neuron) pairs flattened to layer*width + neuron.
    flat = (per_layer + (np.arange(num_layers, dtype=np.int64) * width)[None, :, None]).ravel()
    return np.bincount(flat, minlength=num_layers * width).reshape(num_layers, width)


def deactivation_keys(
    target_features: np.ndarray,
    num_layers: int,
    top_k: int,
    per_layer: int = DEFAULT_PER_LAYER,
    *,
    width: int | None = None,
) -> dict[int, list[int]]:
    """Per layer, the `per_layer` most frequent target neurons (SPEC 4).

    Order: descending count, ties by ascending neuron index. Neurons that no
    target uses are never keys, so a layer may have fewer than `per_layer`.
    """
    if per_layer < 1:
        raise NagError(f"--per-layer must be at least 1, got {per_layer}")
    counts = layer_counts(target_features, num_layers, top_k, width)
    keys: dict[int, list[int]] = {}
    for layer in range(num_layers):
        c = counts[layer]
        used = np.flatnonzero(c)
        order = used[np.lexsort((used, -c[used]))]
        keys[layer] = [int(j) for j in order[:per_layer]]
    return keys


def _as_features(target_features: np.ndarray, num_layers: int, top_k: int) -> np.ndarray:
    feats = np.asarray(target_features)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise NagError("the target is empty: no target document has NAG features")
    if feats.shape[1] != num_layers * top_k:
        raise NagError(
            f"target features have {feats.shape[1]} entries per document, expected "
            f"L*K = {num_layers}*{top_k} = {num_layers * top_k}"
        )
    return feats


def save_keys(path: str | os.PathLike, keys: Mapping[int, Sequence[int]], **meta: Any) -> Path:
    """Write keys as JSON ``{"<layer>": [neuron, ...], ..., "_meta": {...}}``, atomically.

    `meta` (backbone, num_layers, width, neuron_type, per_layer) overrides
    what a `DeactivationKeys` already carries.
    """
    info = keys.meta() if isinstance(keys, DeactivationKeys) else {}
    info.update({k: v for k, v in meta.items() if v is not None})
    # One line per layer: a keys file stays readable (and diffable) for 30+ layers.
    lines = [f"{json.dumps(str(int(l)))}: {json.dumps([int(n) for n in ns])}" for l, ns in sorted(keys.items())]
    lines.append(f"{json.dumps(KEYS_META)}: {json.dumps(info, sort_keys=True)}")
    path = Path(path)
    _atomic_write_text(path, "{\n " + ",\n ".join(lines) + "\n}\n")
    return path


def load_keys(path: str | os.PathLike) -> DeactivationKeys:
    """Read keys written by `save_keys` (or upstream's plain ``{layer: [neuron, ...]}``)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise NagError(f"keys file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise NagError(f"cannot read keys file {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise NagError(f"keys file {path} is not a JSON object {{layer: [neuron, ...]}}")
    meta = doc.pop(KEYS_META, {}) or {}
    try:
        keys = {int(l): [int(n) for n in ns] for l, ns in doc.items()}
    except (TypeError, ValueError):
        raise NagError(f"keys file {path} is not of the form {{layer: [neuron, ...]}}") from None
    if any(l < 0 for l in keys) or any(n < 0 for ns in keys.values() for n in ns):
        raise NagError(f"keys file {path} holds a negative layer or neuron index")
    return DeactivationKeys(
        keys,
        backbone=meta.get("backbone", ""),
        num_layers=meta.get("num_layers"),
        width=meta.get("width"),
        neuron_type=meta.get("neuron_type", DEFAULT_NEURON_TYPE),
        per_layer=meta.get("per_layer"),
    )


def random_keys_like(keys: Mapping[int, Sequence[int]], width: int, seed: int) -> dict[int, list[int]]:
    """As many random neurons per layer as `keys` has, never one of the keys themselves.

    The control of the deactivation test: same layers, same counts, so any
    difference in loss is due to which neurons were chosen.
    """
    rng = np.random.default_rng(seed)
    out: dict[int, list[int]] = {}
    for layer, neurons in sorted(keys.items()):
        pool = np.setdiff1d(np.arange(width), np.asarray(neurons, dtype=np.int64))
        if len(neurons) > len(pool):
            raise NagError(f"layer {layer} has {len(neurons)} keys, more than {width} - keys neurons to draw from")
        out[layer] = sorted(int(j) for j in rng.choice(pool, size=len(neurons), replace=False))
    return out


# ===========================================================================
# Zeroing neurons in a model
# ===========================================================================


@dataclass(frozen=True)
class UpProjection:
    """The up projection of one layer and the axis of its weight that indexes neurons.

    `nn.Linear` stores (out, in): neuron j is row j. GPT-2's `Conv1D` stores
    (in, out): neuron j is column j.
    """

    module: Any
    axis: int

    @property
    def width(self) -> int:
        return int(self.module.weight.shape[self.axis])


def up_projections(model: Any, neuron_type: str = DEFAULT_NEURON_TYPE) -> list[UpProjection]:
    """The up projection of every decoder layer of `model` (a HF causal LM or a Backbone)."""
    from .backbones import Backbone, _text_config, adapter_for

    if neuron_type != "fwd_up":
        raise NagError(f"deactivation zeroes MLP up-projection neurons (fwd_up), not {neuron_type}")
    if isinstance(model, Backbone):
        adapter, base = model.adapter, model.base_model
    else:
        adapter = adapter_for(_text_config(model.config))
        base = getattr(model, "base_model", model)
    path = adapter.points["fwd_up"].module
    out = []
    for layer in adapter.layers(base):
        module = layer.get_submodule(path)
        # Conv1D (GPT-2) keeps the weight as (in, out); everything else here is nn.Linear.
        axis = 1 if type(module).__name__ == "Conv1D" else 0
        out.append(UpProjection(module, axis))
    return out


def check_keys_fit(keys: Mapping[int, Sequence[int]], projections: Sequence[UpProjection]) -> None:
    """NagError when the keys were made for a model of another shape."""
    num_layers = len(projections)
    width = projections[0].width if projections else 0
    if isinstance(keys, DeactivationKeys):
        if keys.num_layers is not None and keys.num_layers != num_layers:
            raise NagError(
                f"keys were made for a model with {keys.num_layers} layers ({keys.backbone or 'unknown'}), "
                f"this model has {num_layers}"
            )
        if keys.width is not None and keys.width != width:
            raise NagError(
                f"keys were made for a model with {keys.width} up-projection neurons per layer "
                f"({keys.backbone or 'unknown'}), this model has {width}"
            )
    for layer, neurons in keys.items():
        if not 0 <= int(layer) < num_layers:
            raise NagError(f"keys name layer {layer}, but this model has layers 0..{num_layers - 1}")
        bad = [n for n in neurons if not 0 <= int(n) < projections[int(layer)].width]
        if bad:
            raise NagError(
                f"keys name neuron {bad[0]} of layer {layer}, but this model's layers have "
                f"{projections[int(layer)].width} up-projection neurons"
            )


def _neuron_tensors(proj: UpProjection) -> list[tuple[Any, int]]:
    """(tensor, axis) pairs that hold a neuron of this projection: the weight, and the bias where there is one
    (with a bias left in place a 'zeroed' neuron would still output its bias)."""
    out = [(proj.module.weight, proj.axis)]
    bias = getattr(proj.module, "bias", None)
    if bias is not None:
        out.append((bias, 0))
    return out


def apply_deactivation(model: Any, keys: Mapping[int, Sequence[int]]) -> int:
    """Zero the up-projection weights (and bias) of the keyed neurons, in place.

    Works for any architecture of the backbone adapter table (Llama-style
    `up_proj` rows, GPT-2 `c_fc` columns, ...). Returns the number of
    distinct neurons zeroed.
    """
    import torch

    count = 0
    with torch.no_grad():
        for index, tensors in _keyed_tensors(model, keys):
            for tensor, axis in tensors:
                tensor.index_fill_(axis, index, 0.0)
            count += len(index)
    return count


def _keyed_tensors(model: Any, keys: Mapping[int, Sequence[int]]):
    """Per keyed layer: the neuron indices (a device tensor) and the (tensor, axis) pairs holding them."""
    import torch

    projections = up_projections(model)
    check_keys_fit(keys, projections)
    for layer, neurons in keys.items():
        idx = sorted({int(n) for n in neurons})
        if not idx:
            continue
        proj = projections[int(layer)]
        yield torch.tensor(idx, dtype=torch.long, device=proj.module.weight.device), list(_neuron_tensors(proj))


@contextmanager
def deactivated(model: Any, keys: Mapping[int, Sequence[int]]) -> Iterator[int]:
    """Zero the keyed neurons for the duration of a `with` block, then restore them exactly."""
    import torch

    saved = []
    for index, tensors in _keyed_tensors(model, keys):
        for tensor, axis in tensors:
            saved.append((tensor, axis, index, tensor.detach().index_select(axis, index).clone()))
    try:
        yield apply_deactivation(model, keys)
    finally:
        with torch.no_grad():
            for tensor, axis, index, values in saved:
                tensor.index_copy_(axis, index, values)


def total_mlp_neurons(model: Any) -> int:
    """All up-projection neurons of the model (the denominator of 'share zeroed')."""
    return sum(p.width for p in up_projections(model))


# ===========================================================================
# The deactivation test: mean token loss
# ===========================================================================


def mean_token_loss(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 120,
    batch_size: int = 16,
    progress: Any = None,
) -> float:
    """Mean next-token cross-entropy over every predicted token of `texts` (token-weighted).

    Texts are tokenized as extraction does (no special tokens, truncated to
    `max_length`) and right-padded; padding is masked out of the loss.
    """
    import torch

    from .extraction import length_batches, tokenize

    ids = [x for x in tokenize(tokenizer, list(texts), max_length) if len(x) >= 2]
    if not ids:
        raise NagError("no text with at least 2 tokens to measure a loss on")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    lengths = np.array([len(x) for x in ids])
    with torch.inference_mode():
        for rows in length_batches(lengths, batch_size):
            width = int(lengths[rows].max())
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                input_ids[i, : lengths[r]] = torch.tensor(ids[r])
                mask[i, : lengths[r]] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            target = input_ids[:, 1:]
            keep = mask[:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
            total += float(nll)
            tokens += int(keep.sum())
            if progress is not None:
                progress.update(len(rows))
    return total / tokens


@dataclass
class DeactivationReport:
    """Losses of the deactivation test and their relative changes."""

    zeroed: int
    total_neurons: int
    intact: dict[str, float]
    keys: dict[str, float]
    random: list[dict[str, float]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    @property
    def share_zeroed(self) -> float:
        return self.zeroed / self.total_neurons

    def relative(self, losses: Mapping[str, float]) -> dict[str, float]:
        return {k: (losses[k] - self.intact[k]) / self.intact[k] for k in self.intact}

    @property
    def random_mean(self) -> dict[str, float]:
        return {k: float(np.mean([r[k] for r in self.random])) for k in self.intact} if self.random else {}

    def to_dict(self) -> dict:
        return {
            "zeroed": self.zeroed,
            "total_neurons": self.total_neurons,
            "share_zeroed": self.share_zeroed,
            "intact": self.intact,
            "keys": self.keys,
            "keys_relative": self.relative(self.keys),
            "random": self.random,
            "random_seeds": self.seeds,
            "random_mean": self.random_mean,
            "random_relative": self.relative(self.random_mean) if self.random else {},
        }


def deactivation_eval(
    backbone: Any,
    keys: Mapping[int, Sequence[int]],
    target_texts: Sequence[str],
    control_texts: Sequence[str],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    max_length: int = 120,
    batch_size: int = 16,
    progress: bool = False,
) -> DeactivationReport:
    """Mean token loss of target and control texts: intact, keys zeroed, random neurons zeroed.

    The model is restored after each condition, so `backbone` is unchanged on return.
    """
    from tqdm.auto import tqdm

    if not len(target_texts):
        raise NagError("the target is empty: no target text to evaluate")
    if not len(control_texts):
        raise NagError("the control is empty: no control text to evaluate")
    model, tok = backbone.model, backbone.tokenizer
    projections = up_projections(backbone)
    check_keys_fit(keys, projections)
    width = projections[0].width
    sets = {"target": list(target_texts), "control": list(control_texts)}
    conditions = 2 + len(seeds)
    bar = tqdm(total=conditions * sum(len(v) for v in sets.values()), unit="text", desc="deactivate eval",
               disable=not progress, dynamic_ncols=True)

    def losses() -> dict[str, float]:
        return {
            name: mean_token_loss(model, tok, texts, max_length=max_length, batch_size=batch_size, progress=bar)
            for name, texts in sets.items()
        }

    try:
        intact = losses()
        with deactivated(backbone, keys) as zeroed:
            keyed = losses()
        randoms = []
        for seed in seeds:
            with deactivated(backbone, random_keys_like(keys, width, seed)):
                randoms.append(losses())
    finally:
        bar.close()
    return DeactivationReport(
        zeroed=zeroed,
        total_neurons=sum(p.width for p in projections),
        intact=intact,
        keys=keyed,
        random=randoms,
        seeds=list(seeds),
    )


# ===========================================================================
# Small I/O helpers
# ===========================================================================


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ===========================================================================
# Scores, layer contributions and the budget cut (pure math on a pool view)
# ===========================================================================


@dataclass
class PoolView:
    """The live rows of an index, as analysis needs them (row order = index order)."""

    features: np.ndarray  # uint16 (n, L*K)
    docids: np.ndarray  # object (n,)
    token_num: np.ndarray  # int64 (n,), missing counted as 0
    labels: np.ndarray  # object (n,), "(none)" where the dataset label is missing
    num_layers: int
    top_k: int
    width: int

    def __len__(self) -> int:
        return len(self.docids)

    def row_of(self, docid: str) -> int:
        hits = np.flatnonzero(self.docids == docid)
        if not len(hits):
            raise NagError(f"unknown docid {docid!r}: no live document of this index has it")
        return int(hits[0])


NO_LABEL = "(none)"


def layer_contributions(features: np.ndarray, weights: np.ndarray, top_k: int) -> np.ndarray:
    """contrib[d, l] = sum over r < K of W[l, feature_d[l*K + r]]: integer, exact.

    Summed over layers it is the document's integer score (similarity * D).
    """
    feats = np.asarray(features)
    n = len(feats)
    L = weights.shape[0]
    if feats.shape[1] != L * top_k:
        raise NagError(f"features have {feats.shape[1]} entries, the profile expects L*K = {L}*{top_k}")
    layer_of = np.repeat(np.arange(L), top_k)
    gathered = weights[layer_of[None, :], feats.astype(np.int64)]  # (n, L*K)
    return gathered.reshape(n, L, top_k).sum(axis=2, dtype=np.int64)


# Rows per block when a whole pool is reduced: bounds the (rows, L*K) int64
# gather to ~300 MB whatever the pool size.
BLOCK_ROWS = 65536


def document_scores(features: np.ndarray, weights: np.ndarray, top_k: int) -> np.ndarray:
    """Integer score of every row (sum of its layer contributions), computed block by block."""
    feats = features
    out = np.empty(len(feats), dtype=np.int64)
    for start in range(0, len(feats), BLOCK_ROWS):
        out[start : start + BLOCK_ROWS] = layer_contributions(feats[start : start + BLOCK_ROWS], weights, top_k).sum(axis=1)
    return out


def mean_layer_contributions(features: np.ndarray, weights: np.ndarray, top_k: int) -> np.ndarray:
    """Mean over rows of each layer's contribution (float), computed block by block."""
    total = np.zeros(weights.shape[0], dtype=np.float64)
    for start in range(0, len(features), BLOCK_ROWS):
        total += layer_contributions(features[start : start + BLOCK_ROWS], weights, top_k).sum(axis=0)
    return total / max(len(features), 1)


def per_layer_denominator(denominator: int, num_layers: int) -> int:
    """D / L: the integer that makes one layer's contribution a weight sum in [0, 1].

    With power 1, D = L*n*K; in fixed point, D = L*2**32: both divisible by L.
    """
    return int(denominator) // int(num_layers)


def ranking(scores: np.ndarray, docids: np.ndarray) -> np.ndarray:
    """Row order of the ranking: score descending (= nag_distance ascending), docid ascending."""
    from .selection import rank_order

    return rank_order(np.asarray(scores, dtype=np.int64), np.asarray(docids, dtype=object))


def budget_count(order: np.ndarray, token_num: np.ndarray, fraction: float) -> int:
    """How many rows of `order` the token budget keeps (SPEC 3): the longest prefix whose
    cumulative token_num <= floor(total * fraction), at least one row."""
    from .selection import check_fraction, select_budget

    check_fraction(fraction)
    return select_budget(np.asarray(token_num, dtype=np.int64)[order], fraction)


def score_distribution(pool: PoolView, weights: np.ndarray, denominator: int, fraction: float = 0.2) -> dict:
    """The numbers behind `nag plot scores`: every live document's nag_distance, grouped by
    `dataset` label, and the distance at the token-budget cut."""
    scores = document_scores(pool.features, weights, pool.top_k)
    distance = 1.0 - scores / float(denominator)
    order = ranking(scores, pool.docids)
    kept = budget_count(order, pool.token_num, fraction)
    selected = np.zeros(len(pool), dtype=bool)
    selected[order[:kept]] = True
    by_label = {str(lab): distance[pool.labels == lab] for lab in sorted(set(pool.labels.tolist()))}
    return {
        "scores": scores,
        "distance": distance,
        "selected": selected,
        "cut_distance": float(distance[order[kept - 1]]) if kept else float("nan"),
        "fraction": fraction,
        "by_label": by_label,
        "selected_by_label": {lab: int(selected[pool.labels == lab].sum()) for lab in by_label},
    }


def layer_means(
    target_features: np.ndarray, pool: PoolView, weights: np.ndarray, denominator: int
) -> dict[str, np.ndarray]:
    """The numbers behind `nag plot layers`: per-layer mean similarity (weight sum in [0, 1])
    of the target documents and of the pool documents."""
    per = per_layer_denominator(denominator, pool.num_layers)
    target = mean_layer_contributions(np.asarray(target_features), weights, pool.top_k) / per
    pooled = mean_layer_contributions(pool.features, weights, pool.top_k) / per
    return {"target": target, "pool": pooled, "layers": np.arange(pool.num_layers)}


# ===========================================================================
# explain
# ===========================================================================


def nag_overlap(features: np.ndarray, one: np.ndarray, num_layers: int, top_k: int, width: int) -> np.ndarray:
    """Share of (layer, neuron) pairs that each row of `features` has in common with `one`:
    |A & B| / (L*K), 1 for identical NAGs, 0 for disjoint ones."""
    mask = np.zeros((num_layers, width), dtype=bool)
    layer_of = np.repeat(np.arange(num_layers), top_k)
    mask[layer_of, np.asarray(one, dtype=np.int64)] = True
    hits = mask[layer_of[None, :], np.asarray(features, dtype=np.int64)]
    return hits.sum(axis=1) / float(num_layers * top_k)


def explain_row(
    pool: PoolView,
    row: int,
    weights: np.ndarray,
    denominator: int,
    *,
    fraction: float = 0.2,
    neighbours: int = 5,
) -> dict:
    """Why pool row `row` scored as it did (see `explain`)."""
    L, K = pool.num_layers, pool.top_k
    scores = document_scores(pool.features, weights, K)
    contrib = layer_contributions(pool.features[row : row + 1], weights, K)[0]
    order = ranking(scores, pool.docids)
    position = np.empty(len(pool), dtype=np.int64)
    position[order] = np.arange(len(pool))
    kept = budget_count(order, pool.token_num, fraction)
    per = per_layer_denominator(denominator, L)
    feat = pool.features[row].astype(np.int64)
    layers = []
    for l in range(L):
        neurons = feat[l * K : (l + 1) * K]
        shared = [
            {"neuron": int(j), "rank_in_doc": r, "weight": float(weights[l, j]) / per, "weight_int": int(weights[l, j])}
            for r, j in enumerate(neurons)
            if weights[l, j] > 0
        ]
        layers.append({
            "layer": l,
            "contribution": int(contrib[l]) / float(denominator),
            "layer_similarity": int(contrib[l]) / float(per),
            "shared": sorted(shared, key=lambda s: (-s["weight_int"], s["neuron"])),
        })
    selected_rows = order[:kept]
    others = selected_rows[selected_rows != row]
    overlap = nag_overlap(pool.features[others], feat, L, K, pool.width)
    # Most similar NAG first; equal overlaps keep the ranking order.
    nearest = others[np.argsort(-overlap, kind="stable")][:neighbours]
    ov = dict(zip(others.tolist(), overlap.tolist()))
    return {
        "docid": str(pool.docids[row]),
        "label": str(pool.labels[row]),
        "score": int(scores[row]),
        "denominator": int(denominator),
        "similarity": int(scores[row]) / float(denominator),
        "nag_distance": 1.0 - int(scores[row]) / float(denominator),
        "rank": int(position[row]) + 1,
        "pool_size": len(pool),
        "selected": bool(position[row] < kept),
        "selected_count": int(kept),
        "fraction": fraction,
        "layers": layers,
        "neighbours": [
            {
                "docid": str(pool.docids[r]),
                "label": str(pool.labels[r]),
                "overlap": float(ov[int(r)]),
                "rank": int(position[r]) + 1,
                "nag_distance": 1.0 - int(scores[r]) / float(denominator),
            }
            for r in nearest
        ],
    }


# ===========================================================================
# The 2-D map
# ===========================================================================


def bag_of_neurons(features: np.ndarray, num_layers: int, top_k: int, width: int):
    """Sparse binary matrix (n, L*width): 1 where the document has (layer, neuron) in its NAG."""
    from scipy import sparse

    feats = np.asarray(features, dtype=np.int64)
    n = len(feats)
    cols = (feats + np.repeat(np.arange(num_layers) * width, top_k)[None, :]).ravel()
    rows = np.repeat(np.arange(n), num_layers * top_k)
    m = sparse.csr_matrix((np.ones(len(cols), dtype=np.float64), (rows, cols)), shape=(n, num_layers * width))
    m.sum_duplicates()
    m.data[:] = 1.0  # a neuron counts once per layer, even if listed twice
    return m


def pca_2d(features: np.ndarray, num_layers: int, top_k: int, width: int, components: int = 2) -> np.ndarray:
    """PCA scores of the bag-of-neurons matrix, by SVD of its centred Gram matrix.

    The matrix has L*width columns (46k for SmolLM2) but only n rows, so the
    n x n Gram matrix is the cheap route. Signs are fixed (largest |loading|
    positive) so the picture is reproducible.
    """
    x = bag_of_neurons(features, num_layers, top_k, width)
    n = x.shape[0]
    if n < 2:
        raise NagError("a map needs at least 2 documents")
    gram = np.asarray((x @ x.T).todense(), dtype=np.float64)
    centre = np.eye(n) - 1.0 / n
    gc = centre @ gram @ centre
    u, s, _ = np.linalg.svd(gc, hermitian=True)
    k = min(components, n)
    coords = u[:, :k] * np.sqrt(np.clip(s[:k], 0, None))
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), np.arange(k)])
    signs[signs == 0] = 1
    coords = coords * signs
    if k < components:
        coords = np.pad(coords, ((0, 0), (0, components - k)))
    return coords


def has_tsne() -> bool:
    import importlib.util

    return importlib.util.find_spec("sklearn") is not None


def tsne_2d(features: np.ndarray, num_layers: int, top_k: int, width: int, seed: int = 0) -> np.ndarray:
    """t-SNE of the first (up to 50) principal components; needs scikit-learn (`analysis` extra)."""
    if not has_tsne():
        raise NagError("t-SNE needs scikit-learn: pip install 'nagindex[analysis]' (or use --method pca)")
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 5:
        raise NagError("t-SNE needs at least 5 documents")
    pcs = pca_2d(features, num_layers, top_k, width, components=min(50, n))
    perplexity = float(min(30.0, (n - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    # One OpenMP thread: on a busy machine its spinning worker threads made a
    # 24-point t-SNE take 77 s instead of 1 s; a map of a few thousand points
    # stays well under a minute on one thread.
    with threadpool_limits(1):
        return tsne.fit_transform(pcs)


def sample_per_label(labels: np.ndarray, per_label: int, seed: int = 0) -> np.ndarray:
    """Rows of at most `per_label` documents of each label, sorted, reproducible."""
    rng = np.random.default_rng(seed)
    rows = []
    for lab in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == lab)
        rows.append(idx if len(idx) <= per_label else np.sort(rng.choice(idx, per_label, replace=False)))
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


def feature_map(
    pool: PoolView,
    *,
    target_features: np.ndarray | None = None,
    method: str = "pca",
    per_label: int = 300,
    seed: int = 0,
) -> dict:
    """The numbers behind `nag plot map`: 2-D coordinates of a per-label sample of the pool
    (plus the target documents, labelled "target"), by PCA or t-SNE."""
    if method not in ("pca", "tsne"):
        raise NagError(f"unknown map method {method!r}; choose pca or tsne")
    rows = sample_per_label(pool.labels, per_label, seed)
    feats = pool.features[rows]
    labels = pool.labels[rows].astype(object)
    docids = pool.docids[rows].astype(object)
    if target_features is not None and len(target_features):
        tf = np.asarray(target_features)[:per_label]
        feats = np.concatenate([feats, tf.astype(feats.dtype)])
        labels = np.concatenate([labels, np.array(["target"] * len(tf), dtype=object)])
        docids = np.concatenate([docids, np.array([f"target:{i}" for i in range(len(tf))], dtype=object)])
    args = (feats, pool.num_layers, pool.top_k, pool.width)
    coords = pca_2d(*args) if method == "pca" else tsne_2d(*args, seed=seed)
    return {"coords": coords, "labels": labels, "docids": docids, "method": method}


# ===========================================================================
# Reading an index and a target (the glue the CLI uses)
# ===========================================================================


def pool_view(index: Any, neuron_type: str = DEFAULT_NEURON_TYPE, *, labels: bool = True) -> PoolView:
    """The live rows of an `Index`: features, docids, token counts and `dataset` labels."""
    from .schemas import DATASET

    spec = index.spec
    width = spec.width(neuron_type)
    segments = index.feature_segments(neuron_type)
    if len(segments) == 1:
        feats = segments[0][1]  # memory-mapped: read block by block, never copied whole
    elif segments:
        feats = np.concatenate([np.asarray(m) for _, m in segments])
    else:
        feats = np.zeros((0, spec.feature_length), dtype=np.uint16)
    docids = np.asarray(index.docids().to_pylist(), dtype=object)
    tokens = np.asarray(index.token_num(), dtype=np.int64)
    live = index.live_mask()
    rows = np.arange(len(docids)) if live is None else np.flatnonzero(live)
    if not len(rows):
        raise NagError("the index holds no documents")
    if labels and DATASET in index.columns():
        raw = index.take(rows, [DATASET]).column(DATASET).to_pylist()
        labs = np.array([NO_LABEL if v is None else str(v) for v in raw], dtype=object)
    else:
        labs = np.array([NO_LABEL] * len(rows), dtype=object)
    return PoolView(
        features=feats if live is None else feats[rows],
        docids=docids[rows],
        token_num=np.where(tokens[rows] < 0, 0, tokens[rows]),
        labels=labs,
        num_layers=spec.num_layers,
        top_k=spec.top_k,
        width=width,
    )


def target_features_for(
    index: Any,
    targets: Sequence[str | os.PathLike] = (),
    *,
    target_features: str | os.PathLike | None = None,
    neuron_type: str = DEFAULT_NEURON_TYPE,
    fmt: str = "auto",
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """The target's NAG features, from raw text files (extracted with the index's backbone)
    or from a feature file made with the same backbone, L, K and max_length.

    The reading itself is `nagindex.query`'s, so every command takes its
    target exactly as `nag query` does.
    """
    from .query import load_feature_target, load_text_target

    targets = [str(t) for t in targets]
    if target_features is not None and targets:
        raise NagError("give the target either as TARGET files or as --target-features, not both")
    if target_features is not None:
        feats = load_feature_target(index, str(target_features), neuron_type=neuron_type).features
    elif targets:
        feats = load_text_target(
            index, targets, neuron_type=neuron_type, fmt=fmt, batch_size=batch_size, progress=progress
        ).features
    else:
        raise NagError("no target given: pass TARGET files or --target-features FILE")
    feats = np.asarray(feats)
    if feats.ndim != 2 or len(feats) == 0:
        raise NagError("the target is empty: no target document has NAG features")
    if feats.shape[1] != index.spec.feature_length:
        raise NagError(
            f"target features have {feats.shape[1]} entries, this index expects L*K = {index.spec.feature_length}"
        )
    return feats


def target_profile(index: Any, target_features: np.ndarray, neuron_type: str = DEFAULT_NEURON_TYPE, power: float = 1.0):
    """The SPEC 2 profile (integer weights over all layers) of `target_features` for this index."""
    from .scoring import build_profile

    spec = index.spec
    return build_profile(
        target_features, num_layers=spec.num_layers, top_k=spec.top_k, width=spec.width(neuron_type), power=power
    )


def keys_for_index(index: Any, target_features: np.ndarray, per_layer: int = DEFAULT_PER_LAYER,
                   neuron_type: str = DEFAULT_NEURON_TYPE) -> DeactivationKeys:
    """Deactivation keys of a target, labelled with the index's backbone and shape."""
    spec = index.spec
    keys = deactivation_keys(target_features, spec.num_layers, spec.top_k, per_layer, width=spec.width(neuron_type))
    return DeactivationKeys(
        keys, backbone=spec.backbone, num_layers=spec.num_layers, width=spec.width(neuron_type),
        neuron_type=neuron_type, per_layer=per_layer,
    )


def explain(
    index: Any,
    docid: str,
    target_features: np.ndarray,
    *,
    neuron_type: str = DEFAULT_NEURON_TYPE,
    power: float = 1.0,
    fraction: float = 0.2,
    neighbours: int = 5,
) -> dict:
    """Why document `docid` scored as it did against this target.

    Returns its similarity, nag_distance, rank and whether the token budget
    selects it; per layer, its contribution to the similarity and the neurons
    it shares with the target profile with their SPEC weights; and its
    nearest selected neighbours (selected documents whose NAG overlaps most
    with its own).
    """
    pool = pool_view(index, neuron_type)
    row = pool.row_of(str(docid))
    profile = target_profile(index, target_features, neuron_type, power)
    out = explain_row(pool, row, profile.weights, profile.denominator, fraction=fraction, neighbours=neighbours)
    out["num_targets"] = int(len(target_features))
    return out
