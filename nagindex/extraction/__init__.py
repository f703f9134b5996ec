"""Extraction: a frozen backbone, its forward hooks, and NAG features of documents.

- `backbones`: load a model (hub id, local directory, GGUF, the embedded SmolLM2) and the adapter table of hook points.
- `features`: SPEC 1, per-document neuron impact -> per-layer top-K, in batches.
- `jobs`: `nag extract` over files, sharded, resumable, spread over processes by accelerate.
- `testing`: tiny random-init backbones for the tests of mechanics.
"""
