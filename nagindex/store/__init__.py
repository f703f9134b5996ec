"""The store: an index directory on disk, its commit point, and the reads and writes on it.

- `manifest`: manifest.json, the commit point.
- `segment`: immutable memory-mapped forward index of a row range.
- `postings`: FAISS inverted lists per (layer, neuron).
- `doctable`: the LanceDB documents table.
- `ingest`: input checks and the streaming join of features to documents.
- `index`: the read side, one committed snapshot.
"""
