"""Neuron deactivation (SPEC 4): a target's key neurons, zeroed in a model and tested.

Keys are the per-layer most frequent target neurons, saved as JSON, zeroed in
a model's up projection, and tested by the mean token loss of target and
control texts against the same number of random neurons zeroed.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from nagindex.atomic import atomic_path, atomic_write_text, check_output_path
from nagindex.errors import NagError
from nagindex.ranking import scoring
from nagindex.schemas import DEFAULT_NEURON_TYPE

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
    """counts[l, j] = how often neuron j appears among layer l's entries of the target NAGs
    (`ranking.scoring.layer_counts`; without a width, the largest neuron seen sets it)."""
    feats = _as_features(target_features, num_layers, top_k)
    if width is None:
        width = int(feats.max()) + 1 if feats.size else 1
    elif feats.size and int(feats.max()) >= width:
        raise NagError(f"target features hold neuron {int(feats.max())}, beyond the layer width {width}")
    return scoring.layer_counts(feats, num_layers=num_layers, top_k=top_k, width=width)


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


def keys_meta_path(path: str | os.PathLike) -> Path:
    """The sidecar that holds a keys file's metadata: ``keys.json`` -> ``keys.meta.json``."""
    path = Path(path)
    return path.with_name((path.name[: -len(".json")] if path.name.endswith(".json") else path.name) + ".meta.json")


def save_keys(path: str | os.PathLike, keys: Mapping[int, Sequence[int]], **meta: Any) -> Path:
    """Write keys as upstream reads them, JSON ``{"<layer>": [neuron, ...]}``, atomically,
    and nagindex's metadata beside it in ``<name>.meta.json`` (`keys_meta_path`).

    `meta` (backbone, num_layers, width, neuron_type, per_layer) overrides
    what a `DeactivationKeys` already carries.
    """
    info = keys.meta() if isinstance(keys, DeactivationKeys) else {}
    info.update({k: v for k, v in meta.items() if v is not None})
    # One line per layer: a keys file stays readable (and diffable) for 30+ layers.
    lines = [f"{json.dumps(str(int(l)))}: {json.dumps([int(n) for n in ns])}" for l, ns in sorted(keys.items())]
    path = Path(path)
    check_output_path(path)  # before its metadata file is written beside it
    atomic_write_text(keys_meta_path(path), json.dumps(info, sort_keys=True, indent=1) + "\n")
    atomic_write_text(path, "{\n " + ",\n ".join(lines) + "\n}\n")
    return path


def load_keys(path: str | os.PathLike) -> DeactivationKeys:
    """Read keys written by `save_keys` (metadata from the sidecar, or from a ``_meta``
    entry of older files) or upstream's plain ``{layer: [neuron, ...]}``."""
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
    sidecar = keys_meta_path(path)
    if not meta and sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError) as exc:
            raise NagError(f"cannot read keys metadata {sidecar}: {exc}") from None
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
    from nagindex.extraction.backbones import Backbone, _text_config, adapter_for

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

    from nagindex.extraction.features import length_batches, tokenize

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


def keys_for_index(index: Any, target_features: np.ndarray, per_layer: int = DEFAULT_PER_LAYER,
                   neuron_type: str = DEFAULT_NEURON_TYPE) -> DeactivationKeys:
    """Deactivation keys of a target, labelled with the index's backbone and shape."""
    spec = index.spec
    keys = deactivation_keys(target_features, spec.num_layers, spec.top_k, per_layer, width=spec.width(neuron_type))
    return DeactivationKeys(
        keys, backbone=spec.backbone, num_layers=spec.num_layers, width=spec.width(neuron_type),
        neuron_type=neuron_type, per_layer=per_layer,
    )




def save_deactivated_model(backbone, keys: Mapping[int, Sequence[int]], out: str | os.PathLike) -> int:
    """Zero the keyed neurons of `backbone` and save the model and tokenizer to the new
    directory `out` (save_pretrained layout), atomically. Returns the neurons zeroed."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NagError(f"--out {out} already exists and is not an empty directory")
    n = apply_deactivation(backbone.model, keys)
    with atomic_path(out, directory=True) as tmp:
        backbone.model.save_pretrained(tmp)
        backbone.tokenizer.save_pretrained(tmp)
    return n
