"""Arrow schemas and the feature contract shared by every stage.

A NAG feature of one document for one neuron type is a vector of L*K uint16
neuron indices, layer-major: ``feature[l*K + r]`` is the r-th most impactful
neuron of layer l (SPEC section 1). `FeatureSpec` says how a set of features
was made; two sets of features can only be compared when their specs agree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from nagindex.errors import NagError

NEURON_TYPES: tuple[str, ...] = ("fwd_up", "fwd_down", "att_q", "att_k", "att_v", "att_o")
DEFAULT_NEURON_TYPE = "fwd_up"
DEFAULT_TOP_K = 20  # the SPEC's K (nag extract, the paper preset)
DEFAULT_INDEX_TOP_K = 100  # what `nag index build` keeps by default: every K <= 100 can be queried
DEFAULT_MAX_LENGTH = 120
# `nag demo`'s token budget: near one domain's share of its pool (8 domains of 75 documents), so a
# selection can be mostly one domain, which is what the demo is there to show.
DEMO_FRACTION = 0.1

# Neuron indices are stored as uint16, so no layer may be wider than this.
MAX_LAYER_WIDTH = 65536

# Bumped whenever the on-disk layout of features or an index changes.
SCHEMA_VERSION = 1

# `FeatureSpec.extra` key of where the backbone can be loaded again (see
# `extraction.backbones.model_location`): an absolute path, ``org/name@rev`` or ``embedded``.
BACKBONE_LOCATION_KEY = "backbone_location"
# `backbone_hash` of features whose weights were never loaded (upstream NAG
# JSONL imported with --num-layers/--top-k/--width): compared by L, K and widths only.
UNKNOWN_HASH = ""

# Key under which a FeatureSpec is stored in parquet / Arrow schema metadata.
SPEC_METADATA_KEY = b"nagindex.feature_spec"


def feature_column(neuron_type: str) -> str:
    """Column name of a neuron type's NAG feature, as upstream names it."""
    return f"{neuron_type}_feature"


def parse_neuron_types(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Parse ``"fwd_up,att_q"`` (or a list) into a validated, de-duplicated tuple."""
    items = value.split(",") if isinstance(value, str) else list(value)
    types: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item not in NEURON_TYPES:
            raise NagError(f"unknown neuron type {item!r}; choose from {', '.join(NEURON_TYPES)}")
        if item not in types:
            types.append(item)
    if not types:
        raise NagError("no neuron type given")
    return tuple(types)


@dataclass(frozen=True)
class FeatureSpec:
    """How a set of NAG features was made.

    `layer_widths` maps each neuron type to the number of neurons per layer
    (the valid index range); `backbone_hash` fingerprints the weights so that
    features of different checkpoints of the same architecture never mix.
    """

    backbone: str
    backbone_hash: str
    num_layers: int
    top_k: int
    neuron_types: tuple[str, ...]
    layer_widths: dict[str, int]
    max_length: int = DEFAULT_MAX_LENGTH
    tokenizer: str = ""
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "neuron_types", tuple(self.neuron_types))
        if self.num_layers < 1 or self.top_k < 1:
            raise NagError(f"invalid feature spec: L={self.num_layers}, K={self.top_k}")
        for t in self.neuron_types:
            if t not in self.layer_widths:
                raise NagError(f"feature spec has no layer width for neuron type {t!r}")
            if self.top_k > self.layer_widths[t]:
                raise NagError(
                    f"K={self.top_k} is larger than the layer width of {t} ({self.layer_widths[t]})"
                )

    @property
    def feature_length(self) -> int:
        return self.num_layers * self.top_k

    @property
    def backbone_location(self) -> str:
        """Where the backbone can be loaded again ("" when not recorded)."""
        return str(self.extra.get(BACKBONE_LOCATION_KEY, ""))

    def width(self, neuron_type: str) -> int:
        if neuron_type not in self.neuron_types:
            raise NagError(
                f"neuron type {neuron_type!r} is not in these features "
                f"(they have {', '.join(self.neuron_types)})"
            )
        return self.layer_widths[neuron_type]

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["neuron_types"] = list(self.neuron_types)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        version = int(d.get("schema_version", SCHEMA_VERSION))
        if version > SCHEMA_VERSION:
            raise NagError(
                f"written by a newer nagindex (schema version {version}, this one reads "
                f"up to {SCHEMA_VERSION}); upgrade nagindex"
            )
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    @classmethod
    def from_json(cls, text: str | bytes) -> "FeatureSpec":
        return cls.from_dict(json.loads(text))

    def to_metadata(self) -> dict[bytes, bytes]:
        return {SPEC_METADATA_KEY: self.to_json().encode()}

    @classmethod
    def from_metadata(cls, metadata: dict | None, source: str = "features") -> "FeatureSpec | None":
        """The spec a feature file records in its schema metadata (None when it has none);
        one line naming `source` when that is not a spec."""
        if not metadata or SPEC_METADATA_KEY not in metadata:
            return None
        try:
            return cls.from_json(metadata[SPEC_METADATA_KEY])
        except NagError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            problem = "nested too deep" if isinstance(e, RecursionError) else str(e).splitlines()[0][:200]
            raise NagError(f"{source}: its feature spec metadata ({SPEC_METADATA_KEY.decode()}) is not valid "
                           f"({type(e).__name__}: {problem}); write the file again with `nag extract`") from None

    # -- compatibility -------------------------------------------------------
    def check_compatible(self, other: "FeatureSpec", what: str = "features") -> None:
        """Refuse to mix features made differently (backbone, L, K, max_length).

        `other` may carry a subset of this spec's neuron types (a query that
        only needs fwd_up), but each type it has must have the same width.
        """
        problems = []
        if self.backbone_hash != other.backbone_hash and UNKNOWN_HASH not in (self.backbone_hash, other.backbone_hash):
            problems.append(
                f"backbone {other.backbone} ({other.backbone_hash[:12]}) != "
                f"{self.backbone} ({self.backbone_hash[:12]})"
            )
        if self.num_layers != other.num_layers:
            problems.append(f"L={other.num_layers} != {self.num_layers}")
        if self.top_k != other.top_k:
            problems.append(f"K={other.top_k} != {self.top_k}")
        if self.max_length != other.max_length:
            problems.append(f"max_length={other.max_length} != {self.max_length}")
        for t in other.neuron_types:
            if t in self.layer_widths and self.layer_widths[t] != other.layer_widths[t]:
                problems.append(f"{t} width {other.layer_widths[t]} != {self.layer_widths[t]}")
        if problems:
            raise NagError(f"{what} are incompatible with this index: " + "; ".join(problems))


def feature_type(spec: FeatureSpec) -> pa.DataType:
    """Arrow type of one feature column: a fixed-size list of L*K uint16."""
    return pa.list_(pa.uint16(), spec.feature_length)


def features_schema(spec: FeatureSpec) -> pa.Schema:
    """Schema of a `nag extract` output file: docid plus one column per neuron type."""
    fields = [pa.field("docid", pa.string(), nullable=False)]
    fields += [pa.field(feature_column(t), feature_type(spec), nullable=False) for t in spec.neuron_types]
    return pa.schema(fields, metadata=spec.to_metadata())


# Columns every pool document has once read (SPEC section 5, `web` layout).
DOCID = "docid"
TEXT = "doc"
TOKEN_NUM = "token_num"
DATASET = "dataset"

DOCUMENT_FIELDS = {
    DOCID: pa.string(),
    TEXT: pa.string(),
    TOKEN_NUM: pa.int64(),
    DATASET: pa.string(),
}


# -- index table (added for the store) ----------------------------------------

# Global row number of a document in an index: its position in insertion order.
ROW = "_row"
EMBEDDING = "embedding"  # unit-length float32 vector per document (nag index build --embedder)

# Columns a query's output adds beside the payload.
OUTPUT_COLUMNS = ("nag_distance", "target", "combined_score", "embedding_similarity", "fusion_score")
# Columns the index or its outputs keep for themselves, with every `<type>_feature`: a pool's
# payload may not use these names (its column would be taken for theirs: an `embedding` as the
# document's vector, unnormalised; or dropped from the output behind a score).
RESERVED_INDEX_COLUMNS = (ROW, EMBEDDING, *OUTPUT_COLUMNS)


def is_reserved_column(name: str) -> bool:
    """Whether a pool column may not be called `name` (`RESERVED_INDEX_COLUMNS`, feature columns)."""
    return name in RESERVED_INDEX_COLUMNS or name in {feature_column(t) for t in NEURON_TYPES}


def embedding_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), int(dim))


def index_schema(spec: FeatureSpec, payload: pa.Schema | None = None, embedding_dim: int | None = None) -> pa.Schema:
    """Schema of an index's document table.

    docid (unique, non-null), token_num (int64; null = unknown, counts as 0),
    dataset (nullable string), then every payload column of the pool (the text
    `doc` included), one fixed-size uint16 feature column per neuron type, and
    the global row number; with `embedding_dim`, an `embedding` column of
    unit-length float32 vectors before it.
    """
    fields = [
        pa.field(DOCID, pa.string(), nullable=False),
        pa.field(TOKEN_NUM, pa.int64()),
        pa.field(DATASET, pa.string()),
    ]
    managed = {DOCID, TOKEN_NUM, DATASET, ROW, EMBEDDING} | {feature_column(t) for t in spec.neuron_types}
    payload = list(payload or [])
    if TEXT not in [f.name for f in payload]:
        payload.insert(0, pa.field(TEXT, pa.string()))  # every index can hold the text
    for f in payload:
        if f.name not in managed:
            fields.append(f.with_nullable(True))
    fields += [pa.field(feature_column(t), feature_type(spec), nullable=False) for t in spec.neuron_types]
    if embedding_dim is not None:
        fields.append(pa.field(EMBEDDING, embedding_type(embedding_dim), nullable=False))
    fields.append(pa.field(ROW, pa.int64(), nullable=False))
    return pa.schema(fields, metadata=spec.to_metadata())


def payload_fields(schema: pa.Schema, spec: FeatureSpec) -> list[pa.Field]:
    """The pool's own columns of an index schema (not docid/token_num/dataset/features/row)."""
    managed = {DOCID, TOKEN_NUM, DATASET, ROW, EMBEDDING} | {feature_column(t) for t in spec.neuron_types}
    return [f for f in schema if f.name not in managed]
