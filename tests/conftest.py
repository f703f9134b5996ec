"""Shared test set-up: offline hub, tiny backbones, the embedded backbone once per session."""

import os

# Nothing may be fetched from a model hub while testing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def embedded_backbone():
    """The real default backbone (SmolLM2-135M-Instruct), loaded once per test session.

    The first load on a machine dequantises the GGUF into the user cache
    (~1 min); later loads read the cache.
    """
    from nagindex.extraction.backbones import load_backbone

    return load_backbone(device="cpu")


@pytest.fixture(scope="session")
def tiny_llama():
    from nagindex.extraction.testing import tiny_backbone

    return tiny_backbone("llama")


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist every worker is its own process: one intra-op thread
    # each avoids oversubscribing the cores (spin-waiting threads make tiny
    # models many times slower on a busy machine).
    import torch

    torch.set_num_threads(1)
