"""`Index`: the Python API over the whole pipeline (build, append, query, compact).

It adds the operations that span the pipeline to the store's read side
(`store.index.IndexSnapshot`): extraction by an engine, commits through
`store.writer`, and queries through `ranking.query`. The engine is chosen
here, once, by name (`engines.get_engine`); nothing below asks which one runs.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from nagindex import io as nio
from nagindex.engines import get_engine
from nagindex.engines.base import ModelRef
from nagindex.errors import NagError
from nagindex.extraction.embedder import load_embedder
from nagindex.extraction.extractor import Extractor
from nagindex.progress import silence_library_bars
from nagindex.ranking.embedding import unit_rows
from nagindex.ranking.query import run_query
from nagindex.ranking.options import ScoringOptions, build_settings
from nagindex.ranking.request import QueryRequest
from nagindex.schemas import (
    BACKBONE_LOCATION_KEY,
    DEFAULT_INDEX_TOP_K,
    DOCID,
    DEFAULT_MAX_LENGTH,
    DEFAULT_NEURON_TYPE,
    DEFAULT_TOP_K,
    DOCID,
    EMBEDDING,
    TEXT,
    UNKNOWN_HASH,
    FeatureSpec,
    parse_neuron_types,
)
from nagindex.sources import expand_sources, is_table_like
from nagindex.store import ingest, writer
from nagindex.store import versions as index_versions
from nagindex.store.index import IndexSnapshot
from nagindex.store.verify import check_index, check_path
from nagindex.store.writer import AppendResult

__all__ = ["Index", "AppendResult"]

# `FeatureSpec.extra` key of the scoring preset an index was built for (its queries' default).
QUERY_PRESET_KEY = "query_preset"

# `Index.build`'s default embedder: what `nag index build` embeds with (`build_settings`).
DEFAULT_EMBEDDING = "default"

# Fewest documents read per batch from the pools: progress moves at least this often.
PROGRESS_ROWS = 512


class Index(IndexSnapshot):
    """A NAG index directory, opened as one committed snapshot, with the operations on it."""

    # its backbone and embedder, loaded on first use (`extractor`)
    _extractor: Extractor | None = None

    @classmethod
    def create(cls, path: str | os.PathLike, spec: FeatureSpec, *, postings: bool = False,
               embedder: Any = None) -> "Index":
        """Create an empty index for features made as `spec` says (`postings=True`: with
        inverted lists); with `embedder` (a name for `extraction.embedder.load_embedder`,
        or a loaded one) every document also gets its embedding."""
        if embedder is None:
            return cls.open(writer.create_index(path, spec, postings=postings))
        loaded = load_embedder(embedder)
        index = cls.open(writer.create_index(path, spec, postings=postings, embedder=loaded.name,
                                             embedding_dim=loaded.dim))
        index.extractor().use(embedder=loaded)
        return index

    @classmethod
    def build(
        cls,
        path: str | os.PathLike,
        pools: Sequence[str | os.PathLike] | str | os.PathLike,
        *,
        model: Any = None,
        features: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
        fmt: str = "auto",
        top_k: int | None = None,
        neuron_types: Sequence[str] | str = (DEFAULT_NEURON_TYPE,),
        max_length: int = DEFAULT_MAX_LENGTH,
        num_layers: int | None = None,
        width: int | dict[str, int] | None = None,
        batch_size: int = 32,
        progress: bool = True,
        engine: Any = "local",
        device: str | None = None,
        dtype: str | None = None,
        postings: bool = False,
        embedder: Any = DEFAULT_EMBEDDING,
        preset: str | None = None,
        strict: bool = False,
    ) -> "Index":
        """Index the documents of `pools`: files, directories, globs, or tables in memory
        (pyarrow Table/Dataset, pandas or polars DataFrame, `datasets.Dataset`), in any mix.

        With `features` (nagindex parquet or upstream JSONL), the features are
        imported and joined to the pools on docid, and no model weights are
        ever loaded: upstream JSONL, which does not record how it was made,
        takes `num_layers`, `top_k` and `width` (neurons per layer, or
        {type: width}) as upstream names them, or reads them from `model`'s
        config when it is local (`model` is then recorded as the backbone).
        Otherwise the features are extracted with `model` (a name/path for
        `load_backbone`, a loaded `Backbone`, or None for the embedded
        default) by the engine. The index is built in a temporary sibling
        directory and renamed into place when complete. `postings=True`
        also writes FAISS inverted lists (two thirds of the disk at K=20; no
        measured query on text-like pools reads them faster than the scan, so
        they are for FAISS interop and `plan="inverted"`: see the README).
        `top_k=None` takes the
        recommended K (`DEFAULT_INDEX_TOP_K`, or the layer width where that is
        smaller; imported features keep theirs). `embedder` (a name, a model
        directory or a loaded `Embedder`) also stores an embedding per document.
        `preset="paper"` is recorded: the index's queries then score as the paper
        does unless they name another preset.

        The defaults are `nag index build`'s (`ranking.options.build_settings`):
        K = 100 (or the layer width where smaller) and an all-MiniLM-L6-v2
        embedding per document; `preset="paper"`: K = 20 and no embedding.
        `embedder=None` (or "none") stores no embedding.
        """
        top_k, embedder = build_settings(
            preset, top_k, None if isinstance(embedder, str) and embedder == DEFAULT_EMBEDDING else ("none" if embedder is None else embedder))
        from nagindex.extraction.backbones import Backbone

        if not progress:
            silence_library_bars()
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise NagError(f"{path} already exists and is not empty; use `nag index append` to add documents")
        pools = expand_sources(pools)
        features = _as_list(features) if features is not None else None
        runner = get_engine(engine)
        # an engine that extracts elsewhere loads the model there; this process needs only the spec
        remote = runner.name != "local" and not features and not isinstance(model, Backbone)
        if features:
            backbone = model if isinstance(model, Backbone) else None
            spec = _imported_spec(features, model, neuron_types, top_k, max_length, num_layers, width)
        elif remote:
            backbone = None
            if top_k is None:
                probe = runner.feature_spec(model, neuron_types=neuron_types, top_k=1, max_length=max_length)
                top_k = _default_top_k(probe, neuron_types)
            spec = runner.feature_spec(model, neuron_types=neuron_types, top_k=top_k, max_length=max_length)
        else:
            backbone = _resolve_backbone(model, device, dtype)
            from nagindex.extraction.features import feature_spec

            if top_k is None:
                top_k = _default_top_k(feature_spec(backbone, neuron_types, 1, max_length), neuron_types)
            spec = feature_spec(backbone, neuron_types, top_k, max_length)
        if preset not in (None, "default"):
            ScoringOptions.from_preset(preset)  # a bad name is refused before any work
            spec = dataclasses.replace(spec, extra={**spec.extra, QUERY_PRESET_KEY: preset})
        tmp = writer.build_directory(path)  # stale ones of killed builds of `path` are removed
        try:
            index = cls.create(tmp, spec, postings=postings, embedder=embedder)
            if backbone is not None:
                index.extractor().use(backbone=backbone)
            index.append(pools, features=features, fmt=fmt, progress=progress, batch_size=batch_size,
                         _model=backbone if backbone is not None else (None if features else model),
                         engine=runner, strict=strict)
            writer.publish_build(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        built = cls.open(path)
        built._extractor = index._extractor  # the models loaded for the build stay loaded
        return built

    def append(
        self,
        pools: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
        *,
        features: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
        documents: pa.Table | None = None,
        feature_arrays: dict[str, np.ndarray] | None = None,
        replace: bool = False,
        progress: bool = True,
        fmt: str = "auto",
        batch_size: int = 32,
        engine: Any = "local",
        device: str | None = None,
        dtype: str | None = None,
        strict: bool = False,
        embeddings: np.ndarray | None = None,
        _model: Any = None,
    ) -> AppendResult:
        """Add documents: from pools (files, directories, globs or tables in memory, as for
        `build`; features extracted, or imported from `features` files), or from a
        `documents` table with `feature_arrays` (or with `<type>_feature` columns).

        Docids already in the index are skipped and counted, or with
        `replace=True` the old rows are replaced. All or nothing: a crash
        leaves the index as it was before the call. `device` and `dtype` place
        the backbone when this call loads it (default: the GPU in bf16 where
        there is one, else the CPU in fp32). A pool document without usable
        text is skipped with a warning, or with `strict` refused (always with
        `features`, whose rows it would orphan). `embeddings` (with `documents`):
        one vector per row made earlier by this index's embedder, stored instead
        of embedding the texts again; checked for shape and finiteness and scaled
        to unit length (a pool column is never taken as the embedding).
        """
        spec = self.spec
        if not progress:
            silence_library_bars()
        if (pools is None) == (documents is None):
            raise NagError("give either pool files or a documents table to append")
        runner = get_engine(engine)  # an unknown name is refused even where no extraction runs
        pre_skipped = [0]  # docids skipped before extraction
        if embeddings is not None and documents is None:
            raise NagError("embeddings are given with a documents table, one vector per row")
        if documents is not None:
            given = None if embeddings is None else self._given_embeddings(embeddings, documents.num_rows)
            batches, total = ingest.table_batches(documents, feature_arrays, spec, self.batch_rows), documents.num_rows
            return writer.append_batches(self, self._embedded(batches, batch_size, given), replace=replace,
                                         count_tokens=None, progress=progress, total=total)
        else:
            pools = expand_sources(pools)
            total = ingest.count_rows(pools)
            # read (and extract) in small batches so that progress moves per batch; `regroup`
            # below hands the store large ones again
            read_rows = min(self.batch_rows, max(16 * batch_size, PROGRESS_ROWS))
            # the index keeps the text: a pool without it is refused, and with imported
            # features a document whose text is empty is refused by name (skipping it
            # would leave its features without a document)
            docs = ingest.document_batches(pools, fmt, read_rows, require_text=True, strict=strict or bool(features))
            if features:
                features = _as_list(features)
                _check_feature_files(spec, features)
                batches = ingest.join_features(docs, ingest.iter_feature_tables(features, self.batch_rows), spec)
            else:
                if not replace:
                    # docids already indexed are skipped before extraction, not after it
                    docs = _not_indexed(docs, self, pre_skipped)
                if _model is not None:
                    ref = ModelRef(_model, lambda: _model)
                else:
                    extractor = self.extractor(device=device, dtype=dtype)
                    ref = ModelRef(extractor.source, lambda: extractor)
                batches = runner.extract_batches(docs, model=ref, spec=spec, batch_size=batch_size)
            tokens = self._token_counter(_model)
            with writer.progress_bar(total, progress, "indexing") as bar:
                grouped = ingest.regroup(batches, self.batch_rows, bar.update)
                result = writer.append_batches(self, self._embedded(grouped, batch_size), replace=replace,
                                               count_tokens=tokens, progress=False)
            return dataclasses.replace(result, skipped=result.skipped + pre_skipped[0])

    def append_batches(
        self,
        batches: Iterable[tuple[pa.Table, dict[str, np.ndarray]]],
        *,
        replace: bool = False,
        progress: bool = True,
        total: int | None = None,
    ) -> AppendResult:
        """Add a stream of (documents table, {type: uint16 (n, L*K)}) batches as one commit.

        For engines that compute features elsewhere (e.g. Ray): each batch is
        validated like `append(documents=..., feature_arrays=...)`; docids must
        be unique across the whole stream.
        """
        return writer.append_batches(self, self._embedded(writer.checked_batches(batches, self.spec)), replace=replace,
                                     count_tokens=self._token_counter(None), progress=progress, total=total)

    def tag(self, name: str, version: int | str | None = None) -> int:
        """Name a version (default: the current one); compaction keeps tagged versions
        readable with `Index.open(path, version=name)`. Returns the version number."""
        return writer.tag(self, name, version)

    def versions(self) -> list[dict]:
        """Every readable version, oldest first: version, committed_at, documents, rows,
        segments, lance_table, lance_version, tags."""
        return index_versions.listing(self.path)

    def _given_embeddings(self, embeddings: np.ndarray, rows: int) -> np.ndarray:
        """Vectors a caller made with this index's embedder, checked (one per row, the index's width,
        finite) and scaled to unit length as the index stores them."""
        if not self.has_embeddings:
            raise NagError(f"index {self.path} stores no embeddings (built without an embedder); "
                           "append without embeddings")
        v = np.asarray(embeddings, dtype=np.float64)
        want = (rows, self.manifest.embedding_dim)
        if v.shape != want:
            raise NagError(f"embeddings have shape {v.shape}; this append needs {want} "
                           f"(one {self.manifest.embedder} vector per document)")
        if not np.isfinite(v).all():
            raise NagError("embeddings hold a value that is not finite; the index is unchanged")
        if not np.linalg.norm(v, axis=1).all():
            raise NagError("embeddings hold a zero vector, which has no direction to compare; the index is unchanged")
        return unit_rows(v).astype(np.float32)

    def _embedded(self, batches, batch_size: int = 64, given: np.ndarray | None = None):
        """The batches with each document's embedding added, where this index stores them:
        `given` (rows in the batches' order, checked by `_given_embeddings`), else made by the
        index's embedder."""
        if not self.has_embeddings:
            yield from batches
            return
        embedder = self.embedder() if given is None else None
        start = 0
        for docs, feats in batches:
            if given is not None:
                vectors = given[start : start + docs.num_rows]
                start += docs.num_rows
            else:
                vectors = self._embed_documents(embedder, docs, batch_size)
            yield docs.append_column(EMBEDDING, nio.embedding_array(vectors)), feats

    def _embed_documents(self, embedder, docs: pa.Table, batch_size: int) -> np.ndarray:
        """The embedder's vectors of a batch's texts, every one finite."""
        # the index embeds every document itself: a pool's own `embedding` column is refused
        # before this (`ingest.check_payload_names`), never taken as the vector
        if TEXT not in docs.column_names:
            raise NagError(f"this index embeds every document with {self.manifest.embedder}, "
                           f"and these documents have no text column {TEXT!r}")
        vectors = embedder.encode(docs.column(TEXT).to_pylist(), batch_size=batch_size)
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if len(bad):  # a NaN vector would be stored, and then score as nothing or everything
            raise NagError(f"the embedding of document {docs.column(DOCID)[int(bad[0])].as_py()!r} is not finite "
                           f"({self.manifest.embedder}); the index is unchanged")
        return vectors

    @property
    def query_preset(self) -> str | None:
        """The scoring preset this index's queries take when they name none (`build(preset=...)`)."""
        return self.spec.extra.get(QUERY_PRESET_KEY)

    def extractor(self, *, device: str | None = None, dtype: str | None = None) -> Extractor:
        """This index's backbone and embedder, loaded on first use and checked against it (`device`
        and `dtype` place the backbone when this first call makes the extractor)."""
        if self._extractor is None:
            m = self.manifest
            self._extractor = Extractor(self.spec, model=self._model, embedder=m.embedder,
                                        embedding_dim=m.embedding_dim, device=device, dtype=dtype)
        return self._extractor

    def backbone(self, *, device: str | None = None, dtype: str | None = None):
        """The backbone that made the features (loaded on first use, from `model` given to
        `open` or else the recorded location), checked against the index."""
        return self.extractor(device=device, dtype=dtype).backbone()

    def embedder(self):
        """The embedder that embedded the documents (loaded on first use)."""
        if not self.has_embeddings:
            raise NagError(f"index {self.path} has no embeddings; build it with --embedder")
        return self.extractor().embedder()

    def compact(self, progress: bool = False) -> None:
        """Fold all segments into as few as possible, drop replaced rows, and rewrite the
        Lance table compactly. Query results do not change; readers must reopen."""
        writer.compact(self, progress=progress)

    def check(self):
        """Read every file and compare it with the manifest: a `store.verify.CheckReport`
        (`.ok`, `.problems`). Opening checks only sizes; this verifies every hash."""

        return check_index(self)

    @classmethod
    def check_path(cls, path: str | os.PathLike):
        """`check` of the index at `path`, also when it is too damaged to open."""
        return check_path(path, cls.open)

    def query(self, targets=(), *, engine: Any = "local", **options):
        """Rank this index against target sets; returns the selection as an Arrow table.

        `targets` are raw-text files (extracted with this index's backbone) or,
        with ``target_features=[...]``, precomputed feature files, or
        ``target_texts=[...]``; or one `QueryRequest`. Options are those of
        `QueryRequest.build` (fraction, top, each, dedupe, preset, power,
        layers, ...), from which this builds the request; `run_query` also
        returns the summary and the plan.
        """
        return self.run_query(targets, engine=engine, **options).table

    def run_query(self, targets=(), *, engine: Any = "local", **options):
        """`query` with its summary and plan: a `ranking.query.QueryResult`. `targets` is a
        `QueryRequest`, or targets with the options that build one."""

        request = targets
        if not isinstance(request, QueryRequest):
            request = QueryRequest.build(targets, **options)
        elif options:
            raise TypeError(f"give a QueryRequest or options, not both ({', '.join(sorted(options))})")
        if not request.progress:
            silence_library_bars()
        return run_query(self, request, engine=get_engine(engine))

    def _token_counter(self, model: Any) -> Callable[[list[str]], np.ndarray]:
        """Counts tokens of documents that come without token_num, with the model at hand."""

        def count(texts: list[str]) -> np.ndarray:
            from nagindex.extraction.features import count_tokens

            if model is not None:
                backbone = model
            else:
                try:
                    backbone = self.backbone()
                except NagError:
                    raise NagError(
                        f"{len(texts)} documents have no token_num, and the index's backbone {self.spec.backbone} "
                        "cannot be loaded to count their tokens; add a token_num column or pass --model"
                    ) from None
            return count_tokens(backbone.tokenizer, texts)

        return count


def _not_indexed(docs, index: "Index", skipped: list[int]):
    """The document batches without the docids `index` already holds (counted in `skipped[0]`)."""
    import pyarrow.compute as pc

    live = None
    for table in docs:
        if live is None:
            live = index._live_docids()[0] if index.num_rows else pa.array([], pa.string())
        if len(live):
            present = pc.is_in(table.column(DOCID), value_set=live)
            n = pc.sum(present).as_py() or 0
            if n:
                skipped[0] += n
                table = table.filter(pc.invert(present))
        if table.num_rows:
            yield table


def _default_top_k(spec: FeatureSpec, neuron_types) -> int:
    """The recommended K, or the narrowest layer's width where that is smaller."""
    types = [neuron_types] if isinstance(neuron_types, str) else list(neuron_types)
    return min([DEFAULT_INDEX_TOP_K] + [spec.width(t) for t in types])


def _as_list(paths) -> list:
    if isinstance(paths, (str, os.PathLike)) or is_table_like(paths):
        return [paths]
    return list(paths)


def _resolve_backbone(model: Any, device: str | None = None, dtype: str | None = None):
    from nagindex.extraction.backbones import Backbone, load_backbone

    if isinstance(model, Backbone):
        return model
    return load_backbone(model, device=device, dtype=dtype)


def _imported_spec(features: list, model: Any, neuron_types, top_k: int, max_length: int,
                   num_layers: int | None, width: int | dict[str, int] | None) -> FeatureSpec:
    """The spec of imported feature files, without loading any weights.

    nagindex parquet records its spec. Upstream JSONL does not: L, K and the
    layer widths come from `num_layers`/`top_k`/`width`, or from the config of
    `model` when it is local; `model` is recorded as the backbone (with an
    unknown weights hash, so only L, K and widths are compared later).
    """
    from nagindex.extraction.backbones import Backbone

    requested = parse_neuron_types(neuron_types)  # a bad name is refused whatever the files hold
    if top_k is not None and int(top_k) < 1:
        raise NagError(f"--top-k must be at least 1, got {top_k}")
    file_spec = ingest.feature_file_spec(features)
    if top_k is None:  # imported features keep their K; upstream JSONL is K=20 unless told
        top_k = file_spec.top_k if file_spec is not None else DEFAULT_TOP_K
    if file_spec is not None and not set(requested) <= set(file_spec.neuron_types):
        missing = [t for t in requested if t not in file_spec.neuron_types]
        raise NagError(f"--neuron-types {','.join(requested)}: the feature files have no {', '.join(missing)} features "
                       f"(they have {', '.join(file_spec.neuron_types)})")
    if isinstance(model, Backbone):
        from nagindex.extraction.features import feature_spec

        spec = feature_spec(model, neuron_types, top_k, max_length)
        if file_spec is not None:
            spec.check_compatible(file_spec, what="the feature files")
            return file_spec
        return spec
    if file_spec is not None:
        if num_layers is not None and num_layers != file_spec.num_layers:
            raise NagError(f"--num-layers {num_layers} != L={file_spec.num_layers} recorded in the feature files")
        return file_spec
    return upstream_spec(model, parse_neuron_types(neuron_types), top_k, max_length, num_layers, width)


def upstream_spec(model: Any, neuron_types: tuple[str, ...], top_k: int, max_length: int,
                  num_layers: int | None, width: int | dict[str, int] | None) -> FeatureSpec:
    """The FeatureSpec of upstream NAG features: from the flags, else a local config of `model`."""
    from nagindex.extraction.backbones import (
        EMBEDDED_NAME,
        adapter_for,
        model_config,
        model_location,
    )

    config = model_config(model) if model is not None else None
    if config is not None:
        layers_in_config = int(config.num_hidden_layers)
        if num_layers is not None and num_layers != layers_in_config:
            raise NagError(f"--num-layers {num_layers} != {layers_in_config} layers in the config of {model}")
        num_layers = layers_in_config
        widths = {t: int(adapter_for(config).widths(config)[t]) for t in neuron_types}
    else:
        widths = {}
    if isinstance(width, dict):
        widths.update({t: int(w) for t, w in width.items()})
    elif width is not None:
        widths.update({t: int(width) for t in neuron_types})
    missing = [t for t in neuron_types if t not in widths]
    if num_layers is None or missing:
        what = " and ".join(
            x for x in ("--num-layers" if num_layers is None else "", "--width" if missing else "") if x)
        raise NagError(
            "upstream JSONL features do not record how they were made: pass " + what +
            " (as upstream's --num-layers/--top-k), or --model NAME whose config is local"
        )
    if model is None:
        name, extra = "upstream", {}
    else:
        location = model_location(model)
        name = EMBEDDED_NAME if location == "embedded" else str(model)
        extra = {BACKBONE_LOCATION_KEY: location}
    return FeatureSpec(backbone=name, backbone_hash=UNKNOWN_HASH, num_layers=int(num_layers), top_k=int(top_k),
                       neuron_types=neuron_types, layer_widths=widths, max_length=int(max_length), extra=extra)


def _check_feature_files(spec: FeatureSpec, features: list) -> None:
    file_spec = ingest.feature_file_spec(features)
    if file_spec is not None:
        spec.check_compatible(file_spec, what="the feature files")
        missing = [t for t in spec.neuron_types if t not in file_spec.neuron_types]
        if missing:
            raise NagError(f"the feature files have no {', '.join(missing)} features, which this index needs")
